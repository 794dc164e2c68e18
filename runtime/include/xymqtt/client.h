/// @file client.h
/// The durable MQTT client: events and commands over Paho MQTT C++ with guaranteed delivery.
///
/// Guarantees (with the default options):
///  - Every publish and subscription is QoS 2, on a persistent session (MQTT 5: clean start off and a
///    session expiry; MQTT 3.1.1: clean session off) under a stable, required client id.
///  - Outbox: `publish` stores the message before it is sent. Until its QoS 2 flow completes it stays in
///    the store; after a restart, or when the broker answers "no session present", it is sent again.
///    Publishing while disconnected queues on disk, not in memory.
///  - Inbox: an arriving message is committed to the store before the broker can be acknowledged
///    (the commit happens inside Paho's callback, which runs before PUBREC). Handlers run on their own
///    threads, one lane per subscription filter, in arrival order. A handler that throws is retried with
///    exponential backoff (also across restarts) and the message stays stored until a handler succeeds.
///    A QoS 2 redelivery of a message already committed is recognised and handled once.
///  - A payload a handler cannot decode (it throws parse_error), or one that runs out of
///    `retry_policy::max_attempts`, moves to dead letters and never blocks the messages behind it.
/// Delivery is at least once end to end: a publisher killed between the broker's PUBREC and its own
/// record of PUBCOMP sends that message again after restart, and a subscriber killed after its handler
/// returned but before the removal was committed runs that handler again.
///
/// What a client is built with and reports lives in headers of their own, all included here:
/// client_options.h (with tls_options.h, retry_policy.h, hooks.h, logging.h), dead_letter.h and stats.h.
#pragma once

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xymqtt/client_options.h"
#include "xymqtt/dead_letter.h"
#include "xymqtt/hooks.h"
#include "xymqtt/logging.h"
#include "xymqtt/message.h"
#include "xymqtt/retry_policy.h"
#include "xymqtt/stats.h"
#include "xymqtt/store.h"
#include "xymqtt/tls_options.h"
#include "xymqtt/transport.h"

/// The xymqtt runtime: the durable client, the transport interface, stores, messages and errors.
namespace xymqtt {

/// The durable MQTT client. See the file comment for its guarantees.
class client : public transport {
public:
    /// Opens the store and prepares the connection; nothing is sent until connect(). Messages that a
    /// previous run left in the store's outbox and inbox are taken up: the outbox is sent after
    /// connecting, the inbox is handled once its filters are subscribed.
    /// @param opts the options; see client_options.
    /// @throw xymqtt::configuration_error for an empty client id; no `store` and an empty `store_dir`;
    ///        a server URI (of server_uri or server_uris) not of the form `tcp|mqtt|ssl|mqtts://host:port`;
    ///        tls options with a plain tcp:// or mqtt:// URI; a tls_options::ca_path that cannot be read or
    ///        holds no certificate; an MQTT version other than 5
    ///        or 4; a session expiry of 0 under MQTT 5; a max_inflight or broker_receive_maximum_311 of 0; a resend_unanswered_after
    ///        of 0 or less; result_routing::per_client under MQTT 3.1.1 or with a client id or results
    ///        prefix that cannot be topic levels (a call that asks for per_client then throws it too);
    ///        an invalid XYMQTT_LOG_LEVEL when hooks::on_log is unset; a store directory that cannot be
    ///        created or used, or that another process holds.
    /// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk) if the store cannot be opened
    ///        or read.
    explicit client(client_options opts);
    /// Closes the client (see close()).
    ~client() override;
    client(const client&) = delete;             ///< Not copyable.
    client& operator=(const client&) = delete;  ///< Not copyable.

    /// Starts connecting (and reconnecting, forever, with backoff) in the background. Failures are
    /// logged and shown in client_stats::last_error; they are not thrown.
    /// @throw xymqtt::client_closed if the client is closed.
    void connect();
    /// Waits until connected.
    /// @param timeout how long to wait at most.
    /// @return true once connected; false on timeout or if the client is closed meanwhile.
    bool wait_connected(std::chrono::milliseconds timeout);
    /// @return true while connected.
    bool is_connected() const;
    /// Stops handlers, disconnects and closes. Pending futures fail with client_closed, and call_async
    /// completions still waiting get client_closed; everything stored stays stored. Handlers that are
    /// running finish first, except the one that calls close(). Closing again does nothing.
    void close();

