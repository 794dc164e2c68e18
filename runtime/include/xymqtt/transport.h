/// @file transport.h
/// The messaging interface that generated stubs are written against.
///
/// `xymqtt::client` implements it over MQTT with every delivery guarantee; `xymqtt::testing::loopback`
/// implements it in memory for unit tests. Payloads are bytes here; generated code adds the types.
///
/// Events: `publish` / `subscribe` / `unsubscribe`.
/// Commands (xy-mqtt's protocol, topics `<command>/invoke|resolve|reject|cancel`):
/// `command_register` / `command_unregister` on the server; `subscribe_results`, `call`, `call_async`
/// and `call_handle::cancel` on the caller.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <future>
#include <optional>
#include <string>

#include "xymqtt/message.h"

namespace xymqtt {

/// Identifies one handler registered with subscribe or subscribe_results.
using subscription_id = std::uint64_t;

/// Handles one delivered message. Throwing retries the same message later (exponential backoff);
/// throwing parse_error sends it to dead letters instead. Runs off the network thread.
using message_handler = std::function<void(const message&)>;

/// What a command handler can do besides returning: learn that its call was cancelled.
class call_context {
public:
    virtual ~call_context() = default;
    /// Registers `fn`, run once if the caller cancels while the handler runs (on another thread), or
    /// at once if the call is already cancelled. After a cancel nothing is published for the call.
    /// @param fn the callback; an exception it throws is caught and does not stop the cancel.
    virtual void on_cancel(std::function<void()> fn) = 0;
    /// @return true once the call has been cancelled.
    virtual bool cancelled() const = 0;
};

/// One call as a command handler receives it.
struct invocation {
    std::string command;     ///< Base topic of the command, e.g. `cmd/publisher/ping`.
    std::string message_id;  ///< The caller's unique id of this call.
    wire_format format;      ///< Format of `body`; the result must be encoded the same way.
    /// JSON: the invoke's whole JSON object (with `messageId`). Binary: the request's protobuf bytes.
    std::string body;
    message_properties props;   ///< The invoke's MQTT 5 properties.
    std::uint32_t attempt = 1;  ///< 2 and more when a crashed or failed run is retried.
};

/// Serves one command. Returns the encoded result: a JSON object (the runtime merges `messageId` in)
/// or protobuf bytes, as `invocation::format` says. Throwing rejects the call: command_error carries a
/// status and message, parse_error rejects with 400, anything else with 500.
using command_handler = std::function<std::string(const invocation&, call_context&)>;

/// Answers one call of a deferred command handler, later and from any thread.
///
/// The first resolve or reject counts; later ones change nothing and return false. Copies answer the same
/// call. A call whose every responder is dropped unanswered is rejected with 500, so no call is left
/// without an outcome. Until it is answered the invoke stays in the server's inbox: a crash runs it again.
class responder {
public:
    /// How a transport receives the answer: an error (as a command_handler would throw it) or a result.
    using answer_fn = std::function<void(std::exception_ptr error, std::string result)>;

    /// Made by the transport for each call.
    /// @param answer called once, with the first resolve or reject (or the 500 of a dropped responder).
    explicit responder(answer_fn answer);

