// The client's machinery: connection, outbox, inbox lanes, and (commands.cpp) the command protocol.
#pragma once

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

#include "base/hook_calls.h"
#include "client/command_server.h"
#include "commands/call_core.h"
#include "inbox/inbox.h"
#include "outbox/committer.h"
#include "outbox/outbox.h"
#include "session/session.h"
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
    // -- helpers
    void log(log_level level, const std::string& text) const;
    template <class F, class... A>
    void fire(const F& hook, A&&... args) const;
    std::int64_t now_ms() const;
    void require_open() const;

    // -- the session (session/session.h: Paho, the connection, arrivals' acknowledgements)
    /// The client as the session's host: the outbox, the inbox and the command protocol.
    class session_link : public detail::session_host {
    public:
        explicit session_link(impl& c) : c_(c) {}
        void new_client(const std::map<int, std::uint64_t>& resumable,
                        const std::function<bool(int, const stored_message&)>& carries) override {
            c_.outbox_->new_client(resumable, carries);
        }
        void connecting() override { c_.outbox_->connecting(); }
        void connect_returned(bool session_present) override { c_.outbox_->connect_returned(session_present); }
        void connect_failed() override { c_.outbox_->connect_failed(); }
        void connected(std::size_t window, std::uint32_t max_packet_size) override {
            c_.outbox_->set_max_packet_size(max_packet_size);
            c_.outbox_->up(window);
        }
        void lost() override { c_.outbox_->down(); }
        void delivered(std::uint64_t seq, int reason_code, const void* via) override {
            c_.outbox_->on_delivered(seq, reason_code, via);
        }
        void send_failed(std::uint64_t seq, int rc, int reason_code, const void* via) override {
            c_.outbox_->on_send_failed(seq, rc, reason_code, via);
        }
        void resumed_complete(int packet_id) override { c_.outbox_->on_resumed_complete(packet_id); }
        bool drained() const override { return c_.outbox_->drained(); }
        void resume() override { c_.outbox_->wake(); }
        std::vector<std::string> filters() const override { return c_.inbox_->live_filters(); }
        bool wants(const std::string& filter) const override { return c_.inbox_->has_lane(filter); }
        std::optional<std::string> arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                           const std::function<void()>& stored) override {
            return c_.on_arrived(std::move(rec), sub_ids, stored);
        }
        std::uint32_t subscription_identifier(const std::string& filter) const override {
            return detail::subscription_identifier(filter);
        }
        void subscription_answered(const std::string& filter, int reason_code) override;
        void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) override {
            c_.schedule(at, std::move(fn));
        }

    private:
        impl& c_;
    };
    session_link session_link_{*this};

    // -- outbox (outbox/outbox.h)
    /// The client as the outbox's host: the session, the command protocol, the timers.
    class outbox_link : public detail::outbox_host {
    public:
        explicit outbox_link(impl& c) : c_(c) {}
        refusal publish(std::vector<item>& batch, via v) override;
        bool is_current(via v) const override { return c_.session_->is_current(v); }
        bool may_send() const override { return c_.session_->may_send(); }
        void maybe_drained() override { c_.session_->maybe_drained(); }
        std::function<void()> refused(const stored_message& msg, int reason_code, const std::string& why,
                                      std::vector<write_op>& ops) override;
        void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) override {
            c_.schedule(at, std::move(fn));
        }
        void storage_failed(const std::string& what) override { c_.fire(c_.opts_.hooks.on_storage_error, what); }

    private:
        impl& c_;
    };
    outbox_link outbox_link_{*this};
    using stored_publish = detail::stored_publish;
    stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                bool retain, const std::string& kind);
    void commit_publishes(std::vector<write_op> ops, std::vector<stored_publish> pubs) {
        outbox_->commit(std::move(ops), std::move(pubs));
    }

    // -- inbox (inbox/inbox.h runs the lanes; the client takes arrivals in from Paho)
    /// The client as the inbox's host: its commits, its outbox, its hooks.
    class inbox_link : public detail::inbox_host {
    public:
        explicit inbox_link(impl& c) : c_(c) {}
        void commit(const std::vector<write_op>& ops, bool soon) override;
        void record(std::vector<write_op> ops) override;
        void publishes_stored(std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs) override;
        void storage_failed(const std::string& what) override;

    private:
        impl& c_;
    };
    inbox_link inbox_link_{*this};
    /// A message arrived (session_host::arrived): stored in the inbox, or answers an awaited call.
    std::optional<std::string> on_arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                          const std::function<void()>& stored);
    /// Commits an arrival inside Paho's callback: a few quick tries, since Paho holds its process-wide
    /// lock meanwhile. @return false if it was not stored.
    bool commit_arrival(const std::vector<write_op>& ops);
    /// Marks the calling thread as running this client's handlers (close() from one must not join it).
    void mark_handler_thread() { inbox_->mark_handler_thread(); }
    /// @return the inbox records of a message: one per matching lane (or one parked), with new ids.
    /// @param sub_ids the MQTT 5 subscription identifiers the copy carries (see subscribe_at_broker)
    std::vector<std::pair<std::string, stored_message>> inbox_records(stored_message rec,
                                                                      const std::vector<std::uint32_t>& sub_ids = {});

    // -- commands (commands.cpp: the caller; client/command_server.h: the server)
    /// The client as the command server's host.
    class server_link : public detail::command_server_host {
    public:
        explicit server_link(impl& c) : c_(c) {}
        subscription_id subscribe(const std::string& filter, lane_handler handler, unsigned concurrency) override {
            return c_.add_handler(filter, std::move(handler), concurrency);
        }
        void unsubscribe(subscription_id id) override { c_.remove_handler(id); }
        detail::stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                            const std::string& kind) override {
            return c_.make_publish(topic, std::move(payload), std::move(props), false, kind);
        }
        void mark_handler_thread() override { c_.mark_handler_thread(); }

    private:
        impl& c_;
    };
    server_link server_link_{*this};
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
    std::unique_ptr<detail::committer> committer_;
    std::unique_ptr<detail::session> session_;

    mutable std::mutex mu_;  // closed_, results_refused_, awaiting_
    std::mutex close_mu_;    // held through close()
    std::atomic<bool> closing_{false};
    bool closed_ = false;

    std::atomic<std::uint64_t> next_seq_{1};  // outbox and inbox records alike

    std::unique_ptr<detail::outbox> outbox_;

    // inbox
    std::unique_ptr<detail::inbox> inbox_;  // the lanes, retries and dead letters
    std::atomic<subscription_id> next_sub_{1};

    // commands
    std::unique_ptr<detail::command_server> command_server_;
    std::map<std::string, std::map<subscription_id, result_handler>> result_handlers_;
    std::map<std::string, std::pair<subscription_id, subscription_id>> result_lanes_;
    std::string results_root_;     // `<prefix>/<client id>`, if this client can have per-client result topics
    std::string no_results_root_;  // else why not
    std::mutex results_root_mu_;
    std::string results_refused_;  // why the broker refused the result topics, "" if not (guarded by mu_)
    subscription_id results_root_sub_ = 0;  // its one lane, `<root>/#` (guarded by results_root_mu_)
    std::map<std::string, call_completion> awaiting_;
    mutable std::mutex results_mu_;

    // timers
    std::mutex timer_mu_;
    std::condition_variable timer_cv_;
    std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;

    std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);

    std::thread timer_thread_;
};

template <class F, class... A>
void client::impl::fire(const F& hook, A&&... args) const {
    detail::fire_hook(opts_.hooks, hook, std::forward<A>(args)...);
}

}  // namespace xymqtt
