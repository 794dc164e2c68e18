#include "inbox/inbox.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <thread>

#include "base/clock.h"
#include "base/hook_calls.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {

namespace {

// The inbox whose handlers run on this thread, if any: close() from a handler must not wait for a close()
// that is joining this very thread.
thread_local const void* handler_thread_of = nullptr;

}  // namespace

message message_of(const std::string& id, const stored_message& rec, std::uint32_t attempt) {
    message m;
    m.topic = rec.topic;
    m.payload = rec.payload;
    m.props = rec.props;
    m.id = id;
    m.attempt = attempt;
    m.received_at_ms = rec.created_ms;
    return m;
}

inbox::inbox(inbox_host& host, const client_options& opts) : host_(host), opts_(opts) {}

inbox::~inbox() {
    // Lanes left running by a close() from their own handler touch their client until they end.
    std::unique_lock<std::mutex> lk(mu_);
    auto running = [&] {
        bool any = false;
        routes_.for_each([&](lane& l) { any = any || (l.detached && !l.finished); });
        return any;
    };
    state_cv_.wait(lk, [&] { return !running(); });
}

void inbox::log(log_level level, const std::string& text) const { log_to(opts_.hooks, level, text); }

template <class F, class... A>
void inbox::fire(const F& hook, A&&... args) const {
    fire_hook(opts_.hooks, hook, std::forward<A>(args)...);
}

std::size_t inbox::recover(store& s) {
    std::vector<write_op> unreadable;
    {
        std::lock_guard<std::mutex> lk(mu_);
        s.for_each(table::incoming, [&](const std::string& id, const std::string& value) {
            try {
                routes_.park(id, decode_record(value));
            } catch (const storage_error& e) {
                // A record we cannot read must not block the rest: keep it, as a dead letter.
                log(log_level::error, "inbox record " + id + " is unreadable: " + e.what());
                stored_message m;
                m.error = e.what();
                m.payload = value;
                unreadable.push_back({table::incoming, id, std::nullopt});
                unreadable.push_back({table::dead_letters, id, encode_record(m)});
            }
            return true;
        });
        count_ = routes_.parked();
    }
    if (!unreadable.empty()) host_.commit(unreadable, false);
    std::lock_guard<std::mutex> lk(mu_);
    dead_ = s.count(table::dead_letters);
    return count_;
}

// ---------------------------------------------------------------------------------------------------
// arrivals and subscriptions

std::vector<std::string> inbox::lanes_for(const std::string& topic, const std::vector<std::uint32_t>& sub_ids) const {
    std::lock_guard<std::mutex> lk(mu_);
    return routes_.lanes_for(topic, sub_ids);
}

void inbox::take(std::vector<std::pair<std::string, stored_message>> recs) {
    std::vector<std::shared_ptr<lane>> wake;
    {
        std::lock_guard<std::mutex> lk(mu_);
        count_ += recs.size();
        for (auto& [id, r] : recs)
            if (auto l = routes_.route(id, std::move(r))) wake.push_back(std::move(l));
    }
    // Woken with the lock released: a lane woken under it preempted this thread only to block on the
    // lock, two more context switches per message (docs/benchmarks.md, F16).
    for (auto& l : wake) l->cv.notify_one();
}

bool inbox::add_handler(subscription_id id, const std::string& filter, lane_handler handler, unsigned concurrency,
                        bool batch) {
    bool opened = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        // Lanes stopped by unsubscribe have finished (or will soon): reap the ones that have.
        routes_.reap_retired();
        lane* l = routes_.find(filter);
        if (!l) {
            auto o = routes_.open(filter, concurrency);
            l = o.first.get();
            // Recording the lane is bookkeeping (if it is lost the record is parked again and re-adopted),
            // but it must be queued before the lane can commit the delivery's removal, which would otherwise
            // be overtaken and the handled delivery written back. The committer commits in queue order; its
            // completions never take this lock, so queueing under it cannot deadlock.
            if (!o.second.empty()) host_.record(std::move(o.second));
            l->batch = batch && opts_.batch_lanes;
            l->thread = std::thread([this, l] { lane_loop(l); });
            opened = true;
        }
        routes_.add_handler(id, *l, std::move(handler));
    }
    return opened;
}