    /// Resolves the call. A JSON result that is not a JSON object rejects it with 500 instead.
    /// @param result encoded as invocation::format says (as a command_handler returns it).
    /// @return false if the call was answered already.
    bool resolve(std::string result) const;
    /// Rejects the call with `status`, `message` and optional encoded details (as command_error has them).
    /// @param status HTTP-like status published in the reject (e.g. 400, 404, 409).
    /// @param message human-readable reason published in the reject.
    /// @param body optional encoded reject details, as command_error's `body`.
    /// @return false if the call was answered already.
    bool reject(int status, const std::string& message, std::string body = {}) const;
    /// Rejects the call as if a command_handler had thrown `error`: command_error with its status,
    /// parse_error with 400, anything else with 500.
    /// @param error the exception; null rejects with 500.
    /// @return false if the call was answered already.
    bool reject(std::exception_ptr error) const;
    /// @return true once the call has been answered.
    bool answered() const;

private:
    struct state;
    std::shared_ptr<state> state_;
};

/// Serves one command without holding a thread: starts the work and returns; `respond` answers later.
/// Throwing before answering rejects the call as a command_handler's exception does.
using deferred_command_handler = std::function<void(const invocation&, call_context&, responder respond)>;

/// Options of command_register.
struct command_options {
    /// Non-empty: servers registered with the same group share the invoke subscription
    /// (`$share/<group>/<command>/invoke`), so each call runs on one of them.
    std::string group;
    /// How many calls of this command may run at once on this server, 1 to max_concurrency.
    ///
    /// 1 (the default, as in xy-mqtt): calls run one at a time, in the order their invokes arrived, so a
    /// handler needs no locking. N > 1: up to N handlers run at once on the command's own N threads; calls
    /// start in arrival order and finish in any order, each result published as its call finishes. For a
    /// deferred_command_handler N counts the calls started and not yet answered; it uses no threads. What
    /// holds either way: an invoke leaves the server's inbox only with its outcome, so a crash runs again
    /// at most the calls that were running; a repeated invoke gets the stored outcome, or none while its
    /// first copy still runs (that copy answers); a cancel reaches the call wherever it runs.
    unsigned concurrency = 1;
};

/// The highest command_options::concurrency: each unit is a thread.
constexpr unsigned max_concurrency = 256;

/// A resolve or reject, as a caller receives it.
struct command_result {
    std::string command;     ///< Base topic of the command called.
    std::string message_id;  ///< The id of the call this result answers.
    bool ok = true;      ///< true for resolve, false for reject.
    int status = 200;    ///< 200 for resolve; the reject's status otherwise.
    std::string message; ///< The reject's message; empty for resolve.
    wire_format format = wire_format::json;  ///< Format of `body`.
    /// JSON: the whole JSON object received. Binary: the result's (or reject details') protobuf bytes.
    std::string body;
};

/// Handles results of calls this client made; runs off the network thread, retried if it throws.
using result_handler = std::function<void(const command_result&)>;

/// Where servers send the results of a client's calls (client_options::results, call_options::results).
enum class result_routing {
    /// `<command>/resolve` and `<command>/reject`, as in xy-mqtt: every caller of a command subscribes to
    /// them and receives, stores and discards the results of every other caller too. JavaScript peers of
    /// the xy-mqtt protocol answer there.
    shared,
    /// MQTT 5 only. Each invoke names the caller's own topic: Response Topic
    /// `<results_prefix>/<client id>/<command>`, Correlation Data its message id. xymqtt servers answer to
    /// that topic followed by `/resolve` or `/reject`, and the caller subscribes
    /// `<results_prefix>/<client id>/#` alone, so it receives and stores only its own results, and a
    /// broker ACL can grant that topic to the client alone (`pattern read xymqtt/results/%c/#`). A server
    /// that ignores the Response Topic (an xy-mqtt peer) answers on the shared topics, where such a caller
    /// does not listen: call those with `shared`.
    per_client,
};

/// Options of call and call_async.
struct call_options {
    wire_format format = wire_format::binary;  ///< How the request and its result are encoded.
    /// If set, the invoke expires (MQTT 5 message expiry) and is not executed after this long.
    std::optional<std::chrono::seconds> expiry;
    /// If set, where this call's result goes, instead of the client's default (the loopback ignores it).
    std::optional<result_routing> results;
};

/// A call that has been durably accepted: its id, and the means to cancel it.
class call_handle {
public:
    /// A handle of no call: cancel() does nothing.
    call_handle() = default;
    /// Made by the transport for each call.
    /// @param command base topic of the command called.
    /// @param message_id the call's id.
    /// @param cancel what cancel() runs; empty: cancel() does nothing.
    call_handle(std::string command, std::string message_id, std::function<void()> cancel)
        : command_(std::move(command)), message_id_(std::move(message_id)), cancel_(std::move(cancel)) {}
    /// @return the base topic of the command called.
    const std::string& command() const noexcept { return command_; }
    /// @return the call's id, as the server's invocation::message_id and the command_result carry it.
    const std::string& message_id() const noexcept { return message_id_; }
    /// Publishes `<command>/cancel` (QoS 2); the cancel is stored in the outbox when this returns, and
    /// sent as soon as the broker is reachable. Best effort: a call already finished is not affected, and
    /// cancelling twice is harmless.
    /// @throw xymqtt::client_closed if the client (or loopback) is closed or destroyed.
    /// @throw xymqtt::storage_error if the cancel cannot be stored.
    void cancel() const {
        if (cancel_) cancel_();
    }

private:
    std::string command_;
    std::string message_id_;
    std::function<void()> cancel_;
};

/// A call whose result is awaited by a future.
struct pending_call {
    call_handle handle;  ///< The call's id, and the means to cancel it.
    /// Ready with the resolve or reject; fails with timeout_error, or client_closed. A plain
    /// (not deferred) future: `wait_for` reports it ready as soon as the outcome is in.
    std::future<command_result> result;
};

/// Receives the outcome of one call_async, exactly once: the resolve or reject with `error` null, or
/// why there is none (timeout_error, client_closed, broker_error) with `result` empty. It runs on a
/// runtime thread (or on the calling thread, for an outcome known at once) and must not block.
using call_completion = std::function<void(std::exception_ptr error, command_result result)>;

/// The messaging interface. See the file comment.
class transport {
public:
    virtual ~transport() = default;

