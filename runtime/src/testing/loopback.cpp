// xymqtt::testing::loopback: an in-memory transport for unit tests. See loopback.h for the semantics.
//
// Structure: every subscribed filter is a lane (a FIFO of deliveries, run one at a time); a shared
// subscription's member is a lane of its own. Publishing records the message and appends one delivery
// to each matching lane. A scheduler picks the ready lane whose head was queued first: the pumping
// thread does so in manual mode, a pool of worker threads (grown so that one is always free while
// others run handlers) in threaded mode. The command protocol is built from internal subscriptions
// on the same lanes and the runtime's own wire encoders (wire.h), so what goes over the "wire" is
// byte for byte what xymqtt::client sends.
#include "xymqtt/testing/loopback.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include "commands/call_core.h"
#include "commands/wire.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::testing {

namespace {

using steady = std::chrono::steady_clock;

enum class handler_kind : std::uint8_t { user, internal };

struct handler_entry {
    subscription_id id;
    handler_kind kind;
    std::shared_ptr<message_handler> fn;
};

struct delivery {
    message msg;
    std::uint64_t seq = 0;         // scheduling order: publish order, a retry goes to the back
    steady::time_point due{};      // loopback clock; retries in threaded mode wait until then
    std::set<subscription_id> done;  // handlers that already succeeded for this message
};

struct lane {
    std::string filter;
    bool shared = false;
    std::vector<handler_entry> handlers;
    std::deque<delivery> queue;
    bool busy = false;
    bool removed = false;
};

bool is_shared_filter(const std::string& f) { return f.rfind("$share/", 0) == 0; }

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

struct outcome {
    bool cancelled = false;
    std::string topic;
    wire::outgoing out;
};

struct async_call {
    std::string command;
    wire_format format = wire_format::binary;
    call_completion done;
    std::optional<steady::time_point> deadline;
};

struct command_entry {
    subscription_id invoke_sub = 0;
    subscription_id cancel_sub = 0;
};


}  // namespace

