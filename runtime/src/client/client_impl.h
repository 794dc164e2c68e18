// The client's machinery: it wires the session, the outbox, the inbox and the command protocol together.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "base/clock.h"
#include "base/hook_calls.h"
#include "base/timers.h"
#include "commands/command_caller.h"
#include "commands/command_server.h"
#include "inbox/inbox.h"
#include "outbox/committer.h"
#include "outbox/outbox.h"
#include "session/session.h"
#include "xymqtt/client.h"

namespace xymqtt {

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
    /// @param batch an event subscription's lane (SCHED_BATCH with batch_lanes), not one a call waits on
    subscription_id add_handler(const std::string& filter, lane_handler handler, unsigned concurrency, bool batch);
    void remove_handler(subscription_id id);
    void remove_filter(const std::string& filter);

    // commands (commands/command_server.h, commands/command_caller.h)
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
        bool give_up_resumed(int packet_id, const std::string& why) override {
            return c_.outbox_->give_up_resumed(packet_id, why);
        }
        bool drained() const override { return c_.outbox_->drained(); }
        void resume() override { c_.outbox_->wake(); }
        std::vector<std::string> filters() const override { return c_.inbox_->live_filters(); }
        bool wants(const std::string& filter) const override { return c_.inbox_->has_lane(filter); }
        std::optional<std::string> arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                           const std::function<void()>& stored) override {
            return c_.on_arrived(std::move(rec), sub_ids, stored);
        }
        void arrived_later(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                           std::function<void(const std::optional<std::string>&)> done) override {
            c_.on_arrived_later(std::move(rec), sub_ids, std::move(done));
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
        std::mutex removals_mu_;
        std::condition_variable removals_cv_;
        std::size_t unsynced_removals_ = 0;
    };
    inbox_link inbox_link_{*this};
    /// A message arrived (session_host::arrived): stored in the inbox, or answers an awaited call.
    std::optional<std::string> on_arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                          const std::function<void()>& stored);
    /// As on_arrived, with the commit queued (session_host::arrived_later).
    void on_arrived_later(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                          std::function<void(const std::optional<std::string>&)> done);
    /// An arrival's inbox records (or the call it answers) and the writes that store it.
    struct arrival {
        std::vector<std::pair<std::string, stored_message>> recs;
        std::optional<command_result> result;  // an awaited result: answered here, not through the inbox
        std::vector<write_op> ops;
    };
    arrival take_arrival(stored_message rec, const std::vector<std::uint32_t>& sub_ids);
    /// @return whether `a` (an awaited result, with fsync) is handed on before its commit, not after.
    bool answers_early(const arrival& a) const;
    /// After an arrival is stored: the inbox takes it, or its call is answered.
    void hand_on(arrival& a);
    /// Commits an arrival inside Paho's callback: a few quick tries, since Paho holds its process-wide
    /// lock meanwhile. @return false if it was not stored.
    bool commit_arrival(const std::vector<write_op>& ops);
    /// Marks the calling thread as running this client's handlers (close() from one must not join it).
    void mark_handler_thread() { inbox_->mark_handler_thread(); }
    /// @return the inbox records of a message: one per matching lane (or one parked), with new ids.
    /// @param sub_ids the MQTT 5 subscription identifiers the copy carries (see subscribe_at_broker)
    std::vector<std::pair<std::string, stored_message>> inbox_records(stored_message rec,
                                                                      const std::vector<std::uint32_t>& sub_ids = {});

    // -- commands (commands/: the protocol, the same as the loopback's)
    /// The client as the command protocol's host: lanes of the inbox, commits of the outbox, the store.
    class command_link : public detail::command_host {
    public:
        explicit command_link(impl& c) : c_(c) {}
        subscription_id subscribe(const std::string& filter, lane_handler handler, unsigned concurrency) override {
            return c_.add_handler(filter, std::move(handler), concurrency, false);
        }
        void unsubscribe(subscription_id id) override { c_.remove_handler(id); }
        subscription_id new_subscription_id() override { return c_.next_sub_++; }
        std::optional<subscription_id> sole_handler(const std::string& filter) const override {
            return c_.inbox_->sole_handler(filter);
        }
        std::vector<std::pair<subscription_id, std::string>> handler_filters() const override {
            return c_.inbox_->handler_filters();
        }
        detail::stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                            const std::string& kind) override {
            return c_.make_publish(topic, std::move(payload), std::move(props), false, kind);
        }
        void commit(std::vector<write_op> ops, std::vector<detail::stored_publish> pubs) override {
            c_.outbox_->commit(std::move(ops), std::move(pubs));
        }
        void commit_later(std::vector<write_op> ops) override { c_.committer_->submit(std::move(ops), nullptr); }
        std::optional<std::string> stored(table t, const std::string& id) const override { return c_.store_->get(t, id); }
        std::int64_t wall_ms() const override { return detail::wall_ms(); }
        void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) override {
            c_.schedule(at, std::move(fn));
        }
        void mark_handler_thread() override { c_.mark_handler_thread(); }

    private:
        impl& c_;
    };
    command_link command_link_{*this};
    void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) { timers_.schedule(at, std::move(fn)); }
    /// Removes the results and calls past client_options::result_retention, then again in an hour.
    void purge_expired_results();
    /// @return the ids of the calls a previous run left unanswered.
    std::vector<std::string> stored_calls() const;

    // -- state
    std::shared_ptr<store> store_;
    std::unique_ptr<detail::committer> committer_;
    std::unique_ptr<detail::session> session_;

    mutable std::mutex mu_;  // closed_
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
    std::unique_ptr<detail::command_caller> command_caller_;

    detail::timers timers_;  // last: its thread stops first
};

template <class F, class... A>
void client::impl::fire(const F& hook, A&&... args) const {
    detail::fire_hook(opts_.hooks, hook, std::forward<A>(args)...);
}

}  // namespace xymqtt
