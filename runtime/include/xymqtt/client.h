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
#pragma once

#include <iosfwd>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xymqtt/message.h"
#include "xymqtt/store.h"
#include "xymqtt/transport.h"

namespace xymqtt {

/// TLS settings, passed through to Paho. Host name verification is ON by default (Paho's is off).
struct tls_options {
    std::string ca_file;           ///< PEM file of trusted CAs; empty = the system's.
    std::string cert_file;         ///< Client certificate (PEM), for mutual TLS.
    std::string key_file;          ///< Client private key (PEM).
    std::string key_password;
    bool verify_host = true;       ///< Check that the server certificate names the host.
    bool verify_server = true;     ///< Check the server certificate against the CAs.
};

/// Retry of a handler that throws.
struct retry_policy {
    std::chrono::milliseconds initial{100};   ///< Delay before the first retry.
    std::chrono::milliseconds cap{12800};     ///< Longest delay (xy-mqtt's 12.8 s).
    double multiplier = 2.0;
    /// 0 retries forever (xy-mqtt's behaviour); otherwise the message is dead-lettered after this
    /// many failed attempts.
    std::uint32_t max_attempts = 0;
    /// @return the delay before attempt `attempt + 1` after `attempt` failures.
    std::chrono::milliseconds delay_after(std::uint32_t attempt) const;
};

/// Severity of a log line.
enum class log_level : std::uint8_t { debug, info, warning, error };

/// The level the environment asks for: XYMQTT_LOG_LEVEL = debug, info, warning (the default when unset)
/// or error; `off` gives std::nullopt (no log lines).
/// @throw configuration_error for any other value.
std::optional<log_level> log_level_from_env();

/// A logger for hooks::on_log that writes each line of `min` and above to `out` (one write per line, so
/// lines of several threads do not mix): `xymqtt <client id> <level>: <text>`.
/// @param out must outlive the logger (std::cerr does).
std::function<void(log_level, const std::string&)> stream_logger(std::ostream& out, log_level min,
                                                                 std::string client_id = {});

/// Callbacks, all optional. They run on xymqtt's or Paho's threads and must not block for long;
/// exceptions they throw are caught and logged. Some may run inside Paho's callbacks, where Paho holds
/// its global lock (`on_packet_send` and `on_log`, for example): from hooks, do not call `close`,
/// `subscribe` or `unsubscribe`, which wait for Paho.
struct hooks {
    /// Every successful connection. `session_present` is false when the broker had no session.
    std::function<void(bool session_present)> on_connect;
    /// A connection after the first one (after a loss).
    std::function<void()> on_reconnect;
    /// Connected with no stored session at the broker (first start, or the broker forgot it);
    /// subscriptions are renewed and the outbox is sent again.
    std::function<void()> on_init;
    /// The connection was lost; the client reconnects by itself.
    std::function<void(const std::string& cause)> on_connection_lost;
    /// A publish was handed to Paho for sending.
    std::function<void(const std::string& topic, const std::string& payload)> on_packet_send;
    /// A publish arrived from the broker (before it is committed).
    std::function<void(const std::string& topic, const std::string& payload)> on_packet_receive;
    /// A handler is about to run for a message (every attempt).
    std::function<void(const message&)> on_message;
    /// A handler threw; the message is retried after `delay`.
    std::function<void(const message&, const std::string& error, std::chrono::milliseconds delay)> on_message_retry;
    /// A message could not be decoded; it went to dead letters.
    std::function<void(const message&, const std::string& error)> on_parse_error;
    /// A message went to dead letters (undecodable, or out of attempts).
    std::function<void(const message&, const std::string& reason)> on_dead_letter;
    /// A storage error that no caller could be told of (e.g. while removing a completed publish).
    std::function<void(const std::string& error)> on_storage_error;
    /// Log lines. Credentials never appear in them. When unset, the client writes them to stderr from
    /// the level log_level_from_env() gives (warnings and errors by default; XYMQTT_LOG_LEVEL=off: none).
    std::function<void(log_level, const std::string&)> on_log;
};

/// Everything a client needs. Only `client_id` and `store_dir` (or `store`) are required.
struct client_options {
    std::string server_uri = "tcp://127.0.0.1:1883";  ///< tcp://, ssl://, mqtt://, mqtts://
    /// Stable identity of this application at the broker; the session and the store belong to it.
    std::string client_id;
    std::string username;
    std::string password;
    std::optional<tls_options> tls;
    int mqtt_version = 5;                              ///< 5 (default) or 4 (= 3.1.1).
    std::chrono::seconds session_expiry{7 * 24 * 3600};///< MQTT 5 session expiry interval.
    std::chrono::seconds keep_alive{30};
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds reconnect_min{100};      ///< Reconnect backoff, doubling to max.
    std::chrono::milliseconds reconnect_max{5000};

