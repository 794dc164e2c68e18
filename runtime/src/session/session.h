// The session: the connection to the broker through Paho, and the only part of the client that speaks to
// Paho. It connects and reconnects (every server in turn, with backoff), keeps the MQTT session (a stable
// client id, no clean start), subscribes the client's filters on every connection, carries the outbox's
// publishes, and takes arrivals in before their acknowledgement leaves.
//
// Guarantees:
//  - An arrival is acknowledged only if the host has stored it: when `session_host::arrived` says it is
//    not stored, the connection is cut before the acknowledgement can leave (Paho sends it whatever its
//    callback does), and the broker sends the message again on the next connection, after a hold-off.
//  - A QoS 2 message the broker sends again, whose first copy an earlier connection stored, is
//    acknowledged without reaching the host twice (paho_persistence.h).
//  - Every filter the host names is subscribed again on every connection, before any publish goes out on
//    it; a SUBSCRIBE that fails on a live connection is retried with backoff; a refused connect or a lost
//    connection is retried for as long as the client is open. None of these ever stops the client.
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
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "session/connect_gate.h"
#include "session/tcp_nodelay.h"
#include "xymqtt/client_options.h"
#include "xymqtt/store.h"

namespace mqtt {
class async_client;
class iasync_client;
class connect_options_builder;
class message;
}  // namespace mqtt

namespace xymqtt::detail {

class ca_bundle;
class nagle_governor;
class paho_persistence;

/// What the session needs from its client: the outbox, the inbox and the command protocol behind it.
class session_host {
public:
    virtual ~session_host() = default;

    // -- the outbox's side of a connection
    /// A new Paho client: see outbox::new_client.
    virtual void new_client(const std::map<int, std::uint64_t>& resumable,
                            const std::function<bool(int, const stored_message&)>& carries) = 0;
    virtual void connecting() = 0;
    virtual void connect_returned(bool session_present) = 0;
    virtual void connect_failed() = 0;
    /// Connected, with room for `window` publishes in flight and the broker's maximum packet size (0: none).
    virtual void connected(std::size_t window, std::uint32_t max_packet_size) = 0;
    virtual void lost() = 0;
    /// Publish `seq` completed, or failed; `via`: the Paho client of its connection.
    virtual void delivered(std::uint64_t seq, int reason_code, const void* via) = 0;
    virtual void send_failed(std::uint64_t seq, int rc, int reason_code, const void* via) = 0;
    /// A flow the new Paho client resumed from the store ended.
    virtual void resumed_complete(int packet_id) = 0;
    /// @return whether nothing of the client is in flight (for the process's connect gate).
    virtual bool drained() const = 0;
    /// Another client's connect is over: the outbox may send again.
    virtual void resume() = 0;

    // -- the inbox's side
    /// @return the filters to subscribe (the live lanes), and whether `filter` is still one.
    virtual std::vector<std::string> filters() const = 0;
    virtual bool wants(const std::string& filter) const = 0;
    /// A message arrived (on Paho's receive thread, with Paho's process-wide lock held). The host commits it,
    /// calls `stored` at once once committed, then hands it on. @return nothing once it is stored, else why
    /// it could not be (its acknowledgement must not leave).
    virtual std::optional<std::string> arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                               const std::function<void()>& stored) = 0;
    /// @return the MQTT 5 subscription identifier of `filter` (the same the inbox routes by).
    virtual std::uint32_t subscription_identifier(const std::string& filter) const = 0;
    /// The broker answered the SUBSCRIBE of `filter` with `reason_code` (refused from 0x80).
    virtual void subscription_answered(const std::string& filter, int reason_code) = 0;

    /// Runs `fn` at `at`, on the client's timer thread.
    virtual void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) = 0;
};

class session {
public:
    /// Why the session did not take a publish.
    enum class refusal { none, disconnected, buffer_full, other };
    struct publish_result {
        std::size_t taken = 0;  ///< the first `taken` publishes went out
        refusal why = refusal::none;
    };

