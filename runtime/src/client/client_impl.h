// The client's machinery: connection, outbox, inbox lanes, and (commands.cpp) the command protocol.
#pragma once

#include <mqtt/async_client.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "commands/call_core.h"
#include "commands/worker_pool.h"
#include "inbox/routes.h"
#include "outbox/committer.h"
#include "outbox/send_queue.h"
#include "session/ca_bundle.h"
#include "session/connect_gate.h"
#include "session/nagle_governor.h"
#include "session/paho_persistence.h"
#include "xymqtt/client.h"

namespace xymqtt {

namespace wire {
struct outgoing;
}

class client::impl {
public:
    explicit impl(client_options opts);
    ~impl();

    // connection
    void connect();
    bool wait_connected(std::chrono::milliseconds timeout);
    bool is_connected() const;
    void close();

    // events
    std::future<void> publish(const std::string& topic, std::string payload, publish_options opts);
    void post(const std::string& topic, std::string payload, publish_options opts,
              std::shared_ptr<std::promise<void>> prom);
    /// @param concurrency deliveries of the lane whose handlers may be at work at once (see effects::later)
    subscription_id add_handler(const std::string& filter, lane_handler handler, unsigned concurrency = 1);
    void remove_handler(subscription_id id);
    void remove_filter(const std::string& filter);
    bool remove_result_handler(subscription_id id);

    // commands (commands.cpp)
    void command_register(const std::string& command, command_handler handler, command_options opts);
    void command_register(const std::string& command, deferred_command_handler handler, command_options opts);
    void command_unregister(const std::string& command);
    subscription_id subscribe_results(const std::string& command, result_handler handler,
                                      std::optional<result_routing> routing);
    call_handle call(const std::string& command, std::string body, call_options opts);
    call_handle call_async(const std::string& command, std::string body, call_options opts,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done);

    // inspection
    std::vector<dead_letter> dead_letters() const;
    bool replay_dead_letter(const std::string& id);
    bool purge_dead_letter(const std::string& id);
    bool wait_outbox_empty(std::chrono::milliseconds timeout);
    bool wait_inbox_empty(std::chrono::milliseconds timeout);
    client_stats stats() const;
    std::vector<metric> metrics() const;

    client_options opts_;

private:
    using lane = detail::lane;
    /// How a command's calls run: one of the handlers, and the command's threads if it has any.
    struct command_runner {
        std::shared_ptr<const command_handler> sync;
        std::shared_ptr<const deferred_command_handler> deferred;
        std::shared_ptr<detail::worker_pool> workers;  // sync with concurrency > 1
    };
    /// Lets deferred answers in until close(), which then waits for those under way.
    class answer_gate {
    public:
        bool enter() {
            std::lock_guard<std::mutex> lk(mu_);
            if (closed_) return false;
            ++inside_;
            return true;
        }
        void leave() {
            std::lock_guard<std::mutex> lk(mu_);
            --inside_;
            cv_.notify_all();
        }
        void close() {
            std::unique_lock<std::mutex> lk(mu_);
            closed_ = true;
            cv_.wait(lk, [&] { return inside_ == 0; });
        }

    private:
        std::mutex mu_;
        std::condition_variable cv_;
        bool closed_ = false;
        int inside_ = 0;
    };
    struct command_entry {
        subscription_id invoke_sub = 0, cancel_sub = 0;
        std::shared_ptr<detail::worker_pool> workers;  // concurrency > 1: its handlers' threads
    };

    // -- helpers
    void log(log_level level, const std::string& text) const;
    template <class F, class... A>
    void fire(const F& hook, A&&... args) const;
    std::int64_t now_ms() const;
    void require_open() const;

    // -- connection
    /// This client as a member of the process's connect gate (connect_gate.h).
    class gate_member : public detail::connect_gate::member {
    public:
        explicit gate_member(impl& c) : c_(c) {}
        bool drained() const override;
        void resume() override;

