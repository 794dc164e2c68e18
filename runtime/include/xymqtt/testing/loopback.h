/// @file loopback.h
/// An in-memory `xymqtt::transport` for unit tests: no broker, no store, no network.
///
/// `loopback` stands in for `xymqtt::client` so that generated stubs and their handlers can be tested
/// as they are. It behaves like a client connected to a broker that it shares with nobody else:
/// every message it publishes comes back to its own subscriptions, and a command it serves can be
/// called through the same object. What it guarantees, and where it differs from the real client:
///
///  - publish: the topic is checked first (invalid_topic, synchronously); the message is then
///    accepted at once, recorded (see published()) and queued for every matching subscription. The
///    returned future is already ready, even when nothing is subscribed.
///  - Routing: one delivery per subscribed filter that matches (overlapping filters each get a copy).
///    `$share/<group>/<filter>` subscriptions: every subscribe call is one member of the group; each
///    message goes to one member, round robin, and each group gets its own copy. Retained messages
///    (publish_options::retain) are kept per topic and delivered when a (non-shared) filter is first
///    subscribed; an empty retained payload clears the topic.
///  - Lanes: deliveries of one filter run in publish order, one at a time (a shared subscription's
///    member is a lane of its own). A handler that throws has its message retried, with
///    `message::attempt` incremented, before any later message of the same lane; other lanes go on.
///    When a filter has several handlers they run in subscription order; a handler that throws ends
///    the attempt, and the retry runs it and the ones after it (those that already succeeded for the
///    message do not run again). parse_error moves the message to the dead letters at once; running
///    out of `retry_policy::max_attempts` (0 = never) does so too. Either way the lane goes on with
///    the next message. Removing the last handler of a filter parks its queued deliveries until the
///    filter is subscribed again.
///  - Commands follow the wire protocol of the real client (the same encoders are used): invokes,
///    resolves, rejects and cancels are ordinary published messages, visible in published().
///    A repeated invoke of a message id that already has an outcome does not run the handler again;
///    the stored outcome is published again (a cancelled call publishes nothing). An invoke whose
///    expiry (call_options::expiry) has passed when it is about to run is not executed: it is
///    rejected with status 408. Results of `<command>` arrive on one resolve and one reject lane,
///    shared by subscribe_results and call_async: a call_async result goes to its future only; any
///    other result of a call made here goes, once, to every subscribe_results handler of the command.
///  - Nothing is durable: outcomes, dead letters and queued deliveries live as long as the object;
///    there is no connection (the connection hooks never fire) and no QoS 2 duplicate to drop.
///
/// Two ways of running handlers, chosen by options::mode:
///  - delivery_mode::manual (the default): nothing runs until the test pumps with run_until_idle() or
///    run_one(), which run handlers on the calling thread. Retries run without waiting for the retry
///    delay, still in lane order. Call timeouts (call_async) use the loopback's clock, which only moves
///    with real time and advance_clock(); they fire while pumping. A future returned by call_async is
///    made ready while pumping, so a test must pump before calling `get()` on it.
///  - delivery_mode::threaded: background threads deliver as the real client does, each busy lane on a
///    thread of its own, retries after the retry_policy's delays. wait_idle() waits for quiescence.
///
/// Thread safety: every member function may be called from any thread, including from inside
/// handlers (publishing, subscribing, calling, and in manual mode pumping other lanes).
///
/// @code
///   xymqtt::testing::loopback lb;                       // manual mode
///   lb.command_register("cmd/svc/ping", my_handler);    // the code under test
///   auto pc = lb.call_async("cmd/svc/ping", request_bytes);
///   lb.run_until_idle();                                // runs the invoke, then delivers the resolve
///   xymqtt::command_result r = pc.result.get();         // ready: the loopback was pumped
///   assert(lb.published("cmd/svc/ping/resolve").size() == 1);
/// @endcode
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xymqtt/client.h"
#include "xymqtt/message.h"
#include "xymqtt/transport.h"

