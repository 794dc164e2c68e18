// xymqtt::testing::loopback: an in-memory transport for unit tests. See loopback.h for the semantics.
//
// Structure: loopback_lanes.h holds what a broker and an inbox would (published messages, retained ones,
// lanes of deliveries, dead letters) as a plain data structure under this file's one lock; this file runs
// it: the pumping thread in manual mode, a pool of worker threads (grown so that one is always free while
// others run handlers) in threaded mode, each taking the ready lane whose head was queued first. The
// command protocol is the client's own (commands/), hosted in memory by loopback_commands.h on internal
// subscriptions of the same lanes, so what goes over the "wire" is byte for byte what xymqtt::client sends.
#include "xymqtt/testing/loopback.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "testing/loopback_commands.h"
#include "testing/loopback_lanes.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::testing {

namespace {

using steady = std::chrono::steady_clock;
using lanes = detail::loopback_lanes;

template <class F, class... A>
void call_hook(const F& fn, A&&... args) {
    if (!fn) return;
    try {
        fn(std::forward<A>(args)...);
    } catch (...) {
        // Hooks must not disturb delivery (as with xymqtt::client).
    }
}

std::string describe(std::exception_ptr e) {
    try {
        std::rethrow_exception(std::move(e));
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "handler threw a non-standard exception";
    }
}

}  // namespace

class loopback::impl : public std::enable_shared_from_this<loopback::impl>, private detail::loopback_port {
public:
    explicit impl(options o) : opts_(std::move(o)), commands_(*this, opts_.hooks) {}

    void start() {
        if (opts_.mode != delivery_mode::threaded) return;
        std::lock_guard<std::mutex> lk(m_);
        spawn_worker_locked();
    }

    void shutdown() {
        std::vector<std::thread> workers;
        {
            std::lock_guard<std::mutex> lk(m_);
            stopping_ = true;
            workers.swap(workers_);
        }
        cv_.notify_all();
        for (auto& t : workers)
            if (t.joinable()) t.join();
        commands_.close(std::make_exception_ptr(client_closed("loopback destroyed")));
    }

