// The session: the connection to the broker through Paho, and the only part of the client that speaks to
// Paho. It connects and reconnects (every server in turn, with backoff), keeps the MQTT session (a stable
// client id, no clean start), subscribes the client's filters on every connection, carries the outbox's
// publishes, and takes arrivals in before their acknowledgement leaves.
//
// Guarantees:
//  - An arrival is acknowledged only if the host has stored it: when `session_host::arrived` says it is
//    not stored, the connection is cut before the acknowledgement can leave (Paho sends it whatever its
//    callback does), and the broker sends the message again on the next connection, after a hold-off.
//    With grouped arrivals (groups_arrivals), the acknowledgement waits in the session's ack_gate until
//    the host's queued commit is durable (session_host::arrived_later), and a refusal cuts it there.
//  - A QoS 2 message the broker sends again, whose first copy an earlier connection stored, is
//    acknowledged without reaching the host twice (paho_persistence.h).
//  - Every filter the host names is subscribed again on every connection, before any publish goes out on
//    it; a SUBSCRIBE that fails on a live connection is retried with backoff; a refused connect or a lost
//    connection is retried for as long as the client is open. None of these ever stops the client.
//  - A resumed publish that the broker ends every connection at (stuck_flows.h) is given up to the host
//    (a dead letter), so that what waits behind it goes.
//  - Completions of publishes are reported once, for the connection they were made on (`via`): a report of
//    an earlier connection's Paho client can be told apart (`is_current`).
//  - A Paho client whose memory Paho corrupted (a failed publish) is never destroyed.
//  - One connection thread, owned by the session; the hooks and the host are called without its lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "session/arrivals.h"
#include "session/connect_gate.h"
#include "session/connection_socket.h"
#include "session/connector.h"
#include "session/paho_clients.h"
#include "session/session_host.h"
#include "session/stuck_flows.h"
#include "xymqtt/client_options.h"
#include "xymqtt/store.h"

namespace xymqtt::detail {

class ack_gate;
class publish_listener;
class paho_persistence;

class session {
public:
    /// Why the session did not take a publish.
    enum class refusal { none, disconnected, buffer_full, other };
    struct publish_result {
        std::size_t taken = 0;  ///< the first `taken` publishes went out
        refusal why = refusal::none;
    };

    /// Checks the options that concern the connection (server URIs, TLS). @throw configuration_error.
    static void check(const client_options& opts) { connector::servers_of(opts); }
    /// @return whether arrivals are committed in groups, their acknowledgements held in an ack_gate: MQTT 5,
    ///         durability fsync, plain TCP, and client_options::group_arrivals.
    static bool groups_arrivals(const client_options& opts, const store& s);
    /// Checks the options (as `check`) and prepares the connection; nothing connects yet.
    /// @throw configuration_error for options that cannot work.
    /// @param opts the client's options (read only, outliving the session)
    session(session_host& host, const client_options& opts, store& s);
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session();

    /// Starts the connection thread (not connecting until `connect`).
    void start();
    /// Connects, and keeps connecting until `stop`.
    void connect();
    bool wait_connected(std::chrono::milliseconds timeout);
    bool is_connected() const;
    /// Stops reconnecting and joins the connection thread.
    void stop();
    /// Disconnects from the broker (after `stop`).
    void disconnect();
    /// Lets go of the Paho clients: no callback reaches the host after this (after `disconnect`).
    void release();

    // -- subscriptions
    /// Calls `open` under the session's lock; if it returns true and the session is connected, subscribes
    /// `filter` now (else the next connection does), so that a connection made meanwhile cannot miss it nor
    /// subscribe it twice.
    void subscribe(const std::string& filter, const std::function<bool()>& open);
    /// Unsubscribes `filter` now, or at the next connection if offline.
    void unsubscribe(const std::string& filter);
    /// @return whether the broker takes MQTT 5 subscription identifiers.
    bool subscription_ids() const { return subscription_ids_; }