    /// Checks the options that concern the connection (server URIs, TLS). @throw configuration_error.
    static void check(const client_options& opts) { servers_of(opts); }
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
    bool is_current(const void* via) const { return via && via == current_.load(); }
    /// @return false while another client of the process is connecting and needs this one to hold back.
    bool may_send() const { return !connect_gate::process().closed_to(&gate_member_); }
    /// Nothing of this client may be in flight any more: a client waiting at the connect gate may go on.
    void maybe_drained();

    // -- state
    std::string server_uri() const { return servers_[server_.load()].uri; }
    std::string last_error() const;
    /// @return the messages taken in (stored) so far.
    std::uint64_t delivered() const { return delivered_; }
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
    struct lacks : std::runtime_error {  // the broker lacks a capability the runtime needs
        using std::runtime_error::runtime_error;
    };
    struct server {
        std::string uri, host;
        int port = 0;
        bool tls = false;
    };
    /// @throw configuration_error for a URI that is not one, or plain MQTT with TLS settings.
    static std::vector<server> servers_of(const client_options& opts);
    class listener;
    class sub_listener;

    void connection_loop();
    /// A new Paho client for the next connection (see the .cpp for why).
    void fresh_paho();
    std::shared_ptr<mqtt::async_client> paho() const;
    void check_broker(const void* connack_properties);  // throws lacks
    void note_connect_failure(const std::string& line, log_level level);
    void on_connected(bool session_present, std::size_t window, std::uint32_t max_packet_size);
    void on_connection_lost(const std::string& cause);
    void on_arrived(const mqtt::message& msg);
    /// An arrival could not be stored: its acknowledgement must not leave.
    void refuse_arrival(int packet_id, int qos, const std::string& why);
    /// Cuts the current connection so that nothing more, such as an acknowledgement, leaves on it.
    void cut_connection(const std::string& why);
    void subscribe_now(const std::string& filter, std::chrono::milliseconds retry_in = {});
    void on_subscribe_failed(const std::string& filter, const void* via, std::chrono::milliseconds retry_in);
    void taint(const void* via);
    void keep_tainted();
    void log(log_level level, const std::string& text) const;
    template <class F, class... A>
    void fire(const F& hook, A&&... args) const;

    session_host& host_;
    const client_options& opts_;
    store& store_;
    std::unique_ptr<paho_persistence> persistence_;
    std::unique_ptr<nagle_governor> nagle_;  // with tcp_nodelay and adaptive_nagle
    std::unique_ptr<ca_bundle> ca_bundle_;   // tls_options::ca_path as one file, for Paho
    std::unique_ptr<mqtt::connect_options_builder> conn_builder_;
    std::unique_ptr<listener> listener_;
    gate_member gate_member_{*this};
    // The brokers to connect to, fixed at construction, and the one in use or being tried: read without a
    // lock by the threads that cut connections.
    std::vector<server> servers_;
    std::atomic<std::size_t> server_{0};

    mutable std::mutex cli_mu_;
    std::atomic<const void*> current_{nullptr};  // cli_, for comparisons without cli_mu_
    std::shared_ptr<mqtt::async_client> cli_;    // replaced at every connection (see fresh_paho)
    std::vector<std::shared_ptr<mqtt::async_client>> retired_;  // disconnected, destroyed at release()
    std::mutex taint_mu_;  // not cli_mu_: destroying a Paho client under cli_mu_ fails its tokens
    std::set<const void*> tainted_;  // never destroyed (keep_tainted)
    std::mutex own_mu_;
    peer_socket own_socket_;  // the current connection's socket, once claimed (see on_connected)
    std::mutex tls_error_mu_;  // not mu_: Paho calls the TLS error handler on its own threads
    std::string tls_error_;    // OpenSSL's reason for the last refused handshake

    mutable std::mutex mu_;
    std::condition_variable conn_cv_, state_cv_;
    bool want_connect_ = false;
    bool connected_ = false;
    bool ever_connected_ = false;
    std::chrono::milliseconds hold_off_{0};  // before the next connect: arrivals are being refused
    std::string last_error_;
    std::set<std::string> pending_unsubscribes_;  // filters removed while offline
    std::atomic<bool> stopping_{false};
    std::atomic<bool> subscription_ids_{false};  // the broker takes MQTT 5 subscription identifiers
    std::atomic<std::uint64_t> delivered_{0};
    std::thread thread_;
};

}  // namespace xymqtt::detail