    /// Directory of the built-in store (created 0700 if missing). Ignored when `store` is set.
    std::string store_dir;
    store_kind store_type = store_kind::lmdb;
    xymqtt::durability durability = durability::fsync;
    /// A store of your own; it must be used by this client only.
    std::shared_ptr<xymqtt::store> store;

    retry_policy retry;
    /// Most publishes handed to Paho and not yet completed; more wait in the outbox (on disk).
    std::size_t max_inflight = 4096;
    /// MQTT 5 receive maximum: most QoS 2 deliveries the broker may have in flight to this client. Each
    /// arriving message is committed before it is acknowledged, so a deep window buys little, and Paho
    /// searches its list of unreleased messages linearly for every packet, a list Mosquitto 2.0.11 lets
    /// grow past the window while it holds a backlog for this client.
    /// 0 (default): 1 with durability::fsync (2x the events of 8 once a backlog builds: a synced commit
    /// per message leaves nothing to pipeline) and 8 with durability::process (more calls per second).
    std::uint16_t receive_maximum = 0;
    /// How long a command server keeps each call's outcome to answer repeated invokes.
    std::chrono::seconds result_retention{7 * 24 * 3600};
    /// Where the results of this client's calls are sent (see result_routing); a call's own
    /// call_options::results overrides it.
    result_routing results = result_routing::shared;
    /// The first levels of the per-client result topics (result_routing::per_client).
    std::string results_prefix = "xymqtt/results";
    /// If set, the invoke of a call still unanswered after this long is sent again (then after twice as
    /// long, up to an hour), also by a restarted client: a broker killed hard may forget an invoke it had
    /// acknowledged. An xymqtt server answers a repeated invoke from its stored outcome, or leaves it to the
    /// copy it is running, so the handler runs once; an xy-mqtt server would run it again, so this is off
    /// by default. Keep it well above the handlers' running time: a copy that waits behind the first in a
    /// server's inbox is answered a second time, and the caller ignores that result.
    std::optional<std::chrono::milliseconds> resend_unanswered_after;
    /// Set TCP_NODELAY on the broker connection (Paho does not), cutting ~40 ms Nagle delays.
    bool tcp_nodelay = true;
    /// With tcp_nodelay: while messages arrive 8 or more per millisecond, let TCP coalesce Paho's
    /// acknowledgements (Nagle's algorithm), and set TCP_NODELAY again, which sends what it holds, within
    /// ~1 ms of the stream slowing. Needs this connection's socket told apart
    /// from other sockets of the process to the same broker; when it cannot be, TCP_NODELAY stays on.
    bool adaptive_nagle = true;
    /// Leave Paho C's own trace as it is. Paho records every function it enters and leaves into an
    /// in-memory trace under global locks, which costs ~18 % of a client's CPU,
    /// so by default constructing a client sets Paho's trace level to errors. Paho has one level per
    /// process. Nothing is changed when MQTT_C_CLIENT_TRACE or MQTT_C_CLIENT_TRACE_LEVEL is set.
    bool paho_trace = false;