    std::future<void> publish(const std::string& topic, std::string payload, publish_options opts = {}) override;
    /// Like publish, with the same guarantees, but without a completion future: nothing is kept in memory
    /// for the message once it is stored, so millions can wait in the outbox (on disk) in constant memory.
    /// Watch completion through stats().outbox or wait_outbox_empty(); storage errors go to
    /// hooks::on_storage_error, and a message the broker refuses for good goes to the dead letters.
    /// @param topic the topic name.
    /// @param payload the payload bytes.
    /// @param opts MQTT 5 properties and the retain flag.
    /// @throw xymqtt::invalid_topic for a topic that is not a valid topic name, before anything is stored.
    /// @throw xymqtt::invalid_property for a property the broker would refuse, before anything is stored.
    /// @throw xymqtt::message_too_large over MQTT's limit, or over the broker's announced maximum packet
    ///        size, before anything is stored.
    /// @throw xymqtt::client_closed if the client is closed.
    void post(const std::string& topic, std::string payload, publish_options opts = {});
    subscription_id subscribe(const std::string& filter, message_handler handler) override;
    void unsubscribe(subscription_id id) override;
    /// Removes every handler that subscribe() added for exactly `filter`, and unsubscribes it at the
    /// broker. Unknown filters are harmless.
    /// @param filter the filter as it was given to subscribe().
    void unsubscribe(const std::string& filter);

    void command_register(const std::string& command, command_handler handler, command_options opts = {}) override;
    void command_register(const std::string& command, deferred_command_handler handler,
                          command_options opts = {}) override;
    void command_unregister(const std::string& command) override;
    subscription_id subscribe_results(const std::string& command, result_handler handler) override;
    subscription_id subscribe_results(const std::string& command, result_handler handler,
                                      std::optional<result_routing> routing) override;
    call_handle call(const std::string& command, std::string body, call_options opts = {}) override;
    call_handle call_async(const std::string& command, std::string body, call_options opts,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done) override;
    using transport::call_async;

    /// Lists the dead letters. A record that cannot be decoded is listed with the decoding error in
    /// `record.error`.
    /// @return the dead letters, oldest first.
    /// @throw xymqtt::storage_error if the store cannot be read.
    std::vector<dead_letter> dead_letters() const;
    /// Moves a dead letter back: a delivery to the inbox, to be handled again from attempt 1; a publish
    /// the broker refused to the outbox, to be sent again.
    /// @param id the dead letter's id (dead_letter::id).
    /// @return false if `id` is unknown.
    /// @throw xymqtt::storage_error if the store fails or the record is malformed; nothing is moved then.
    /// @throw xymqtt::client_closed if the client is closed.
    bool replay_dead_letter(const std::string& id);
    /// Deletes a dead letter.
    /// @param id the dead letter's id (dead_letter::id).
    /// @return false if `id` is unknown.
    /// @throw xymqtt::storage_error if the store fails; nothing is deleted then.
    /// @throw xymqtt::client_closed if the client is closed.
    bool purge_dead_letter(const std::string& id);

    /// Waits until every stored publish has completed.
    /// @param timeout how long to wait at most.
    /// @return false on timeout.
    bool wait_outbox_empty(std::chrono::milliseconds timeout);
    /// Waits until every stored delivery has been handled (or dead-lettered).
    /// @param timeout how long to wait at most.
    /// @return false on timeout.
    bool wait_inbox_empty(std::chrono::milliseconds timeout);

    /// @return a snapshot of the client's counters.
    client_stats stats() const;
    /// The client's counters (since it was constructed) and gauges (now), for a Prometheus collector or
    /// an OpenTelemetry observable callback to read whenever it is asked; each call is a fresh snapshot.
    /// Names carry no client id: an adapter adds options().client_id as a label.
    /// @return the figures, counters first.
    std::vector<metric> metrics() const;
    /// @return the options the client was constructed with, defaults resolved (e.g. receive_maximum).
    const client_options& options() const;

    class impl;

private:
    std::unique_ptr<impl> impl_;
};

}  // namespace xymqtt