    /// Stores `payload` for `topic` and sends it with QoS 2.
    /// @param topic the topic name; checked with validate_topic_name.
    /// @param payload the payload bytes.
    /// @param opts MQTT 5 properties (checked with validate_properties) and the retain flag.
    /// @return a future ready when the QoS 2 flow completes (PUBCOMP). It fails with broker_error if the
    ///         broker refuses the message for good (xymqtt::client keeps it as a dead letter),
    ///         storage_error if it cannot be stored, client_closed if the client is closed first (the
    ///         message stays in the outbox).
    /// @throw xymqtt::invalid_topic for a topic that is not a valid topic name, before anything is stored.
    /// @throw xymqtt::invalid_property for a property the broker would refuse, before anything is stored.
    /// @throw xymqtt::message_too_large over MQTT's limit, or over the broker's announced maximum packet
    ///        size, before anything is stored.
    /// @throw xymqtt::client_closed if the client is closed.
    virtual std::future<void> publish(const std::string& topic, std::string payload, publish_options opts = {}) = 0;

    /// Adds `handler` for `filter`; the first handler of a filter subscribes at the broker (QoS 2).
    /// May be called before or after connecting.
    /// @param filter the topic filter; `$share/<group>/<filter>` subscribes a shared subscription.
    /// @param handler runs for each message of the filter (see message_handler).
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic for a malformed filter.
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::client_closed if the client is closed.
    virtual subscription_id subscribe(const std::string& filter, message_handler handler) = 0;

    /// Removes one handler; removing the last handler of a filter unsubscribes at the broker.
    /// Removing an unknown id is harmless.
    /// @param id what subscribe or subscribe_results returned.
    virtual void unsubscribe(subscription_id id) = 0;

    /// Serves `command`: subscribes `<command>/invoke` and `<command>/cancel`.
    /// @param command the command's base topic, e.g. `cmd/publisher/ping`.
    /// @param handler runs for each call (see command_handler).
    /// @param opts share group and concurrency.
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name, or the share group has `/`,
    ///        `+` or `#` (or is not valid UTF-8).
    /// @throw xymqtt::configuration_error if `opts.concurrency` is 0 or above max_concurrency.
    /// @throw xymqtt::command_already_registered if this client already serves `command`.
    /// @throw xymqtt::client_closed if the client is closed.
    virtual void command_register(const std::string& command, command_handler handler,
                                  command_options opts = {}) = 0;

    /// Serves `command` with a handler that answers later through its responder (see responder).
    /// @param command the command's base topic.
    /// @param handler starts each call and answers it through its responder.
    /// @param opts share group and concurrency.
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name, or the share group is not a
    ///        valid group name.
    /// @throw xymqtt::configuration_error if `opts.concurrency` is 0 or above max_concurrency.
    /// @throw xymqtt::command_already_registered if this client already serves `command`.
    /// @throw xymqtt::client_closed if the client is closed.
    virtual void command_register(const std::string& command, deferred_command_handler handler,
                                  command_options opts = {}) = 0;

    /// Stops serving `command` and unsubscribes its topics. Unknown commands are harmless.
    /// @param command the command's base topic.
    virtual void command_unregister(const std::string& command) = 0;

    /// Receives the results of this client's calls of `command`: subscribes `<command>/resolve` and
    /// `<command>/reject`. Results whose message id this client never called are ignored; each result
    /// is handed over once. Remove with unsubscribe.
    /// @param command the command's base topic.
    /// @param handler runs for each result (see result_handler).
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::configuration_error if the client's default result_routing is per_client and this
    ///        client cannot have per-client result topics (MQTT 3.1.1, or a client id or results prefix
    ///        that cannot be topic levels).
    /// @throw xymqtt::client_closed if the client is closed.
    virtual subscription_id subscribe_results(const std::string& command, result_handler handler) = 0;

    /// As above, subscribing where results of calls made with `routing` arrive (the client's default if
    /// unset): a service whose calls all use per-client result topics need not receive every caller's
    /// results on the shared ones. The loopback ignores `routing`.
    /// @param command the command's base topic.
    /// @param handler runs for each result (see result_handler).
    /// @param routing where the results arrive; unset: the client's default.
    /// @return an id for unsubscribe.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::error for an empty handler.
    /// @throw xymqtt::configuration_error if `routing` (or, unset, the client's default) is per_client
    ///        and this client cannot have per-client result topics.
    /// @throw xymqtt::client_closed if the client is closed.
    virtual subscription_id subscribe_results(const std::string& command, result_handler handler,
                                              std::optional<result_routing> routing) = 0;