    // ---- clock ----
    steady::time_point now_locked() const { return steady::now() + offset_; }
    std::int64_t wall_ms_locked() const {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   (std::chrono::system_clock::now() + offset_).time_since_epoch())
            .count();
    }
    void advance_clock(std::chrono::milliseconds d) {
        if (d.count() < 0) throw std::invalid_argument("loopback::advance_clock: negative duration");
        {
            std::lock_guard<std::mutex> lk(m_);
            offset_ += d;
        }
        cv_.notify_all();
    }

    // ---- publishing ----
    std::optional<std::pair<std::exception_ptr, failure_point>> take_failure() {
        std::lock_guard<std::mutex> lk(m_);
        if (failures_.empty()) return std::nullopt;
        auto f = failures_.front();
        failures_.pop_front();
        return f;
    }

    void fail_next_publish(std::exception_ptr e, failure_point where) {
        if (!e) throw std::invalid_argument("loopback::fail_next_publish: null exception");
        std::lock_guard<std::mutex> lk(m_);
        failures_.emplace_back(std::move(e), where);
    }

    /// Records an accepted publish and queues it for every matching lane.
    void accept(published_message pm) {
        call_hook(opts_.hooks.on_packet_send, pm.topic, pm.payload);
        bool matched;
        {
            std::lock_guard<std::mutex> lk(m_);
            matched = lanes_.accept(pm, now_locked(), wall_ms_locked());
        }
        cv_.notify_all();
        if (matched) call_hook(opts_.hooks.on_packet_receive, pm.topic, pm.payload);
    }

    // ---- subscriptions ----
    subscription_id subscribe(const std::string& filter, message_handler handler) {
        validate_topic_filter(filter);
        if (!handler) throw error("subscribe needs a handler");
        return add(filter, lanes::handler_kind::user, std::move(handler));
    }

    void unsubscribe(subscription_id id) override {
        if (commands_.remove_result_handler(id)) return;  // the results lanes stay, as with xymqtt::client
        std::lock_guard<std::mutex> lk(m_);
        lanes_.remove_handler(id);
    }

    void unsubscribe(const std::string& filter) {
        std::lock_guard<std::mutex> lk(m_);
        for (auto id : lanes_.user_handlers_of(filter)) lanes_.remove_handler(id);
    }

    // ---- commands: the client's protocol, hosted in memory (loopback_commands.h) ----
    void command_register(const std::string& command, command_handler handler, command_options o) {
        commands_.command_register(command, std::move(handler), std::move(o));
    }
    void command_register(const std::string& command, deferred_command_handler handler, command_options o) {
        commands_.command_register(command, std::move(handler), std::move(o));
    }
    void command_unregister(const std::string& command) { commands_.command_unregister(command); }
    subscription_id subscribe_results(const std::string& command, result_handler handler) {
        return commands_.subscribe_results(command, std::move(handler));
    }
    call_handle call(const std::string& command, std::string body, call_options o) {
        return commands_.call(command, std::move(body), std::move(o));
    }
    call_handle call_async(const std::string& command, std::string body, call_options o,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done) {
        if (!done) throw configuration_error("call_async of " + command + " needs a completion");
        validate_topic_name(command);
        if (auto f = take_failure()) {
            if (f->second == failure_point::thrown) std::rethrow_exception(f->first);
            done(f->first, {});
            return call_handle(command, {}, {});
        }
        return commands_.call_async(command, std::move(body), std::move(o), timeout, std::move(done));
    }

    // ---- running handlers ----
    /// Runs the timers that are due on the loopback's clock (call timeouts).
    void fire_due_timers() {
        steady::time_point now;
        {
            std::lock_guard<std::mutex> lk(m_);
            now = now_locked();
        }
        commands_.fire_due(now);
    }

    /// Runs one claimed delivery; called and returns without the lock.
    void execute(lanes::job j) {
        call_hook(opts_.hooks.on_message, j.d.msg);
        std::optional<std::string> failure;
        std::optional<std::string> undecodable;
        for (const auto& h : j.handlers) {
            if (j.d.done.count(h.id)) continue;
            try {
                (*h.fn)(j.d.msg);
                j.d.done.insert(h.id);
            } catch (const parse_error& e) {
                undecodable = e.what();
                break;
            } catch (...) {
                failure = describe(std::current_exception());
                break;  // the handlers after it wait for the retry
            }
        }
        lanes::verdict v;
        {
            std::lock_guard<std::mutex> lk(m_);
            v = lanes_.conclude(j, failure, undecodable, opts_.retry, now_locked());
        }
        // Hooks run before the lane is released, so that an observer of idleness has seen them.
        if (v.what == lanes::verdict::retry) {
            call_hook(opts_.hooks.on_message_retry, j.d.msg, *failure, v.delay);
        } else if (v.what == lanes::verdict::dead) {
            if (v.letter.undecodable) call_hook(opts_.hooks.on_parse_error, v.letter.msg, v.letter.reason);
            call_hook(opts_.hooks.on_dead_letter, v.letter.msg, v.letter.reason);
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            lanes_.release(j);
        }
        cv_.notify_all();
    }

    bool run_one(const std::string* filter) {
        if (opts_.mode != delivery_mode::manual)
            throw std::logic_error("loopback: run_one/run_until_idle are for delivery_mode::manual");
        fire_due_timers();
        lanes::job j;
        {
            std::lock_guard<std::mutex> lk(m_);
            auto l = lanes_.pick(now_locked(), true, filter);
            if (!l) return false;
            j = lanes_.claim(l);
        }
        execute(std::move(j));
        return true;
    }

    std::size_t run_until_idle(std::size_t max) {
        std::size_t n = 0;
        while (n < max && run_one(nullptr)) ++n;
        return n;
    }

    bool wait_idle(std::chrono::milliseconds timeout) {
        if (opts_.mode == delivery_mode::manual) {
            run_until_idle(100000);
            std::lock_guard<std::mutex> lk(m_);
            return lanes_.idle();
        }
        std::unique_lock<std::mutex> lk(m_);
        return cv_.wait_for(lk, timeout, [&] { return lanes_.idle(); });
    }

    void spawn_worker_locked() {
        if (stopping_ || workers_.size() >= 256) return;
        workers_.emplace_back([this] { worker_loop(); });
    }

    void worker_loop() {
        std::unique_lock<std::mutex> lk(m_);
        while (!stopping_) {
            const auto now = now_locked();
            std::optional<steady::time_point> wake = commands_.next_due();
            if (wake && *wake <= now) {
                lk.unlock();
                fire_due_timers();
                lk.lock();
                continue;
            }
            if (auto l = lanes_.pick(now, false, nullptr)) {
                lanes::job j = lanes_.claim(l);
                if (idle_workers_ == 0) spawn_worker_locked();  // keep one free for the other lanes
                lk.unlock();
                execute(std::move(j));
                lk.lock();
                continue;
            }
            if (const auto ready = lanes_.next_ready(); ready && (!wake || *ready < *wake)) wake = ready;
            ++idle_workers_;
            if (wake)
                cv_.wait_for(lk, *wake - now);
            else
                cv_.wait(lk);
            --idle_workers_;
        }
    }

    // ---- inspection ----
    std::vector<published_message> published(const std::string* topic) const {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.published(topic);
    }
    void clear_published() {
        std::lock_guard<std::mutex> lk(m_);
        lanes_.clear_published();
    }
    std::vector<dead_letter_record> dead_letters() const {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.dead_letters();
    }
    bool replay_dead_letter(const std::string& id) {
        {
            std::lock_guard<std::mutex> lk(m_);
            if (!lanes_.replay_dead_letter(id, now_locked())) return false;
        }
        cv_.notify_all();
        return true;
    }
    bool purge_dead_letter(const std::string& id) {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.purge_dead_letter(id);
    }
    void clear_dead_letters() {
        std::lock_guard<std::mutex> lk(m_);
        lanes_.clear_dead_letters();
    }
    std::vector<std::string> subscribed_filters() const {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.filters();
    }
    loopback_stats stats() const {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.stats();
    }