std::optional<std::string> inbox::remove_handler(subscription_id id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto r = routes_.remove_handler(id);
    // Not the last handler of its lane: the lane stays. The last: the lane stops, and its deliveries wait
    // (parked) for a new subscription.
    if (!r || !r->stopped) return std::nullopt;
    r->stopped->cv.notify_all();
    return r->filter;
}

std::vector<subscription_id> inbox::handlers_of(const std::string& filter) const {
    std::lock_guard<std::mutex> lk(mu_);
    return routes_.handlers_of(filter);
}

std::vector<std::pair<subscription_id, std::string>> inbox::handler_filters() const {
    std::lock_guard<std::mutex> lk(mu_);
    return {routes_.filters().begin(), routes_.filters().end()};
}

std::vector<std::string> inbox::live_filters() const {
    std::lock_guard<std::mutex> lk(mu_);
    return routes_.live_filters();
}

bool inbox::has_lane(const std::string& filter) const {
    std::lock_guard<std::mutex> lk(mu_);
    return routes_.find(filter) != nullptr;
}

std::optional<subscription_id> inbox::sole_handler(const std::string& filter) const {
    std::lock_guard<std::mutex> lk(mu_);
    const lane* l = routes_.find(filter);
    if (!l || l->handlers.size() != 1) return std::nullopt;
    return l->handlers.begin()->first;
}

// ---------------------------------------------------------------------------------------------------
// the lanes

void inbox::lane_loop(lane* l) {
    mark_handler_thread();
    if (l->batch) {
        // Woken by Paho's receive thread for each message, a lane of the normal policy preempts it (two
        // context switches per message); a batch lane runs when a core is free or the receiver blocks.
        const sched_param normal{};
        if (const int rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &normal); rc != 0)
            log(log_level::debug, "lane thread: SCHED_BATCH refused (" + std::to_string(rc) + "), policy unchanged");
    }
    std::unique_lock<std::mutex> lk(mu_);
    while (!halted_ && !l->stopping) {
        // The first delivery whose handlers are not at work already (effects::later), while the lane's
        // concurrency allows one more.
        auto it = l->queue.begin();
        while (it != l->queue.end() && l->working.count(it->first)) ++it;
        if (it == l->queue.end() || l->working.size() >= l->concurrency) {
            l->cv.wait(lk);
            continue;
        }
        auto wait = it->second.next_attempt_ms - wall_ms();
        if (wait > opts_.retry.cap.count()) {
            // No delay is longer than the cap: the clock was set back. Wait one cap from now.
            it->second.next_attempt_ms = wall_ms() + opts_.retry.cap.count();
            wait = opts_.retry.cap.count();
        }
        if (wait > 0) {
            l->cv.wait_for(lk, std::chrono::milliseconds(wait));
            continue;
        }
        const std::string id = it->first;
        stored_message rec = it->second;
        std::vector<std::pair<subscription_id, lane_handler>> handlers(l->handlers.begin(), l->handlers.end());
        if (l->head_id != id) {
            l->head_id = id;
            l->head_done.clear();
        }
        for (auto done : l->head_done)
            handlers.erase(std::remove_if(handlers.begin(), handlers.end(), [&](auto& h) { return h.first == done; }),
                           handlers.end());
        l->running = id;
        lk.unlock();
        process(l, id, std::move(rec), std::move(handlers));
        lk.lock();
        // Unsubscribed meanwhile and to be retried: on to the lane of its filter, or parked.
        if (auto next = routes_.release(*l, id)) next->cv.notify_one();
    }
    l->finished = true;
    state_cv_.notify_all();  // the destructor may be waiting for a lane that join() left running
}