/// Test support: the in-memory transport (library `xymqtt::testing`).
namespace xymqtt::testing {

/// How deliveries are run; see the file comment.
enum class delivery_mode : std::uint8_t {
    manual,    ///< Only when the test pumps (run_until_idle, run_one), on the pumping thread.
    threaded,  ///< On background threads, as soon as possible, like xymqtt::client.
};

/// Where an injected publish failure shows (see loopback::fail_next_publish).
enum class failure_point : std::uint8_t {
    future,  ///< The returned future fails (like a broker refusal, broker_error).
    thrown,  ///< The call throws synchronously (like storage_error: nothing was stored).
};

/// One accepted publish, as recorded by loopback::published().
struct published_message {
    std::string topic;         ///< The topic it was published to.
    std::string payload;       ///< The payload bytes.
    message_properties props;  ///< The MQTT 5 properties it was published with.
    bool retain = false;       ///< Whether it was published with the retain flag.
};

/// One message moved to the dead letters.
struct dead_letter_record {
    message msg;         ///< The message as last delivered (its attempt is the failed attempt).
    std::string filter;  ///< The subscription filter of the lane it was delivered on.
    std::string reason;  ///< The handler's error message.
    bool undecodable = false;  ///< true for parse_error, false for running out of attempts.
};

/// Counters since construction.
struct loopback_stats {
    std::uint64_t published = 0;     ///< Publishes accepted (user's and the command protocol's).
    std::uint64_t deliveries = 0;    ///< Delivery attempts run (retries included).
    std::uint64_t handled = 0;       ///< Deliveries completed successfully.
    std::uint64_t retries = 0;       ///< Deliveries scheduled for a retry after a handler threw.
    std::uint64_t dead_letters = 0;  ///< Deliveries moved to the dead letters.
    std::uint64_t expired = 0;       ///< Invokes not executed because their expiry had passed.
    std::size_t pending = 0;         ///< Deliveries queued or running now (retries included).
};

/// The in-memory transport. See the file comment for its semantics.
class loopback : public transport {
public:
    /// Options of the constructor; all have usable defaults.
    struct options {
        delivery_mode mode = delivery_mode::manual;  ///< How deliveries are run.
        /// Retry of a throwing handler, as for xymqtt::client (max_attempts 0 retries forever).
        /// Delays are honoured in threaded mode only.
        retry_policy retry;
        /// Observers. Called: on_packet_send (each accepted publish), on_packet_receive (each publish
        /// that matches at least one subscription), on_message (before every attempt),
        /// on_message_retry, on_parse_error, on_dead_letter, on_log. Never called: the connection
        /// hooks and on_storage_error. Exceptions thrown by hooks are caught and ignored.
        xymqtt::hooks hooks;
    };

    /// A loopback with default options (manual mode).
    loopback();
    /// @param opts mode, retry policy and hooks.
    explicit loopback(options opts);
    /// Stops the background threads (threaded mode), after the handlers that are running return.
    /// Futures of call_async still pending fail with client_closed.
    ~loopback() override;
    loopback(const loopback&) = delete;             ///< Not copyable.
    loopback& operator=(const loopback&) = delete;  ///< Not copyable.

    // ---- transport ----------------------------------------------------------------------------

    /// Accepts `payload` for `topic` and queues it for every matching subscription. Properties and size
    /// are not checked. A failure injected with fail_next_publish(…, failure_point::thrown) is thrown
    /// instead; nothing is recorded or delivered then.
    /// @param topic the topic name.
    /// @param payload the payload bytes.
    /// @param opts MQTT 5 properties and the retain flag, recorded and delivered as they are.
    /// @return a future that is already ready, or fails with the exception given to
    ///         fail_next_publish(…, failure_point::future).
    /// @throw xymqtt::invalid_topic if `topic` is not a valid topic name (nothing is recorded or
    ///        delivered).
    std::future<void> publish(const std::string& topic, std::string payload, publish_options opts = {}) override;

    /// Adds `handler` for `filter`. The first handler of a (non-shared) filter receives the
    /// retained messages that match it, after the deliveries parked when its last handler was
    /// removed. Messages published while nothing subscribed the filter are not delivered to it.
    /// @param filter the topic filter; `$share/<group>/<filter>` joins a shared subscription.
    /// @param handler runs for each message of the filter (see message_handler).
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic for a malformed filter.
    /// @throw xymqtt::error for an empty handler.
    subscription_id subscribe(const std::string& filter, message_handler handler) override;

    /// Removes one handler of subscribe or subscribe_results. Removing the last handler of a filter
    /// parks that filter's queued deliveries until it is subscribed again; a handler already running
    /// finishes. The results lanes of a command stay subscribed. Unknown ids are ignored.
    /// @param id what subscribe or subscribe_results returned.
    void unsubscribe(subscription_id id) override;

    /// Removes every handler that subscribe() added for exactly `filter` (as xymqtt::client's).
    /// @param filter the filter as it was given to subscribe().
    void unsubscribe(const std::string& filter);