    private:
        impl& c_;
    };
    gate_member gate_member_{*this};
    /// Wakes a client waiting at the connect gate if this one has just drained. Call without mu_.
    void notify_gate();
    void connection_loop();
    // A broker that lacks a capability the runtime needs (broker_capabilities.h): refused like a failed
    // connect, and the next server is tried.
    struct broker_lacks : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    void check_broker(const mqtt::properties& connack);  // throws broker_lacks
    void note_connect_failure(const std::string& line, log_level level);  // last_error, logged once
    void on_connected(bool session_present);
    void on_connection_lost(const std::string& cause);
    /// @param retry_in delay before a retry if this SUBSCRIBE fails (0: reconnect_min)
    void subscribe_at_broker(const std::string& filter, std::chrono::milliseconds retry_in = {});
    /// A SUBSCRIBE failed on `cli`'s connection: retried by the runtime, never left failed.
    void on_subscribe_failed(const std::string& filter, const mqtt::iasync_client* cli, std::chrono::milliseconds retry_in);
    /// Cuts the current connection so that nothing more, such as an acknowledgement, leaves on it.
    void cut_connection(const std::string& why);
    void unsubscribe_at_broker(const std::string& filter);

    // -- outbox
    struct stored_publish {
        std::uint64_t seq;
        std::shared_ptr<stored_message> msg;
        write_op op;
    };
    stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                bool retain, const std::string& kind);
    void submit_publish(stored_publish pub, std::shared_ptr<std::promise<void>> prom);
    void commit_publishes(std::vector<write_op> ops, std::vector<stored_publish> pubs);
    /// A publish is stored: queues it for the sender. `send_here`: the caller's commit has returned (no
    /// commit's `done` is running on this thread), so a lone publish may be handed to Paho from here.
    void on_stored(std::uint64_t seq, std::shared_ptr<stored_message> msg, bool send_here = false);
    /// mu_ held. @return whether the sender thread should run now.
    bool sender_has_work() const;
    /// @return outbox record `seq` read from the store, or nullptr if it is gone. @throw storage_error.
    std::shared_ptr<stored_message> read_outgoing(std::uint64_t seq) const;
    /// @return true if Paho's flow under `packet_id` is outbox record `seq` (`msg`, or read from the store).
    bool resumes(int packet_id, std::uint64_t seq, std::shared_ptr<stored_message> msg) const;  ///< mu_ held: this client's publishes in flight and the flows Paho resumes
    void sender_loop();
    enum class send_outcome {
        sent,   ///< Paho took the whole batch
        held,   ///< Paho refused: sending waits for a completion or a connection (or it was the old one's)
        pause,  ///< Paho refused otherwise: try again after a pause
    };
    /// Hands Paho the next batch of what waits to be sent: one thread at a time (dispatching_), in outbox
    /// order. Called with `lk` (mu_) held, released while Paho is called. @param from the Paho client to
    /// publish with, from inside its callback; nullptr: the current one.
    send_outcome dispatch(std::unique_lock<std::mutex>& lk, mqtt::iasync_client* from);
    // dispatch's steps: take_batch (mu_ held) moves what the window allows in flight (sendq_), publish_batch
    // (mu_ not held) hands it to Paho, settle_batch (mu_ held) requeues what Paho refused.
    struct send_item {
        std::uint64_t seq = 0;
        std::shared_ptr<stored_message> msg;
        bool sent = false;
        bool gone = false;  // its outbox record could not be read: nothing to send
        bool too_large = false;  // over the broker's maximum packet size: a dead letter, not sent
    };
    std::vector<send_item> take_batch();
    int publish_batch(std::vector<send_item>& batch, mqtt::iasync_client* cli);
    send_outcome settle_batch(std::vector<send_item>& batch, int refused_rc, std::uint64_t gen);
    /// A publish completed. `from`: the Paho client whose callback this is, if any (a batch may then be
    /// handed to it on its callback thread).
    void on_delivered(std::uint64_t seq, int reason_code, mqtt::iasync_client* from = nullptr);
    void on_send_failed(std::uint64_t seq, int rc, int reason_code, const mqtt::iasync_client* from = nullptr);
    /// The broker refused a publish for good: a dead letter (and, for an invoke, a local reject).
    void refuse(std::uint64_t seq, int reason_code, const std::string& why = {});
    /// The broker refused a publish for now (busy, quota): sent again after a backoff.
    void refuse_for_now(std::uint64_t seq, int reason_code);
    std::shared_ptr<mqtt::message> to_paho(const stored_message& m) const;