    // -- publishing
    /// Hands the publishes to Paho through `via` (nullptr: the current connection), in order, up to the
    /// first refusal. Their completions come through session_host::delivered and send_failed.
    publish_result publish(const std::vector<std::pair<std::uint64_t, const stored_message*>>& msgs, const void* via);
    bool is_current(const void* via) const { return clients_.is_current(via); }
    /// @return false while another client of the process is connecting and needs this one to hold back.
    bool may_send() const { return !connect_gate::process().closed_to(&gate_member_); }
    /// Nothing of this client may be in flight any more: a client waiting at the connect gate may go on.
    void maybe_drained();

    // -- state
    std::string server_uri() const { return connector_.servers()[server_.load()].uri; }
    std::string last_error() const;
    /// @return the messages taken in (stored) so far.
    std::uint64_t delivered() const { return arrivals_.delivered(); }
    std::size_t nagle_streams() const;

private:
    class gate_member : public connect_gate::member {
    public:
        explicit gate_member(session& s) : s_(s) {}
        bool drained() const override { return s_.host_.drained(); }
        void resume() override { s_.host_.resume(); }

    private:
        session& s_;
    };

    void connection_loop();
    /// A new Paho client for the next connection (see the .cpp for why).
    void fresh_paho();
    /// One connect attempt to the current server. @return whether it is connected.
    bool connect_once();
    /// While a connect is in progress, every 10 ms: another client of the process wakes Paho (paho_waker.h).
    void wake_paho_soon();
    void note_connect_failure(const std::string& line, log_level level);
    void on_connected(bool session_present, std::size_t window, std::uint32_t max_packet_size);
    void on_connection_lost(const std::string& cause);
    /// Between Paho clients: gives up a resumed flow that the broker ended every recent connection at.
    void give_up_stuck_flow();
    /// An arrival could not be stored: its acknowledgement must not leave.
    void refuse_arrival(const std::string& why);
    /// Cuts the current connection so that nothing more, such as an acknowledgement, leaves on it.
    void cut_connection(const std::string& why);
    void subscribe_now(const std::string& filter, std::chrono::milliseconds retry_in = {});
    void on_subscribe_failed(const std::string& filter, const void* via, std::chrono::milliseconds retry_in);
    void log(log_level level, const std::string& text) const;
    template <class F, class... A>
    void fire(const F& hook, A&&... args) const;

    session_host& host_;
    const client_options& opts_;
    store& store_;
    std::unique_ptr<paho_persistence> persistence_;
    std::unique_ptr<ack_gate> gate_;  // with groups_arrivals: Paho's connection runs through it
    arrivals arrivals_;
    connector connector_;                    // the servers, the CONNECT, the CONNACK
    std::unique_ptr<publish_listener> listener_;
    gate_member gate_member_{*this};
    // The broker in use or being tried: read without a lock by the threads that cut connections.
    std::atomic<std::size_t> server_{0};
    connection_socket socket_;  // the current connection's own socket
    paho_clients clients_;      // a fresh one for every connection (see fresh_paho)

    mutable std::mutex mu_;
    std::condition_variable conn_cv_, state_cv_;
    bool want_connect_ = false;
    bool connected_ = false;
    bool ever_connected_ = false;
    std::chrono::milliseconds hold_off_{0};  // before the next connect: arrivals are being refused
    std::string last_error_;
    std::set<std::string> pending_unsubscribes_;  // filters removed while offline
    stuck_flows stuck_{stuck_flows::settings{}};
    std::map<int, std::size_t> resuming_;          // the current Paho client's resumed publishes, by packet id
    std::atomic<std::uint64_t> completed_{0};      // publishes completed (progress, for stuck_)
    std::atomic<bool> stopping_{false};
    std::atomic<bool> waking_{false};  // a connect is in progress: wake_paho_soon goes on
    std::atomic<bool> subscription_ids_{false};  // the broker takes MQTT 5 subscription identifiers
    std::thread thread_;
};

}  // namespace xymqtt::detail