    /// Serves `command`: subscribes `<command>/invoke` (or `$share/<group>/<command>/invoke`) and
    /// `<command>/cancel`. A handler's return value is published to `<command>/resolve`; command_error
    /// rejects with its status, message and body, parse_error with 400, any other exception with 500
    /// and its what(), all on `<command>/reject`. An invoke that cannot be decoded (no message id)
    /// goes to the dead letters. A cancel while the handler runs runs its call_context::on_cancel
    /// callbacks (on the cancel lane's thread) and suppresses its outcome; a cancel that arrives first
    /// keeps the invoke from running; a cancel after the outcome changes nothing. Calls start one at a
    /// time whatever `opts.concurrency` says.
    /// @param command the command's base topic.
    /// @param handler runs for each call (see command_handler).
    /// @param opts share group, and concurrency (checked; calls start one at a time).
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name or `opts.group` is not a valid
    ///        group name.
    /// @throw xymqtt::configuration_error if `opts.concurrency` is 0 or above max_concurrency.
    /// @throw xymqtt::command_already_registered if `command` is already served by this loopback.
    void command_register(const std::string& command, command_handler handler, command_options opts = {}) override;
    /// Serves `command` with a deferred handler: it may answer after it returns, from any thread;
    /// run_until_idle() then delivers the outcome.
    /// @param command the command's base topic.
    /// @param handler starts each call and answers it through its responder.
    /// @param opts share group, and concurrency (checked; calls start one at a time).
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name or `opts.group` is not a valid
    ///        group name.
    /// @throw xymqtt::configuration_error if `opts.concurrency` is 0 or above max_concurrency.
    /// @throw xymqtt::command_already_registered if `command` is already served by this loopback.
    void command_register(const std::string& command, deferred_command_handler handler,
                          command_options opts = {}) override;

    /// Stops serving `command` and unsubscribes its two topics; a call already running finishes.
    /// Unknown commands are ignored.
    /// @param command the command's base topic.
    void command_unregister(const std::string& command) override;

    /// Subscribes `<command>/resolve` and `<command>/reject` (once per command) and adds `handler`.
    /// Results whose message id was not produced by call() of this loopback are ignored; each
    /// result is handed over once (a repeated result is dropped) to all handlers of the command, in
    /// order, again while one throws. With no handler left, results of calls made here are retried
    /// until one is subscribed (in manual mode run_until_idle then stops at its limit).
    /// @param command the command's base topic.
    /// @param handler runs for each result (see result_handler).
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::error for an empty handler.
    subscription_id subscribe_results(const std::string& command, result_handler handler) override;
    /// As the other subscribe_results: the loopback has one place for results.
    /// @param command the command's base topic.
    /// @param handler runs for each result (see result_handler).
    /// @param routing ignored.
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::error for an empty handler.
    subscription_id subscribe_results(const std::string& command, result_handler handler,
                                      std::optional<result_routing> routing) override;

    /// Publishes an invoke of `command` (encoded as `opts.format` says) with a new message id. A
    /// failure injected with fail_next_publish (either failure point) is thrown instead; nothing is
    /// published then.
    /// @param command the command's base topic.
    /// @param body the encoded request, as `opts.format` says; for JSON, empty means `{}`.
    /// @param opts format and expiry (`results` is ignored).
    /// @return the call's handle; each cancel() publishes `<command>/cancel` (the server ignores all
    ///         but the first); after the loopback is destroyed it throws client_closed.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::call_with_no_subscription unless results of `command` are subscribed: a
    ///        subscribe_results handler, or subscribe() filters matching `<command>/resolve` and
    ///        `<command>/reject`.
    /// @throw xymqtt::parse_error if the format is JSON and `body` is not a JSON object.
    call_handle call(const std::string& command, std::string body, call_options opts = {}) override;

    /// Like call() without needing a subscription; `done` (or the future, in the form without it) gets
    /// the call's first resolve or reject (subscribe_results handlers do not). In manual mode the outcome
    /// comes only while the test pumps. Destroying the loopback ends it with client_closed. A failure
    /// injected with failure_point::thrown is thrown; one with failure_point::future is handed to `done`
    /// (fails the future) instead. Nothing is published then.
    /// @param command the command's base topic.
    /// @param body the encoded request, as `opts.format` says; for JSON, empty means `{}`.
    /// @param opts format and expiry (`results` is ignored).
    /// @param timeout if set, when it runs out (on the loopback's clock, see advance_clock) before a
    ///        result arrives, the outcome is timeout_error, a cancel is published and a later result is
    ///        ignored.
    /// @param done receives the outcome, exactly once (see call_completion).
    /// @return the call's handle.
    /// @throw xymqtt::configuration_error if `done` is empty.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::parse_error if the format is JSON and `body` is not a JSON object.
    call_handle call_async(const std::string& command, std::string body, call_options opts,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done) override;
    using transport::call_async;