private:
    /// Adds a handler (of the user or of the command protocol) to the lane of `filter`.
    subscription_id add(const std::string& filter, lanes::handler_kind kind, message_handler handler) {
        subscription_id id;
        {
            std::lock_guard<std::mutex> lk(m_);
            id = lanes_.new_id();
            lanes_.add_handler(filter, id, kind, std::make_shared<message_handler>(std::move(handler)), now_locked(),
                               wall_ms_locked());
        }
        cv_.notify_all();  // retained or parked messages may have been queued
        return id;
    }

    // -- loopback_port: what the command protocol (commands_) needs of the loopback
    subscription_id subscribe_internal(const std::string& filter, message_handler handler) override {
        return add(filter, lanes::handler_kind::internal, std::move(handler));
    }
    subscription_id new_subscription_id() override {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.new_id();
    }
    std::optional<subscription_id> sole_handler(const std::string& filter) const override {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.sole_handler(filter);
    }
    std::vector<std::pair<subscription_id, std::string>> handler_filters() const override {
        std::lock_guard<std::mutex> lk(m_);
        return lanes_.handler_filters();
    }
    void accept(const stored_message& m) override {
        published_message pm;
        pm.topic = m.topic;
        pm.payload = m.payload;
        pm.props = m.props;
        pm.retain = m.retain;
        accept(std::move(pm));
    }
    std::exception_ptr take_failure_for_call() override {
        auto f = take_failure();
        return f ? f->first : nullptr;
    }
    std::chrono::milliseconds clock_offset() const override {
        std::lock_guard<std::mutex> lk(m_);
        return offset_;
    }
    std::int64_t wall_ms() const override {
        std::lock_guard<std::mutex> lk(m_);
        return wall_ms_locked();
    }
    void timers_changed() override {
        { std::lock_guard<std::mutex> lk(m_); }  // a worker is either before its look at the timers or waiting
        cv_.notify_all();
    }
    void invoke_expired() override {
        std::lock_guard<std::mutex> lk(m_);
        lanes_.count_expired();
    }

    const options opts_;
    mutable std::mutex m_;  // guards everything below but commands_ (which has its own lock, taken after m_)
    std::condition_variable cv_;
    std::chrono::milliseconds offset_{0};
    lanes lanes_;
    std::deque<std::pair<std::exception_ptr, failure_point>> failures_;
    detail::loopback_commands commands_;
    bool stopping_ = false;
    std::vector<std::thread> workers_;
    std::size_t idle_workers_ = 0;
};