void inbox::process(lane* l, const std::string& id, stored_message rec,
                    std::vector<std::pair<subscription_id, lane_handler>> handlers) {
    const message m = message_of(id, rec, rec.attempts + 1);
    fire(opts_.hooks.on_message, m);

    effects fx;
    std::string err;
    bool ok = true, poison = false;
    for (auto& [sid, h] : handlers) {
        try {
            h(m, fx);
            std::lock_guard<std::mutex> lk(mu_);
            if (l->head_id == id) l->head_done.insert(sid);
        } catch (const parse_error& e) {
            poison = true;
            err = e.what();
            break;
        } catch (const std::exception& e) {
            ok = false;
            err = e.what();
            break;
        } catch (...) {
            ok = false;
            err = "handler threw a non-standard exception";
            break;
        }
    }
    if (poison) return dead_letter_record(id, std::move(rec), err, true);
    if (ok && fx.later) {
        // The work goes on elsewhere; the delivery stays in the inbox, at work, until it finishes.
        auto later = std::move(fx.later);
        fx.later = nullptr;
        {
            std::lock_guard<std::mutex> lk(mu_);
            l->working.insert(id);
        }
        auto done = std::make_shared<effects>(std::move(fx));
        later([this, keep = l->shared_from_this(), id, done](effects rest) {
            auto& fx = *done;
            fx.ops.insert(fx.ops.end(), rest.ops.begin(), rest.ops.end());
            fx.publishes.insert(fx.publishes.end(), rest.publishes.begin(), rest.publishes.end());
            fx.after_commit.insert(fx.after_commit.end(), rest.after_commit.begin(), rest.after_commit.end());
            complete(keep.get(), id, std::move(fx));
        });
        return;
    }
    if (ok) return complete(l, id, std::move(fx));
    rec.attempts += 1;
    ++retries_;
    if (opts_.retry.max_attempts && rec.attempts >= opts_.retry.max_attempts)
        return dead_letter_record(id, std::move(rec),
                                  "gave up after " + std::to_string(rec.attempts) + " attempts: " + err, false);
    const auto delay = opts_.retry.delay_after(rec.attempts);
    rec.next_attempt_ms = wall_ms() + delay.count();
    try {
        // The attempt count is kept so that backoff and max_attempts hold across restarts.
        commit_until_stored({{table::incoming, id, encode_record(rec)}});
    } catch (const client_closed&) {
        return;
    }
    fire(opts_.hooks.on_message_retry, m, err, delay);
    std::lock_guard<std::mutex> lk(mu_);
    auto it = l->queue.find(id);
    if (it != l->queue.end()) it->second = std::move(rec);
}

void inbox::complete(lane* l, const std::string& id, effects fx) {
    // A plain removal does not need a sync of its own: it rides with the next arriving message's commit
    // (or goes alone when the inbox is idle), and the host may let the lane go on meanwhile, so a crash
    // hands over again the deliveries at work and at most inbox_host::max_unsynced_removals handled ones.
    // Outcomes of commands are waited for: they are sent next.
    const bool soon = fx.ops.empty() && fx.publishes.empty() && fx.after_commit.empty();
    fx.ops.push_back({table::incoming, id, std::nullopt});
    try {
        for (auto& [seq, msg] : fx.publishes) fx.ops.push_back({table::outgoing, sequence_id(seq), encode_record(*msg)});
        commit_until_stored(fx.ops, soon);
    } catch (const client_closed&) {
        std::lock_guard<std::mutex> lk(mu_);
        l->working.erase(id);  // stays in the inbox; handled again after restart
        return;
    }
    if (!fx.publishes.empty()) host_.publishes_stored(fx.publishes);
    for (auto& f : fx.after_commit) f();
    ++handled_;
    std::lock_guard<std::mutex> lk(mu_);
    routes_.done(*l, id);  // parked, if the lane was unsubscribed meanwhile
    --count_;
    if (l->working.erase(id)) l->cv.notify_all();
    state_cv_.notify_all();
}