    // -- inbox
    void on_arrived(mqtt::const_message_ptr msg);
    /// Commits an arrival inside Paho's callback: a few quick tries, since Paho holds its process-wide
    /// lock meanwhile. @return false if it was not stored.
    bool commit_arrival(const std::vector<write_op>& ops);
    /// An arrival could not be stored: its acknowledgement must not leave (see on_arrived).
    void refuse_arrival(int packet_id, int qos, const std::string& why);
    void commit_until_stored(const std::vector<write_op>& ops, detail::urgency u = detail::urgency::now);
    void lane_loop(lane* l);
    void process(lane* l, const std::string& id, stored_message rec,
                 std::vector<std::pair<subscription_id, lane_handler>> handlers);
    /// A delivery handled: commits its effects with its removal from the inbox.
    void complete(lane* l, const std::string& id, effects fx);
    /// Marks the calling thread as running this client's handlers (close() from one must not join it).
    void mark_handler_thread();
    void dead_letter_record(const std::string& id, stored_message rec, const std::string& reason, bool parse);
    /// @return inbox record `id` as the handlers see it on attempt `attempt`.
    static message message_of(const std::string& id, const stored_message& rec, std::uint32_t attempt);
    /// @return the inbox records of a message: one per matching lane (or one parked), with new ids.
    /// @param sub_ids the MQTT 5 subscription identifiers the copy carries (see subscribe_at_broker)
    std::vector<std::pair<std::string, stored_message>> inbox_records(stored_message rec,
                                                                      const std::vector<std::uint32_t>& sub_ids = {});