    // ---- pumping (manual mode) ----------------------------------------------------------------

    /// Runs queued deliveries on the calling thread until none can run, retries included (without
    /// waiting for their delays). Fires call_async timeouts that are due. Lanes are interleaved in
    /// publish order; a retry goes behind the deliveries already waiting in other lanes.
    /// @param max_deliveries stop after this many deliveries (a handler that always throws, with
    ///        retry_policy::max_attempts 0, would otherwise never let the loopback become idle).
    /// @return the number of deliveries run.
    /// @throw std::logic_error in threaded mode (unless `max_deliveries` is 0).
    std::size_t run_until_idle(std::size_t max_deliveries = 100000);

    /// Runs the next delivery, if any (the one run_until_idle would run first), after firing the
    /// call_async timeouts that are due.
    /// @return true if a delivery ran.
    /// @throw std::logic_error in threaded mode.
    bool run_one();

    /// Runs the next delivery of the lane subscribed with exactly `filter` (for a shared filter, of
    /// the first member lane that has one); lets a test choose an interleaving, e.g. a cancel that
    /// overtakes its invoke.
    /// @param filter the filter exactly as subscribed.
    /// @return true if a delivery ran.
    /// @throw std::logic_error in threaded mode.
    bool run_one(const std::string& filter);

    // ---- threaded mode ------------------------------------------------------------------------

    /// Waits until no delivery is queued or running (a lane waiting for a retry is not idle). In
    /// manual mode: run_until_idle(), then reports whether the loopback is idle. Must not be called
    /// from a handler in threaded mode (its own delivery keeps the loopback busy).
    /// @param timeout how long to wait at most (threaded mode; manual mode does not wait).
    /// @return false on timeout (manual mode: if it is not idle after run_until_idle).
    bool wait_idle(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // ---- clock --------------------------------------------------------------------------------

    /// Moves the loopback's clock forward by `d` (it otherwise follows the real clock). Used for
    /// invoke expiry, `message::received_at_ms`, call_async timeouts and, in threaded mode, retry
    /// delays.
    /// @param d how far to move it; 0 or more.
    /// @throw std::invalid_argument if `d` is negative.
    void advance_clock(std::chrono::milliseconds d);

    // ---- inspection and fault injection -------------------------------------------------------

    /// @return every accepted publish, in order (the command protocol's included).
    std::vector<published_message> published() const;
    /// The accepted publishes to one topic.
    /// @param topic the topic name, compared exactly.
    /// @return the accepted publishes to `topic`, in order.
    std::vector<published_message> published(const std::string& topic) const;
    /// Forgets the record of accepted publishes (delivery is not affected).
    void clear_published();
    /// @return the dead letters, oldest first.
    std::vector<dead_letter_record> dead_letters() const;
    /// Queues dead letter `id` (its `msg.id`) again at the back of its filter's lane, as attempt 1.
    /// @param id the dead letter's `msg.id`.
    /// @return false if `id` is unknown.
    bool replay_dead_letter(const std::string& id);
    /// Deletes dead letter `id`.
    /// @param id the dead letter's `msg.id`.
    /// @return false if `id` is unknown.
    bool purge_dead_letter(const std::string& id);
    /// Forgets the dead letters.
    void clear_dead_letters();
    /// @return the filters subscribed now (internal command subscriptions included), each once, in
    ///         the order they were first subscribed.
    std::vector<std::string> subscribed_filters() const;
    /// @return the counters.
    loopback_stats stats() const;

    /// Makes the next publish, call or call_async fail with `error` instead of being accepted (nothing
    /// is recorded or delivered). Several calls queue several failures, used in order. Publishes of
    /// the command protocol made by the loopback itself (resolve, reject, cancel) are not affected.
    /// @param error e.g. `std::make_exception_ptr(xymqtt::broker_error("not authorized", 0x87))`.
    /// @param where whether the returned future fails or the call throws; call() always throws.
    /// @throw std::invalid_argument if `error` is null.
    void fail_next_publish(std::exception_ptr error, failure_point where = failure_point::future);

    class impl;

private:
    std::shared_ptr<impl> impl_;
};

}  // namespace xymqtt::testing