void inbox::dead_letter_record(const std::string& id, stored_message rec, const std::string& reason, bool parse) {
    message m = message_of(id, rec, parse ? rec.attempts + 1 : rec.attempts);  // the attempt that failed
    m.received_at_ms = 0;
    rec.error = reason;
    try {
        commit_until_stored({{table::incoming, id, std::nullopt}, {table::dead_letters, id, encode_record(rec)}});
    } catch (const client_closed&) {
        return;
    }
    log(log_level::warning, "dead letter " + id + " on " + rec.topic + ": " + reason);
    if (parse) fire(opts_.hooks.on_parse_error, m, reason);
    fire(opts_.hooks.on_dead_letter, m, reason);
    std::lock_guard<std::mutex> lk(mu_);
    routes_.erase(id);
    --count_;
    ++dead_;
    state_cv_.notify_all();
}

void inbox::commit_until_stored(const std::vector<write_op>& ops, bool soon) {
    auto delay = std::chrono::milliseconds(10);
    while (true) {
        try {
            host_.commit(ops, soon);
            return;
        } catch (const client_closed&) {
            throw;
        } catch (const std::exception& e) {
            log(log_level::error, std::string("cannot store an arriving message, holding its acknowledgement: ") + e.what());
            host_.storage_failed(e.what());
        }
        if (halted_) throw client_closed("closing");
        std::this_thread::sleep_for(delay);  // storage back-off: nothing to await but free space
        delay = std::min(delay * 2, std::chrono::milliseconds(1000));
    }
}

// ---------------------------------------------------------------------------------------------------
// dead letters and state

std::vector<dead_letter> inbox::dead_letters(const store& s) {
    std::vector<dead_letter> out;
    s.for_each(table::dead_letters, [&](const std::string& id, const std::string& v) {
        dead_letter d;
        d.id = id;
        try {
            d.record = decode_record(v);
        } catch (const storage_error& e) {
            d.record.error = e.what();
        }
        out.push_back(std::move(d));
        return true;
    });
    return out;
}

void inbox::replay(const std::string& id, stored_message rec) {
    host_.commit({{table::dead_letters, id, std::nullopt}, {table::incoming, id, encode_record(rec)}}, false);
    {
        std::lock_guard<std::mutex> lk(mu_);
        --dead_;
    }
    std::vector<std::pair<std::string, stored_message>> recs;
    recs.emplace_back(id, std::move(rec));
    take(std::move(recs));
}

void inbox::count_dead(long delta) {
    std::lock_guard<std::mutex> lk(mu_);
    dead_ = std::size_t(long(dead_) + delta);
}

std::size_t inbox::size() const {
    std::lock_guard<std::mutex> lk(mu_);
    return count_;
}

std::size_t inbox::dead() const {
    std::lock_guard<std::mutex> lk(mu_);
    return dead_;
}

bool inbox::wait_empty(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return state_cv_.wait_for(lk, timeout, [&] { return count_ == 0; });
}

// ---------------------------------------------------------------------------------------------------
// threads

void inbox::mark_handler_thread() const { handler_thread_of = this; }

bool inbox::on_handler_thread() const { return handler_thread_of == this; }

void inbox::halt() {
    halted_ = true;
    std::lock_guard<std::mutex> lk(mu_);
    state_cv_.notify_all();
    routes_.for_each([](lane& l) { l.cv.notify_all(); });
}

void inbox::join() {
    std::vector<lane*> ls;
    {
        std::lock_guard<std::mutex> lk(mu_);
        routes_.for_each([&](lane& l) { ls.push_back(&l); });
    }
    for (auto* l : ls) {
        if (!l->thread.joinable()) continue;
        if (l->thread.get_id() == std::this_thread::get_id()) {
            // close() from a handler: this lane ends when the handler returns; the destructor waits for it.
            std::lock_guard<std::mutex> lk(mu_);
            l->thread.detach();
            l->detached = true;
        } else {
            l->thread.join();
        }
    }
}

}  // namespace xymqtt::detail