    xymqtt::hooks hooks;
};

/// A record in the dead-letter table.
struct dead_letter {
    std::string id;
    stored_message record;
};

/// Counters, for tests, tools and monitoring.
struct client_stats {
    std::size_t outbox = 0;        ///< Publishes stored and not yet completed.
    std::size_t inbox = 0;         ///< Deliveries stored and not yet handled.
    std::size_t dead_letters = 0;
    std::uint64_t published = 0;   ///< Publishes completed since start.
    std::uint64_t delivered = 0;   ///< Deliveries committed since start.
    std::uint64_t handled = 0;     ///< Deliveries handled since start.
    std::uint64_t retries = 0;
    std::uint64_t nagle_streams = 0;  ///< Streams of arrivals that Nagle's algorithm was on for (adaptive_nagle).
    bool connected = false;
    /// Why the last connection attempt failed or the connection was lost ("" while connected):
    /// e.g. "connect to tcp://... failed: not authorized: bad user name or password".
    std::string last_error;
};

/// One figure of client::metrics(), in the form Prometheus and OpenTelemetry take.
struct metric {
    enum class kind { counter, gauge };
    std::string name;  ///< e.g. `xymqtt_published_total`; counters end in `_total`
    kind type;
    double value;
    std::string help;  ///< one line: what it counts
};

/// The durable MQTT client. See the file comment for its guarantees.
class client : public transport {
public:
    /// Opens the store and prepares the connection; nothing is sent until connect().
    /// @throw configuration_error for an empty client id, missing store, bad URI or MQTT version, or
    ///        result_routing::per_client under MQTT 3.1.1, with a client id or results prefix that cannot
    ///        be topic levels (a call that asks for per_client then throws it too).
    /// @throw storage_error if the store cannot be opened.
    explicit client(client_options opts);
    ~client() override;
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    /// Starts connecting (and reconnecting, forever, with backoff) in the background.
    void connect();
    /// Waits until connected. @return false on timeout.
    bool wait_connected(std::chrono::milliseconds timeout);
    /// @return true while connected.
    bool is_connected() const;
    /// Stops handlers, disconnects and closes. Pending futures fail with client_closed; everything
    /// stored stays stored.
    void close();

    std::future<void> publish(const std::string& topic, std::string payload, publish_options opts = {}) override;
    /// Like publish, with the same guarantees, but without a completion future: nothing is kept in memory
    /// for the message once it is stored, so millions can wait in the outbox (on disk) in constant memory.
    /// Watch completion through stats().outbox or wait_outbox_empty(); storage errors go to
    /// hooks::on_storage_error.
    /// @throw invalid_topic before anything is stored.
    void post(const std::string& topic, std::string payload, publish_options opts = {});
    subscription_id subscribe(const std::string& filter, message_handler handler) override;
    void unsubscribe(subscription_id id) override;
    /// Removes every handler of `filter` and unsubscribes it at the broker.
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

    /// @return the dead letters, oldest first.
    std::vector<dead_letter> dead_letters() const;
    /// Moves a dead letter back to the inbox, to be handled again. @return false if `id` is unknown.
    bool replay_dead_letter(const std::string& id);
    /// Deletes a dead letter. @return false if `id` is unknown.
    bool purge_dead_letter(const std::string& id);

    /// Waits until every stored publish has completed. @return false on timeout.
    bool wait_outbox_empty(std::chrono::milliseconds timeout);
    /// Waits until every stored delivery has been handled. @return false on timeout.
    bool wait_inbox_empty(std::chrono::milliseconds timeout);

    client_stats stats() const;
    /// The client's counters (since it was constructed) and gauges (now), for a Prometheus collector or
    /// an OpenTelemetry observable callback to read whenever it is asked; each call is a fresh snapshot.
    /// Names carry no client id: an adapter adds options().client_id as a label.
    std::vector<metric> metrics() const;
    const client_options& options() const;

    class impl;

private:
    std::unique_ptr<impl> impl_;
};

/// @return a new unique message id (128 random bits, hex).
std::string make_message_id();

}  // namespace xymqtt