    // -- commands (commands.cpp)
    void register_command(const std::string& command, command_runner run, const command_options& opts);
    void serve_invoke(const std::string& command, const command_runner& run, const message& m, effects& fx);
    /// Runs a command's handler and adds its outcome (or the record of its cancel) to `fx`.
    void run_call(const std::string& command, const command_handler& handler, const invocation& call,
                  const std::shared_ptr<detail::running_call>& ctx, effects& fx);
    /// Adds a call's outcome, `result` or `error` (or the record of its cancel), to `fx`.
    void conclude_call(const std::string& command, const invocation& call, const std::shared_ptr<detail::running_call>& ctx,
                       std::exception_ptr error, const std::string& result, effects& fx);
    /// The publish of an outcome: to where the invoke asks (outcome_topic), with its correlation data.
    stored_publish make_outcome(const std::string& command, const char* kind, wire::outgoing out,
                                const std::string& message_id, const message_properties& invoke);
    /// Adds a resolve or reject to `fx`: the publish, and the stored copy that answers a repeated invoke.
    void publish_outcome(const std::string& command, const char* kind, wire::outgoing out,
                         const std::string& message_id, const message_properties& invoke, effects& fx);
    /// Where the outcome of an invoke goes: its Response Topic followed by `/resolve` or `/reject` if it
    /// names a valid one, else the command's shared topic.
    std::string outcome_topic(const std::string& command, bool rejected, const message_properties& invoke,
                              const std::string& message_id) const;
    /// A result on this client's own result topics (`<root>/<command>/resolve|reject`).
    void handle_routed_result(const message& m, effects& fx);
    /// @return the command of a topic of this client's own result topics, `<root>/<command>/resolve|reject`,
    ///         and whether it is a reject; nothing for any other topic.
    std::optional<std::pair<std::string, bool>> routed_result_topic(const std::string& topic) const;
    /// The broker's answer to the SUBSCRIBE of this client's result topics: a refusal fails the calls
    /// awaited and refuses new ones (broker_error) until a later SUBSCRIBE is granted.
    void on_results_subscription(int reason_code);
    void serve_cancel(const std::string& command, const message& m, effects& fx);
    void handle_result(const std::string& command, bool rejected, const message& m, effects& fx);
    /// @return the result in `rec`, an arrival bound for one of this client's result lanes (and no other
    ///         lane), if a call_async of this client awaits it: on_arrived answers it at once, without the
    ///         inbox and the lane (on_arrived_result).
    std::optional<command_result> awaited_result(const stored_message& rec);
    /// Hands an awaited result to its caller, once the removal of its call record is committed.
    void on_arrived_result(const std::string& id, const stored_message& rec, const command_result& r);
    void ensure_results_lane(const std::string& command, result_routing routing);
    /// @return `routing`, or the client's default. @throw configuration_error if it is per_client and this
    /// client cannot have per-client result topics (MQTT 3.1.1, a client id that is no topic level).
    result_routing routing_of(std::optional<result_routing> routing) const;
    bool has_result_subscription(const std::string& command, result_routing routing) const;
    // `routing`: routing_of(opts.results), resolved once by the caller.
    std::string start_call(const std::string& command, std::string body, const call_options& opts,
                           result_routing routing, call_completion awaiting);
    call_handle make_handle(const std::string& command, const std::string& id, wire_format format);
    /// Removes and returns the completion of a call awaited by call_async, or an empty one. Takes mu_.
    call_completion take_awaiting(const std::string& id);
    /// @return whether call_async awaits the result of call `id`. Takes mu_.
    bool awaits(const std::string& id) const;
    void cancel_call(const std::string& command, const std::string& message_id, wire_format format);
    /// Sends the invoke of call `id` again after `after` if it is still unanswered, and so on, doubling
    /// (client_options::resend_unanswered_after).
    void schedule_resend(const std::string& id, std::chrono::milliseconds after);
    /// Schedules that for every call a previous run left unanswered.
    void resume_resends();
    void timer_loop();
    void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn);
    void purge_expired_results();

    // -- state
    std::shared_ptr<store> store_;
    std::unique_ptr<detail::paho_persistence> persistence_;
    std::unique_ptr<detail::nagle_governor> nagle_;  // with tcp_nodelay and adaptive_nagle
    std::unique_ptr<detail::committer> committer_;
    std::shared_ptr<mqtt::async_client> paho() const;
    void fresh_paho();
    void taint_paho(const mqtt::iasync_client* cli);  // from listener::on_failure
    void keep_tainted_paho();
    void on_resumed_complete(int packet_id);
    mutable std::mutex cli_mu_;
    std::atomic<const mqtt::iasync_client*> current_paho_{nullptr};  // cli_, for comparisons without cli_mu_
    std::shared_ptr<mqtt::async_client> cli_;  // replaced at every connection (see fresh_paho)
    std::vector<std::shared_ptr<mqtt::async_client>> retired_paho_;  // disconnected, destroyed at close
    std::mutex taint_mu_;  // not cli_mu_: destroying a Paho client under cli_mu_ fails its tokens
    std::set<const mqtt::iasync_client*> tainted_paho_;  // never destroyed (keep_tainted_paho)
    std::mutex own_mu_;
    detail::peer_socket own_socket_;  // the current connection's socket, once claimed (see on_connected)
    std::unique_ptr<detail::ca_bundle> ca_bundle_;  // tls_options::ca_path as one file, for Paho
    std::unique_ptr<mqtt::connect_options_builder> conn_builder_;
    mqtt::properties connect_properties() const;  // MQTT 5 CONNECT properties, made for each connect
    // The brokers to connect to (client_options::server_uris, or server_uri), fixed at construction, and
    // the one in use or being tried: read without a lock by the threads that cut connections.
    struct server {
        std::string uri, host;
        int port = 0;
    };
    std::vector<server> servers_;
    std::atomic<std::size_t> server_{0};
    const server& current_server() const { return servers_[server_.load()]; }

    mutable std::mutex mu_;
    std::condition_variable state_cv_;  // connection state, outbox/inbox counts
    std::condition_variable send_cv_;
    std::condition_variable conn_cv_;
    bool want_connect_ = false;
    std::atomic<bool> subscription_ids_{false};  // the broker takes MQTT 5 subscription identifiers
    std::atomic<std::uint32_t> max_packet_size_{0};  // the broker's MQTT 5 Maximum Packet Size (0: none)
    std::chrono::milliseconds hold_off_{0};  // before the next connect: arrivals are being refused
    bool connected_ = false;
    bool ever_connected_ = false;
    std::mutex close_mu_;  // held through close()
    std::atomic<bool> closing_{false};
    bool closed_ = false;
    std::string last_error_;
    std::mutex tls_error_mu_;  // not mu_: Paho calls the TLS error handler on its own threads
    std::string tls_error_;    // OpenSSL's reason for the last refused handshake

    std::atomic<std::uint64_t> next_seq_{1};
    std::mutex seq_mu_;  // keeps outbox commits in sequence order

    // outbox
    std::map<std::uint64_t, std::shared_ptr<std::promise<void>>> promises_;
    detail::send_queue sendq_;  // what waits to be sent, what is in flight, and the window
    bool send_blocked_ = false;  // Paho is not connected: wait for the next connection
    bool buffer_full_ = false;   // Paho's command queue is full: wait for a completion
    bool dispatching_ = false;   // a thread is in dispatch(), handing Paho a batch
    std::uint64_t connection_gen_ = 0;  // counts connections: a refusal seen by the sender is for one of them
    bool connecting_ = false;
    std::vector<int> removed_while_connecting_;
    std::set<std::string> pending_unsubscribes_;  // filters removed while offline
    std::size_t outbox_count_ = 0;

    // inbox
    detail::routes routes_;  // the lanes, the deliveries waiting for one, the handlers' filters
    std::size_t inbox_count_ = 0;
    subscription_id next_sub_ = 1;

    // commands
    std::map<std::string, command_entry> commands_;
    std::map<std::string, std::map<subscription_id, result_handler>> result_handlers_;
    std::map<std::string, std::pair<subscription_id, subscription_id>> result_lanes_;
    std::string results_root_;     // `<prefix>/<client id>`, if this client can have per-client result topics
    std::string no_results_root_;  // else why not
    std::mutex results_root_mu_;
    std::string results_refused_;  // why the broker refused the result topics, "" if not (guarded by mu_)
    subscription_id results_root_sub_ = 0;  // its one lane, `<root>/#` (guarded by results_root_mu_)
    std::map<std::string, call_completion> awaiting_;
    mutable std::mutex results_mu_;
    std::map<std::string, std::shared_ptr<detail::running_call>> running_;
    std::vector<std::shared_ptr<detail::worker_pool>> retired_workers_;  // of unregistered commands
    std::shared_ptr<answer_gate> answer_gate_ = std::make_shared<answer_gate>();
    std::set<std::string> finalizing_;

    // timers
    std::mutex timer_mu_;
    std::condition_variable timer_cv_;
    std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;

    // counters
    std::atomic<std::uint64_t> published_{0}, delivered_{0}, handled_{0}, retries_{0};
    std::size_t dead_count_ = 0;

    std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);

    class listener;
    std::unique_ptr<listener> listener_;
    std::thread conn_thread_, sender_thread_, timer_thread_;
};

}  // namespace xymqtt