    /// Calls `command` with the encoded request `body` (a JSON object, or protobuf bytes). Nothing is
    /// stored when it throws.
    /// @param command the command's base topic.
    /// @param body the encoded request, as `opts.format` says; for JSON, empty means `{}`.
    /// @param opts format, expiry and result routing of this call.
    /// @return the call's handle, once the invoke is durably stored (it is sent as soon as the broker is
    ///         reachable).
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::client_closed if the client is closed.
    /// @throw xymqtt::configuration_error if the call's result routing is per_client and this client
    ///        cannot have per-client result topics, or if the format is binary under MQTT 3.1.1.
    /// @throw xymqtt::call_with_no_subscription unless results of `command` are subscribed
    ///        (subscribe_results, or subscriptions matching both `<command>/resolve` and
    ///        `<command>/reject`; under result_routing::per_client only subscribe_results counts).
    /// @throw xymqtt::broker_error if the broker refused this client's per-client result topics
    ///        (result_routing::per_client).
    /// @throw xymqtt::parse_error if the format is JSON and `body` is not a JSON object.
    /// @throw xymqtt::storage_error if the invoke cannot be stored.
    virtual call_handle call(const std::string& command, std::string body, call_options opts = {}) = 0;

    /// Calls `command` and hands its outcome to `done`, for callers that stay online. Needs no
    /// subscription of its own: the result goes to `done` only, not to subscribe_results handlers. On
    /// timeout `done` gets timeout_error and the call is cancelled; a later result is ignored. If the
    /// broker refuses this client's per-client result topics, `done` gets broker_error; if the client
    /// is closed first, client_closed.
    /// @param command the command's base topic.
    /// @param body the encoded request, as `opts.format` says; for JSON, empty means `{}`.
    /// @param opts format, expiry and result routing of this call.
    /// @param timeout if set, how long to wait for the result.
    /// @param done receives the outcome, exactly once (see call_completion).
    /// @return the call's handle, once the invoke is durably stored.
    /// @throw xymqtt::configuration_error if `done` is empty; as for call().
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::client_closed if the client is closed.
    /// @throw xymqtt::broker_error if the broker refused this client's per-client result topics.
    /// @throw xymqtt::parse_error if the format is JSON and `body` is not a JSON object.
    /// @throw xymqtt::storage_error if the invoke cannot be stored.
    virtual call_handle call_async(const std::string& command, std::string body, call_options opts,
                                   std::optional<std::chrono::milliseconds> timeout, call_completion done) = 0;

    /// Calls `command` and awaits its result through a future (call_async with a completion that
    /// fulfils it).
    /// @param command the command's base topic.
    /// @param body the encoded request, as `opts.format` says; for JSON, empty means `{}`.
    /// @param opts format, expiry and result routing of this call.
    /// @param timeout if set, how long to wait for the result; then the future fails with timeout_error.
    /// @return the call's handle, and a future of its result.
    /// @throw xymqtt::invalid_topic if `command` is not a valid topic name.
    /// @throw xymqtt::client_closed if the client is closed.
    /// @throw xymqtt::configuration_error as for call().
    /// @throw xymqtt::broker_error if the broker refused this client's per-client result topics.
    /// @throw xymqtt::parse_error if the format is JSON and `body` is not a JSON object.
    /// @throw xymqtt::storage_error if the invoke cannot be stored.
    pending_call call_async(const std::string& command, std::string body, call_options opts = {},
                            std::optional<std::chrono::milliseconds> timeout = std::nullopt);
};

inline pending_call transport::call_async(const std::string& command, std::string body, call_options opts,
                                          std::optional<std::chrono::milliseconds> timeout) {
    auto promise = std::make_shared<std::promise<command_result>>();
    pending_call out;
    out.result = promise->get_future();
    out.handle = call_async(command, std::move(body), opts, timeout,
                            [promise](std::exception_ptr error, command_result result) {
                                if (error)
                                    promise->set_exception(error);
                                else
                                    promise->set_value(std::move(result));
                            });
    return out;
}

/// Makes a message id, as call() does for each call.
/// @return a new unique message id: 128 bits from a per-thread std::mt19937_64 initialised from
///         std::random_device, as 32 lowercase hex digits.
std::string make_message_id();

}  // namespace xymqtt
