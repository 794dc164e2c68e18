/// @file client_options.h
/// Everything a client is constructed with: broker, identity, store, retries, limits and hooks.
///
/// Only `client_id` and `store_dir` (or `store`) are required; every other option has a default that
/// keeps the client's delivery guarantees. The client id is the application's stable identity at the
/// broker: the persistent session and the store belong to it, so it must not change between runs.
/// The client checks the options when it is constructed (see client::client).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xymqtt/hooks.h"
#include "xymqtt/retry_policy.h"
#include "xymqtt/store.h"
#include "xymqtt/tls_options.h"
#include "xymqtt/transport.h"

namespace xymqtt {

/// Everything a client needs. Only `client_id` and `store_dir` (or `store`) are required.
struct client_options {
    std::string server_uri = "tcp://127.0.0.1:1883";  ///< tcp://, ssl://, mqtt://, mqtts://
    /// Several brokers (the nodes of a cluster, or a standby), used instead of `server_uri` when not
    /// empty. A connection attempt goes to the URI in use (the first at the start); when it fails, or the
    /// broker lacks a capability the runtime needs, the next URI is tried at once, and only after every
    /// URI has failed in turn does the client wait (reconnect backoff). The client stays with the URI
    /// that answered until that connection is lost. hooks::on_server and client_stats::server_uri tell
    /// which one is in use. A broker that does not share the session (not a cluster) gives the client a
    /// new session there: subscriptions are renewed and unfinished publishes sent again (at least once).
    std::vector<std::string> server_uris;
    /// Stable identity of this application at the broker; the session and the store belong to it.
    std::string client_id;
    std::string username;                              ///< User name for the broker; empty = none.
    std::string password;                              ///< Password for the broker; empty = none.
    /// TLS settings, for ssl:// and mqtts:// URIs (unset: the defaults of tls_options). Set with a
    /// tcp:// or mqtt:// URI, the client's constructor throws configuration_error.
    std::optional<tls_options> tls;
    int mqtt_version = 5;                              ///< 5 (default) or 4 (= 3.1.1).
    std::chrono::seconds session_expiry{7 * 24 * 3600};///< MQTT 5 session expiry interval.
    std::chrono::seconds keep_alive{30};               ///< MQTT keep-alive interval.
    std::chrono::milliseconds connect_timeout{5000};   ///< How long one connection attempt may take.
    std::chrono::milliseconds reconnect_min{100};      ///< Reconnect backoff, doubling to max.
    std::chrono::milliseconds reconnect_max{5000};     ///< Longest reconnect backoff.

    /// Directory of the built-in store (created 0700 if missing). Ignored when `store` is set.
    std::string store_dir;
    store_kind store_type = store_kind::lmdb;          ///< Which built-in store opens `store_dir`.
    xymqtt::durability durability = durability::fsync; ///< What a commit of the built-in store survives.
    /// A store of your own; it must be used by this client only.
    std::shared_ptr<xymqtt::store> store;

    retry_policy retry;                                ///< Retry of handlers that throw.
    /// Most publishes handed to Paho and not yet completed; more wait in the outbox (on disk). The outbox
    /// also keeps at most half the broker's receive maximum in flight (below).
    std::size_t max_inflight = 4096;
    /// MQTT 3.1.1 only: how many QoS 2 publishes from one client the broker keeps in flight (Mosquitto:
    /// `max_inflight_messages`, 20 unless configured). An MQTT 5 broker announces this (Receive Maximum)
    /// and this setting is ignored; a 3.1.1 broker cannot. Set it to the broker's figure, never above:
    /// Mosquitto 2.0 queues a client's publishes beyond its limit, and when a reconnected client sends a
    /// queued one again it acknowledges it at once and never delivers it. The outbox keeps at most half
    /// of it in flight, as under MQTT 5.
    std::uint16_t broker_receive_maximum_311 = 20;
    /// MQTT 3.1.1 only: the largest packet the broker takes (Mosquitto: `max_packet_size`), 0 (default) if
    /// unknown. An MQTT 5 broker announces it (Maximum Packet Size) and this setting is ignored; a 3.1.1
    /// broker drops the connection of a client that sends a larger one, and the outbox would send that
    /// record first again on every connection, blocking everything behind it. Set, publish() throws
    /// message_too_large for a larger message, and a larger call's invoke or a message stored earlier
    /// becomes a dead letter instead of being sent (the call fails), as under MQTT 5.
    std::uint32_t broker_maximum_packet_size_311 = 0;
    /// MQTT 5 receive maximum: most QoS 2 deliveries the broker may have in flight to this client. Each
    /// arriving message is committed before it is acknowledged, so a deep window buys little, and Paho
    /// searches its list of unreleased messages linearly for every packet, a list Mosquitto 2.0.11 lets
    /// grow past the window while it holds a backlog for this client.
    /// 0 (default): 8, or 1 with durability::fsync when arrivals are not grouped (group_arrivals: a synced
    /// commit per message in Paho's callback leaves nothing to pipeline).
    std::uint16_t receive_maximum = 0;
    /// MQTT 5 over plain TCP with durability::fsync: arriving messages are committed in groups, one sync
    /// for all that arrived meanwhile. Paho's connection then runs through an in-process relay on
    /// 127.0.0.1 that holds each message's acknowledgement (PUBACK, PUBREC, PUBCOMP) until its commit is
    /// durable, and everything Paho sends after it. false, and always over TLS or MQTT 3.1.1: each message
    /// is committed in Paho's callback, one synced commit and one broker round trip per message.
    bool group_arrivals = true;
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
    /// Run the lanes of event subscriptions (subscribe(), and the generated subscribe), whose threads run
    /// their handlers, under Linux's SCHED_BATCH policy. A lane woken for a message then does not preempt
    /// Paho's receive thread, which goes on reading and acknowledging, and takes what arrived meanwhile in
    /// one go: in a stream of small events about half the subscriber's context switches and a sixth of its
    /// CPU per message. A lane's share of the CPU is unchanged; on a machine with no idle core a handler may
    /// start up to a scheduler time slice later (a few ms). Threads that a handler starts inherit the
    /// policy. Lanes of command servers and of call results keep the policy of the thread that registered
    /// them, as all lanes do when this is false: a caller waits on those.
    bool batch_lanes = true;

    xymqtt::hooks hooks;                               ///< Callbacks; all optional.
};

}  // namespace xymqtt