class loopback::impl : public std::enable_shared_from_this<loopback::impl> {
public:
    explicit impl(options o) : opts_(std::move(o)) {
        std::random_device rd;
        rng_.seed((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
    }

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
        std::map<std::string, async_call> pending;
        {
            std::lock_guard<std::mutex> lk(m_);
            pending.swap(async_);
        }
        for (auto& kv : pending) kv.second.done(std::make_exception_ptr(client_closed("loopback destroyed")), {});
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
        bool matched = false;
        {
            std::lock_guard<std::mutex> lk(m_);
            ++stats_.published;
            published_.push_back(pm);
            if (pm.retain) {
                if (pm.payload.empty())
                    retained_.erase(pm.topic);
                else
                    retained_[pm.topic] = pm;
            }
            std::map<std::string, std::vector<std::shared_ptr<lane>>> groups;
            for (const auto& l : lanes_) {
                if (!topic_matches(l->filter, pm.topic)) continue;
                if (l->shared) {
                    groups[l->filter].push_back(l);
                } else {
                    enqueue_locked(*l, pm);
                    matched = true;
                }
            }
            for (auto& g : groups) {
                auto& next = round_robin_[g.first];
                enqueue_locked(*g.second[next % g.second.size()], pm);
                next = (next + 1) % g.second.size();
                matched = true;
            }
        }
        cv_.notify_all();
        if (matched) call_hook(opts_.hooks.on_packet_receive, pm.topic, pm.payload);
    }

    void accept(const std::string& topic, wire::outgoing out) {
        published_message pm;
        pm.topic = topic;
        pm.payload = std::move(out.payload);
        pm.props = std::move(out.props);
        accept(std::move(pm));
    }

    void enqueue_locked(lane& l, const published_message& pm) {
        delivery d;
        d.seq = next_seq_++;
        d.due = now_locked();
        d.msg.topic = pm.topic;
        d.msg.payload = pm.payload;
        d.msg.props = pm.props;
        char id[24];
        std::snprintf(id, sizeof id, "%020llu", static_cast<unsigned long long>(++next_message_id_));
        d.msg.id = id;
        d.msg.attempt = 1;
        d.msg.received_at_ms = wall_ms_locked();
        l.queue.push_back(std::move(d));
    }

    // ---- subscriptions ----
    subscription_id new_id_locked() { return ++next_sub_id_; }

    /// Adds a handler to the lane of `filter` (a new lane per member for a shared filter).
    void add_handler_locked(const std::string& filter, subscription_id id, handler_kind kind,
                            std::shared_ptr<message_handler> fn) {
        std::shared_ptr<lane> target;
        const bool shared = is_shared_filter(filter);
        if (!shared) {
            for (const auto& l : lanes_)
                if (!l->shared && l->filter == filter) target = l;
        }
        if (!target) {
            target = std::make_shared<lane>();
            target->filter = filter;
            target->shared = shared;
            lanes_.push_back(target);
            auto park = parked_.find(filter);
            if (park != parked_.end()) {
                target->queue = std::move(park->second);
                parked_.erase(park);
            }
            if (!shared)  // a new SUBSCRIBE: the broker sends the matching retained messages
                for (const auto& kv : retained_)
                    if (topic_matches(filter, kv.first)) enqueue_locked(*target, kv.second);
        }
        target->handlers.push_back(handler_entry{id, kind, std::move(fn)});
        regs_[id].push_back(target);
    }

    void unsubscribe_locked(subscription_id id) {
        auto it = regs_.find(id);
        if (it == regs_.end()) return;
        for (const auto& l : it->second) {
            auto& hs = l->handlers;
            hs.erase(std::remove_if(hs.begin(), hs.end(), [&](const handler_entry& h) { return h.id == id; }),
                     hs.end());
            if (hs.empty() && !l->removed) {
                // The last handler: its deliveries wait (parked) for a new subscription of the filter.
                l->removed = true;
                auto& park = parked_[l->filter];
                for (auto& d : l->queue) park.push_back(std::move(d));
                l->queue.clear();
                lanes_.erase(std::remove(lanes_.begin(), lanes_.end(), l), lanes_.end());
            }
        }
        regs_.erase(it);
    }

    subscription_id subscribe(const std::string& filter, message_handler handler) {
        validate_topic_filter(filter);
        if (!handler) throw error("subscribe needs a handler");
        subscription_id id;
        {
            std::lock_guard<std::mutex> lk(m_);
            id = new_id_locked();
            add_handler_locked(filter, id, handler_kind::user, std::make_shared<message_handler>(std::move(handler)));
        }
        cv_.notify_all();  // retained messages may have been queued
        return id;
    }

    void unsubscribe(subscription_id id) {
        std::lock_guard<std::mutex> lk(m_);
        for (auto& kv : result_handlers_)
            if (kv.second.erase(id)) return;  // the results lanes stay, as with xymqtt::client
        unsubscribe_locked(id);
    }

    void unsubscribe(const std::string& filter) {
        std::lock_guard<std::mutex> lk(m_);
        std::set<subscription_id> ids;
        for (const auto& l : lanes_)
            if (l->filter == filter)
                for (const auto& h : l->handlers)
                    if (h.kind == handler_kind::user) ids.insert(h.id);
        for (auto id : ids) unsubscribe_locked(id);
    }

    // ---- command server ----
    static std::string key(const std::string& command, const std::string& id) { return command + '\n' + id; }

    // A command's handler: synchronous, or deferred (answers through a responder, maybe later).
    using runner = std::function<void(const invocation&, call_context&, responder)>;

    void command_register(const std::string& command, command_handler handler, command_options o) {
        if (!handler) throw error("command_register needs a handler");
        register_command(command, [fn = std::move(handler)](const invocation& inv, call_context& ctx, responder r) {
            std::string result;
            try {
                result = fn(inv, ctx);
            } catch (...) {
                r.reject(std::current_exception());
                return;
            }
            r.resolve(std::move(result));
        }, o);
    }

    void command_register(const std::string& command, deferred_command_handler handler, command_options o) {
        if (!handler) throw error("command_register needs a handler");
        register_command(command, std::move(handler), o);
    }

    void register_command(const std::string& command, runner handler, const command_options& o) {
        // Calls start one at a time whatever the concurrency: the loopback is deterministic.
        wire::validate_command(command, o);
        auto fn = std::make_shared<runner>(std::move(handler));
        std::lock_guard<std::mutex> lk(m_);
        if (commands_.count(command)) throw command_already_registered("command already registered: " + command);
        command_entry e;
        e.invoke_sub = new_id_locked();
        e.cancel_sub = new_id_locked();
        const std::string invoke_filter =
            o.group.empty() ? wire::invoke_topic(command) : "$share/" + o.group + "/" + wire::invoke_topic(command);
        add_handler_locked(invoke_filter, e.invoke_sub, handler_kind::internal,
                           std::make_shared<message_handler>(
                               [this, command, fn](const message& m) { handle_invoke(command, *fn, m); }));
        add_handler_locked(wire::cancel_topic(command), e.cancel_sub, handler_kind::internal,
                           std::make_shared<message_handler>(
                               [this, command](const message& m) { handle_cancel(command, m); }));
        commands_[command] = e;
    }

    void command_unregister(const std::string& command) {
        std::lock_guard<std::mutex> lk(m_);
        auto it = commands_.find(command);
        if (it == commands_.end()) return;
        unsubscribe_locked(it->second.invoke_sub);
        unsubscribe_locked(it->second.cancel_sub);
        commands_.erase(it);
    }

    void publish_outcome(const std::string& command, const std::string& message_id, outcome oc) {
        {
            std::lock_guard<std::mutex> lk(m_);
            outcomes_[key(command, message_id)] = oc;
        }
        if (!oc.cancelled) accept(oc.topic, std::move(oc.out));
    }

    void handle_invoke(const std::string& command, const runner& fn, const message& m) {
        wire::decoded_invoke d;
        try {
            d = wire::decode_invoke(m.payload, m.props);
        } catch (const wire::undecodable_invoke& e) {
            if (e.message_id.empty())  // nobody to answer: dead letter
                throw parse_error(std::string("undecodable invoke: ") + e.what());
            publish_outcome(command, e.message_id,
                            outcome{false, wire::reject_topic(command), detail::undecodable_reject(e)});
            return;
        }
        const std::string k = key(command, d.message_id);
        auto ctx = std::make_shared<detail::running_call>();
        {
            std::unique_lock<std::mutex> lk(m_);
            auto done = outcomes_.find(k);
            if (done != outcomes_.end()) {  // durable dedupe: answer again, do not run again
                outcome again = done->second;
                lk.unlock();
                if (!again.cancelled) accept(again.topic, std::move(again.out));
                return;
            }
            if (cancelled_early_.erase(k)) {  // cancelled before it ran: never runs
                outcomes_[k] = outcome{true, {}, {}};
                return;
            }
            if (running_.count(k)) return;  // the same call is running on another lane already
            if (detail::invoke_expired(m, wall_ms_locked())) {
                ++stats_.expired;  // not executed: rejected with 408, and answered so again
                outcome oc{false, wire::reject_topic(command), detail::expired_reject(d.format, d.message_id)};
                outcomes_[k] = oc;
                lk.unlock();
                accept(oc.topic, std::move(oc.out));
                return;
            }
            running_[k] = ctx;
        }
        invocation inv;
        inv.command = command;
        inv.message_id = d.message_id;
        inv.format = d.format;
        inv.body = d.body;
        inv.props = m.props;
        inv.attempt = m.attempt;
        // The answer, now or later (a deferred handler answers from any thread; run_until_idle then
        // delivers it).
        responder respond([this, command, k, ctx, format = d.format, id = d.message_id](std::exception_ptr error,
                                                                                      std::string result) {
            bool rejected = true;
            outcome oc;
            oc.out = wire::encode_outcome(format, id, std::move(error), result, rejected);
            oc.topic = rejected ? wire::reject_topic(command) : wire::resolve_topic(command);
            if (!ctx->finish()) oc = outcome{true, {}, {}};  // cancelled: nothing is published for it
            {
                std::lock_guard<std::mutex> lk(m_);
                running_.erase(k);
                outcomes_[k] = oc;
            }
            if (!oc.cancelled) accept(oc.topic, std::move(oc.out));
        });
        try {
            fn(inv, *ctx, respond);
        } catch (...) {
            respond.reject(std::current_exception());
        }
    }

    void handle_cancel(const std::string& command, const message& m) {
        auto id = wire::decode_message_id(m.payload, m.props);
        if (!id || id->empty()) throw parse_error("cancel without a message id");
        const std::string k = key(command, *id);
        std::shared_ptr<detail::running_call> ctx;
        {
            std::lock_guard<std::mutex> lk(m_);
            auto r = running_.find(k);
            if (r != running_.end())
                ctx = r->second;
            else if (!outcomes_.count(k))
                cancelled_early_.insert(k);  // finished calls are not affected
        }
        if (ctx) ctx->cancel();
    }

    // ---- caller ----
    std::string make_id() {
        std::lock_guard<std::mutex> lk(m_);
        const auto hi = rng_();
        return detail::format_message_id(hi, rng_());
    }

    /// subscribe_results handlers, or user subscriptions matching both result topics.
    bool results_subscribed_locked(const std::string& command) const {
        auto rh = result_handlers_.find(command);
        if (rh != result_handlers_.end() && !rh->second.empty()) return true;
        const std::string res = wire::resolve_topic(command), rej = wire::reject_topic(command);
        bool r = false, j = false;
        for (const auto& l : lanes_) {
            const bool counts = std::any_of(l->handlers.begin(), l->handlers.end(),
                                            [](const handler_entry& h) { return h.kind == handler_kind::user; });
            if (!counts) continue;
            r = r || topic_matches(l->filter, res);
            j = j || topic_matches(l->filter, rej);
        }
        return r && j;
    }

    /// The results lanes of `command` (resolve and reject), shared by subscribe_results and call_async
    /// and kept once made, as with xymqtt::client.
    void ensure_results_lanes_locked(const std::string& command) {
        if (results_lanes_.count(command)) return;
        const subscription_id id = new_id_locked();
        results_lanes_[command] = id;
        for (bool rejected : {false, true})
            add_handler_locked(rejected ? wire::reject_topic(command) : wire::resolve_topic(command), id,
                               handler_kind::internal,
                               std::make_shared<message_handler>([this, command, rejected](const message& m) {
                                   handle_result(command, rejected, m);
                               }));
    }

    void handle_result(const std::string& command, bool rejected, const message& m) {
        command_result r = wire::decode_result(command, rejected, m.payload, m.props);  // parse_error: dead
        call_completion awaited;
        std::vector<std::shared_ptr<result_handler>> handlers;
        {
            std::lock_guard<std::mutex> lk(m_);
            auto a = async_.find(r.message_id);
            if (a != async_.end()) {  // call_async: the future gets it, nobody else
                awaited = std::move(a->second.done);
                async_.erase(a);
                calls_.erase(r.message_id);
            } else {
                if (!calls_.count(r.message_id) || handing_over_.count(r.message_id))
                    return;  // not a call of ours, or handed over already (or right now)
                auto it = result_handlers_.find(command);
                if (it != result_handlers_.end())
                    for (const auto& kv : it->second) handlers.push_back(kv.second);
                if (handlers.empty())
                    throw error("no result handler for " + command + " (kept until one is subscribed)");
                handing_over_.insert(r.message_id);
            }
        }
        if (awaited) {
            awaited(nullptr, std::move(r));
            return;
        }
        try {
            for (const auto& h : handlers) (*h)(r);
        } catch (...) {
            std::lock_guard<std::mutex> lk(m_);
            handing_over_.erase(r.message_id);
            throw;
        }
        std::lock_guard<std::mutex> lk(m_);
        handing_over_.erase(r.message_id);
        calls_.erase(r.message_id);
    }

    subscription_id subscribe_results(const std::string& command, result_handler handler) {
        validate_topic_name(command);
        if (!handler) throw error("subscribe_results needs a handler");
        std::lock_guard<std::mutex> lk(m_);
        ensure_results_lanes_locked(command);
        const subscription_id id = new_id_locked();
        result_handlers_[command][id] = std::make_shared<result_handler>(std::move(handler));
        cv_.notify_all();
        return id;
    }

    void send_cancel(const std::string& command, const std::string& message_id, wire_format f) {
        {
            std::lock_guard<std::mutex> lk(m_);
            if (stopping_) throw client_closed("cannot cancel: the loopback is destroyed");
        }
        accept(wire::cancel_topic(command), wire::encode_cancel(f, message_id));
    }

    call_handle make_handle(const std::string& command, const std::string& id, wire_format f) {
        std::weak_ptr<impl> self = shared_from_this();
        return call_handle(command, id, [self, command, id, f] {
            auto s = self.lock();
            if (!s) throw client_closed("cannot cancel: the loopback is destroyed");
            s->send_cancel(command, id, f);
        });
    }

    call_handle call(const std::string& command, std::string body, call_options o) {
        validate_topic_name(command);
        {
            std::lock_guard<std::mutex> lk(m_);
            if (!results_subscribed_locked(command))
                throw call_with_no_subscription("call of " + command + " needs subscriptions to " +
                                                wire::resolve_topic(command) + " and " +
                                                wire::reject_topic(command) + " (subscribe_results)");
        }
        const std::string id = make_id();
        wire::outgoing out = wire::encode_invoke(o.format, id, body, o.expiry);
        if (auto f = take_failure()) std::rethrow_exception(f->first);
        {
            std::lock_guard<std::mutex> lk(m_);
            calls_.insert(id);
        }
        accept(wire::invoke_topic(command), std::move(out));
        return make_handle(command, id, o.format);
    }

    call_handle call_async(const std::string& command, std::string body, call_options o,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done) {
        if (!done) throw configuration_error("call_async of " + command + " needs a completion");
        validate_topic_name(command);
        const std::string id = make_id();
        wire::outgoing out = wire::encode_invoke(o.format, id, body, o.expiry);
        if (auto f = take_failure()) {
            if (f->second == failure_point::thrown) std::rethrow_exception(f->first);
            done(f->first, {});
            return call_handle(command, id, {});
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            ensure_results_lanes_locked(command);
            async_call a;
            a.command = command;
            a.format = o.format;
            a.done = std::move(done);
            if (timeout) a.deadline = now_locked() + *timeout;
            async_.emplace(id, std::move(a));
            calls_.insert(id);
        }
        accept(wire::invoke_topic(command), std::move(out));
        return make_handle(command, id, o.format);
    }

    /// Fails the call_async futures whose timeout has run out, and cancels their calls. A result that
    /// arrives later is ignored.
    void fire_due_timeouts() {
        std::vector<std::pair<std::string, async_call>> due;
        {
            std::lock_guard<std::mutex> lk(m_);
            const auto now = now_locked();
            for (auto it = async_.begin(); it != async_.end();) {
                if (it->second.deadline && *it->second.deadline <= now) {
                    calls_.erase(it->first);
                    due.emplace_back(it->first, std::move(it->second));
                    it = async_.erase(it);
                } else {
                    ++it;
                }
            }
        }
        for (auto& d : due) {
            d.second.done(std::make_exception_ptr(
                              timeout_error("no result for " + d.second.command + " call " + d.first + " in time")),
                          {});
            try {
                send_cancel(d.second.command, d.first, d.second.format);
            } catch (const std::exception&) {
                // destroyed meanwhile: nothing to cancel through
            }
        }
    }

    // ---- scheduling ----
    struct job {
        std::shared_ptr<lane> l;
        delivery d;
        std::vector<handler_entry> handlers;
    };

    std::shared_ptr<lane> pick_locked(steady::time_point now, bool ignore_time, const std::string* filter) const {
        std::shared_ptr<lane> best;
        for (const auto& l : lanes_) {
            if (l->busy || l->queue.empty()) continue;
            if (filter && l->filter != *filter) continue;
            if (!ignore_time && l->queue.front().due > now) continue;
            if (!best || l->queue.front().seq < best->queue.front().seq) best = l;
        }
        return best;
    }

    job claim_locked(const std::shared_ptr<lane>& l) {
        job j{l, std::move(l->queue.front()), l->handlers};
        l->queue.pop_front();
        l->busy = true;
        ++running_count_;
        ++stats_.deliveries;
        return j;
    }

    /// Runs one claimed delivery; called and returns without the lock.
    void execute(job j) {
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
        enum { ok, retry, dead } result = ok;
        std::chrono::milliseconds delay{0};
        dead_letter_record dl;
        {
            std::lock_guard<std::mutex> lk(m_);
            if (undecodable || failure) {
                const bool out_of_attempts = opts_.retry.max_attempts != 0 && j.d.msg.attempt >= opts_.retry.max_attempts;
                if (undecodable || out_of_attempts) {
                    result = dead;
                    dl.msg = j.d.msg;
                    dl.filter = j.l->filter;
                    dl.reason = undecodable ? *undecodable
                                            : "gave up after " + std::to_string(j.d.msg.attempt) +
                                                  " attempts: " + *failure;
                    dl.undecodable = undecodable.has_value();
                    dead_letters_.push_back(dl);
                    ++stats_.dead_letters;
                } else {
                    result = retry;
                    delay = opts_.retry.delay_after(j.d.msg.attempt);
                    ++stats_.retries;
                    delivery again = j.d;
                    again.msg.attempt += 1;
                    again.seq = next_seq_++;
                    again.due = now_locked() + delay;
                    if (!j.l->removed)
                        j.l->queue.push_front(std::move(again));
                    else
                        parked_[j.l->filter].push_front(std::move(again));
                }
            } else {
                ++stats_.handled;
            }
        }
        // Hooks run before the lane is released, so that an observer of idleness has seen them.
        if (result == retry) {
            call_hook(opts_.hooks.on_message_retry, j.d.msg, *failure, delay);
        } else if (result == dead) {
            if (dl.undecodable) call_hook(opts_.hooks.on_parse_error, dl.msg, dl.reason);
            call_hook(opts_.hooks.on_dead_letter, dl.msg, dl.reason);
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            j.l->busy = false;
            --running_count_;
        }
        cv_.notify_all();
    }

    bool run_one(const std::string* filter) {
        if (opts_.mode != delivery_mode::manual)
            throw std::logic_error("loopback: run_one/run_until_idle are for delivery_mode::manual");
        fire_due_timeouts();
        job j;
        {
            std::lock_guard<std::mutex> lk(m_);
            auto l = pick_locked(now_locked(), true, filter);
            if (!l) return false;
            j = claim_locked(l);
        }
        execute(std::move(j));
        return true;
    }

    std::size_t run_until_idle(std::size_t max) {
        std::size_t n = 0;
        while (n < max && run_one(nullptr)) ++n;
        return n;
    }

    bool idle_locked() const {
        if (running_count_ != 0) return false;
        for (const auto& l : lanes_)
            if (!l->queue.empty()) return false;
        return true;
    }

    bool wait_idle(std::chrono::milliseconds timeout) {
        if (opts_.mode == delivery_mode::manual) {
            run_until_idle(100000);
            std::lock_guard<std::mutex> lk(m_);
            return idle_locked();
        }
        std::unique_lock<std::mutex> lk(m_);
        return cv_.wait_for(lk, timeout, [&] { return idle_locked(); });
    }

    void spawn_worker_locked() {
        if (stopping_ || workers_.size() >= 256) return;
        workers_.emplace_back([this] { worker_loop(); });
    }

    void worker_loop() {
        std::unique_lock<std::mutex> lk(m_);
        while (!stopping_) {
            const auto now = now_locked();
            bool timeout_due = false;
            std::optional<steady::time_point> wake;
            for (const auto& a : async_) {
                if (!a.second.deadline) continue;
                if (*a.second.deadline <= now) timeout_due = true;
                if (!wake || *a.second.deadline < *wake) wake = a.second.deadline;
            }
            if (timeout_due) {
                lk.unlock();
                fire_due_timeouts();
                lk.lock();
                continue;
            }
            if (auto l = pick_locked(now, false, nullptr)) {
                job j = claim_locked(l);
                if (idle_workers_ == 0) spawn_worker_locked();  // keep one free for the other lanes
                lk.unlock();
                execute(std::move(j));
                lk.lock();
                continue;
            }
            for (const auto& l : lanes_)
                if (!l->busy && !l->queue.empty() && (!wake || l->queue.front().due < *wake))
                    wake = l->queue.front().due;
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
        if (!topic) return published_;
        std::vector<published_message> out;
        for (const auto& p : published_)
            if (p.topic == *topic) out.push_back(p);
        return out;
    }
    void clear_published() {
        std::lock_guard<std::mutex> lk(m_);
        published_.clear();
    }
    std::vector<dead_letter_record> dead_letters() const {
        std::lock_guard<std::mutex> lk(m_);
        return dead_letters_;
    }
    bool replay_dead_letter(const std::string& id) {
        {
            std::lock_guard<std::mutex> lk(m_);
            auto it = std::find_if(dead_letters_.begin(), dead_letters_.end(),
                                   [&](const dead_letter_record& d) { return d.msg.id == id; });
            if (it == dead_letters_.end()) return false;
            delivery d;
            d.msg = it->msg;
            d.msg.attempt = 1;
            d.seq = next_seq_++;
            d.due = now_locked();
            auto l = std::find_if(lanes_.begin(), lanes_.end(),
                                  [&](const std::shared_ptr<lane>& x) { return x->filter == it->filter; });
            if (l != lanes_.end())
                (*l)->queue.push_back(std::move(d));
            else
                parked_[it->filter].push_back(std::move(d));
            dead_letters_.erase(it);
        }
        cv_.notify_all();
        return true;
    }
    bool purge_dead_letter(const std::string& id) {
        std::lock_guard<std::mutex> lk(m_);
        auto it = std::find_if(dead_letters_.begin(), dead_letters_.end(),
                               [&](const dead_letter_record& d) { return d.msg.id == id; });
        if (it == dead_letters_.end()) return false;
        dead_letters_.erase(it);
        return true;
    }
    void clear_dead_letters() {
        std::lock_guard<std::mutex> lk(m_);
        dead_letters_.clear();
    }
    std::vector<std::string> subscribed_filters() const {
        std::lock_guard<std::mutex> lk(m_);
        std::vector<std::string> out;
        for (const auto& l : lanes_)
            if (std::find(out.begin(), out.end(), l->filter) == out.end()) out.push_back(l->filter);
        return out;
    }
    loopback_stats stats() const {
        std::lock_guard<std::mutex> lk(m_);
        loopback_stats s = stats_;
        s.pending = running_count_;
        for (const auto& l : lanes_) s.pending += l->queue.size();
        return s;
    }

private:
    const options opts_;
    mutable std::mutex m_;
    std::condition_variable cv_;
    std::chrono::milliseconds offset_{0};
    std::mt19937_64 rng_;

    std::vector<std::shared_ptr<lane>> lanes_;
    std::map<subscription_id, std::vector<std::shared_ptr<lane>>> regs_;
    std::map<std::string, std::size_t> round_robin_;
    std::map<std::string, published_message> retained_;
    std::map<std::string, std::deque<delivery>> parked_;  // deliveries of filters with no handler now
    subscription_id next_sub_id_ = 0;
    std::uint64_t next_seq_ = 0;
    std::uint64_t next_message_id_ = 0;
    std::size_t running_count_ = 0;

    std::vector<published_message> published_;
    std::vector<dead_letter_record> dead_letters_;
    std::deque<std::pair<std::exception_ptr, failure_point>> failures_;
    loopback_stats stats_;

    std::map<std::string, command_entry> commands_;
    std::map<std::string, outcome> outcomes_;
    std::map<std::string, std::shared_ptr<detail::running_call>> running_;
    std::set<std::string> cancelled_early_;

    std::set<std::string> calls_;         // ids of calls made here whose result is not handed over yet
    std::set<std::string> handing_over_;  // results being handed to the result handlers right now
    std::map<std::string, subscription_id> results_lanes_;
    std::map<std::string, std::map<subscription_id, std::shared_ptr<result_handler>>> result_handlers_;
    std::map<std::string, async_call> async_;

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