// ---- loopback --------------------------------------------------------------------------------

loopback::loopback() : loopback(options{}) {}

loopback::loopback(options opts) : impl_(std::make_shared<impl>(std::move(opts))) { impl_->start(); }

loopback::~loopback() { impl_->shutdown(); }

std::future<void> loopback::publish(const std::string& topic, std::string payload, publish_options opts) {
    validate_topic_name(topic);
    std::promise<void> p;
    if (auto f = impl_->take_failure()) {
        if (f->second == failure_point::thrown) std::rethrow_exception(f->first);
        p.set_exception(f->first);
        return p.get_future();
    }
    published_message pm;
    pm.topic = topic;
    pm.payload = std::move(payload);
    pm.props = std::move(opts.props);
    pm.retain = opts.retain;
    impl_->accept(std::move(pm));
    p.set_value();
    return p.get_future();
}

subscription_id loopback::subscribe(const std::string& filter, message_handler handler) {
    return impl_->subscribe(filter, std::move(handler));
}

void loopback::unsubscribe(subscription_id id) { impl_->unsubscribe(id); }

void loopback::unsubscribe(const std::string& filter) { impl_->unsubscribe(filter); }

void loopback::command_register(const std::string& command, command_handler handler, command_options opts) {
    impl_->command_register(command, std::move(handler), std::move(opts));
}

void loopback::command_register(const std::string& command, deferred_command_handler handler, command_options opts) {
    impl_->command_register(command, std::move(handler), std::move(opts));
}

void loopback::command_unregister(const std::string& command) { impl_->command_unregister(command); }

subscription_id loopback::subscribe_results(const std::string& command, result_handler handler) {
    return impl_->subscribe_results(command, std::move(handler));
}

subscription_id loopback::subscribe_results(const std::string& command, result_handler handler,
                                            std::optional<result_routing>) {
    return impl_->subscribe_results(command, std::move(handler));
}

call_handle loopback::call(const std::string& command, std::string body, call_options opts) {
    return impl_->call(command, std::move(body), opts);
}

call_handle loopback::call_async(const std::string& command, std::string body, call_options opts,
                                 std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    return impl_->call_async(command, std::move(body), opts, timeout, std::move(done));
}

std::size_t loopback::run_until_idle(std::size_t max_deliveries) {
    if (max_deliveries == 0) return 0;
    return impl_->run_until_idle(max_deliveries);
}

bool loopback::run_one() { return impl_->run_one(nullptr); }

bool loopback::run_one(const std::string& filter) { return impl_->run_one(&filter); }

bool loopback::wait_idle(std::chrono::milliseconds timeout) { return impl_->wait_idle(timeout); }

void loopback::advance_clock(std::chrono::milliseconds d) { impl_->advance_clock(d); }

std::vector<published_message> loopback::published() const { return impl_->published(nullptr); }

std::vector<published_message> loopback::published(const std::string& topic) const {
    return impl_->published(&topic);
}

void loopback::clear_published() { impl_->clear_published(); }

std::vector<dead_letter_record> loopback::dead_letters() const { return impl_->dead_letters(); }

void loopback::clear_dead_letters() { impl_->clear_dead_letters(); }

bool loopback::replay_dead_letter(const std::string& id) { return impl_->replay_dead_letter(id); }

bool loopback::purge_dead_letter(const std::string& id) { return impl_->purge_dead_letter(id); }

std::vector<std::string> loopback::subscribed_filters() const { return impl_->subscribed_filters(); }

loopback_stats loopback::stats() const { return impl_->stats(); }

void loopback::fail_next_publish(std::exception_ptr error, failure_point where) {
    impl_->fail_next_publish(std::move(error), where);
}

}  // namespace xymqtt::testing
