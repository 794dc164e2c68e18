// The calling side of the command protocol of xy-mqtt on top of the durable inbox and outbox
// (`<command>/invoke` and `/cancel` out, `/resolve` and `/reject` in), and the client's timers. The serving
// side is client/command_server.h.
#include <algorithm>
#include <tuple>

#include "client/client_impl.h"
#include "commands/wire.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt {

namespace {

// Kinds of records in the results table.
constexpr const char* kind_call = "call";

}  // namespace

// ---------------------------------------------------------------------------------------------------
// server (client/command_server.cpp)

void client::impl::command_register(const std::string& command, command_handler handler, command_options opts) {
    command_server_->add(command, std::move(handler), opts);
}

void client::impl::command_register(const std::string& command, deferred_command_handler handler,
                                    command_options opts) {
    command_server_->add(command, std::move(handler), opts);
}

void client::impl::command_unregister(const std::string& command) { command_server_->remove(command); }

// ---------------------------------------------------------------------------------------------------
// caller

result_routing client::impl::routing_of(std::optional<result_routing> routing) const {
    const auto r = routing.value_or(opts_.results);
    if (r == result_routing::per_client && results_root_.empty()) throw configuration_error(no_results_root_);
    return r;
}

void client::impl::ensure_results_lane(const std::string& command, result_routing routing) {
    if (routing == result_routing::per_client) {
        // Per-client result topics: one lane for the results of every command this client calls. Made
        // under a lock of its own: no call may publish its invoke before the SUBSCRIBE has gone first.
        std::lock_guard<std::mutex> once(results_root_mu_);
        if (!results_root_sub_)
            results_root_sub_ = add_handler(results_root_ + "/#",
                                            [this](const message& m, effects& fx) { handle_routed_result(m, fx); });
        return;
    }
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        if (result_lanes_.count(command)) return;
        result_lanes_[command] = {0, 0};
    }
    const auto a = add_handler(wire::resolve_topic(command), [this, command](const message& m, effects& fx) {
        handle_result(command, false, m, fx);
    });
    const auto b = add_handler(wire::reject_topic(command), [this, command](const message& m, effects& fx) {
        handle_result(command, true, m, fx);
    });
    std::lock_guard<std::mutex> lk(results_mu_);
    result_lanes_[command] = {a, b};
}

void client::impl::on_results_subscription(int reason_code) {
    std::map<std::string, call_completion> failed;
    std::string why;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (reason_code < 0x80) {
            results_refused_.clear();  // granted (again: the ACL may have been fixed)
            return;
        }
        why = "the broker refused this client's result topics " + results_root_ + "/# (reason code " +
              std::to_string(reason_code) + "): results of its calls cannot reach it; a broker ACL must let " +
              opts_.client_id + " read them";
        results_refused_ = why;
        failed.swap(awaiting_);
    }
    log(log_level::error, why);
    for (auto& [id, done] : failed) done(std::make_exception_ptr(broker_error(why, reason_code)), {});
}

std::optional<std::pair<std::string, bool>> client::impl::routed_result_topic(const std::string& topic) const {
    // <root>/<command>/resolve or <root>/<command>/reject
    const auto rest = topic.substr(std::min(topic.size(), results_root_.size() + 1));
    const auto slash = rest.rfind('/');
    if (slash == std::string::npos || slash == 0) return std::nullopt;
    const auto kind = rest.substr(slash + 1);
    if (kind != "resolve" && kind != "reject") return std::nullopt;
    return std::make_pair(rest.substr(0, slash), kind == "reject");
}

void client::impl::handle_routed_result(const message& m, effects& fx) {
    const auto routed = routed_result_topic(m.topic);
    if (!routed) {
        log(log_level::warning, "message on this client's result topics ignored: " + m.topic +
                                 " is not <command>/resolve or <command>/reject");
        return;
    }
    handle_result(routed->first, routed->second, m, fx);
}

std::optional<command_result> client::impl::awaited_result(const stored_message& rec) {
    // Only while a call_async waits (every other arrival leaves here, after one lock), and only on a lane
    // with the runtime's result handler alone: a subscription of the application with the same filter
    // shares the lane, and must see the message.
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (awaiting_.empty()) return std::nullopt;
    }
    const auto sole = inbox_->sole_handler(rec.lane);
    if (!sole) return std::nullopt;
    const subscription_id only = *sole;
    std::string command;
    bool rejected = false;
    bool per_client;
    {
        std::lock_guard<std::mutex> lk(results_root_mu_);
        per_client = only == results_root_sub_ && results_root_sub_ != 0;
    }
    if (per_client) {
        const auto routed = routed_result_topic(rec.topic);
        if (!routed) return std::nullopt;
        std::tie(command, rejected) = *routed;
    } else {
        // Shared result topics: the lane is the topic itself, `<command>/resolve` or `<command>/reject`.
        if (rec.lane != rec.topic) return std::nullopt;
        const auto slash = rec.topic.rfind('/');
        if (slash == std::string::npos) return std::nullopt;
        command = rec.topic.substr(0, slash);
        rejected = rec.topic.compare(slash + 1, std::string::npos, "reject") == 0;
        if (rec.topic != (rejected ? wire::reject_topic(command) : wire::resolve_topic(command))) return std::nullopt;
        std::lock_guard<std::mutex> lk(results_mu_);
        auto it = result_lanes_.find(command);
        if (it == result_lanes_.end() || only != (rejected ? it->second.second : it->second.first)) return std::nullopt;
    }
    command_result r;
    try {
        r = wire::decode_result(command, rejected, rec.payload, rec.props);
    } catch (const std::exception&) {
        return std::nullopt;  // the lane's way: a dead letter
    }
    if (!wire::valid_message_id(r.message_id) || !awaits(r.message_id)) return std::nullopt;
    return r;
}

void client::impl::on_arrived_result(const std::string& id, const stored_message& rec, const command_result& r) {
    // What the lane's handle_result does for an awaited result, without the inbox record, the hand-off to the
    // lane and a second synced commit: the round trip of a call is shorter by all three.
    const message m = detail::message_of(id, rec, 1);
    fire(opts_.hooks.on_message, m);
    if (auto awaiting = take_awaiting(r.message_id)) awaiting(nullptr, r);
    inbox_->handled_elsewhere();
}

void client::impl::handle_result(const std::string& command, bool rejected, const message& m, effects& fx) {
    command_result r = wire::decode_result(command, rejected, m.payload, m.props);
    if (!wire::valid_message_id(r.message_id)) {
        log(log_level::debug, "result with a message id this client never makes ignored");
        return;
    }
    std::vector<result_handler> handlers;
    if (awaits(r.message_id)) {
        // Handed over once the removal is committed: a failed commit leaves the completion for the retry.
        fx.ops.push_back({table::calls, r.message_id, std::nullopt});
        fx.after_commit.push_back([this, r] {
            if (auto awaiting = take_awaiting(r.message_id)) awaiting(nullptr, r);
        });
        return;
    }
    if (!store_->get(table::calls, r.message_id)) {
        // Not ours, or handed over already: the protocol says ignore it.
        log(log_level::debug, "result for unknown message id " + r.message_id + " ignored");
        return;
    }
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        auto it = result_handlers_.find(command);
        if (it != result_handlers_.end())
            for (auto& [id, h] : it->second) handlers.push_back(h);
    }
    if (handlers.empty()) throw error("no result handler for " + command + " (kept until one is subscribed)");
    for (auto& h : handlers) h(r);
    fx.ops.push_back({table::calls, r.message_id, std::nullopt});
}

subscription_id client::impl::subscribe_results(const std::string& command, result_handler handler,
                                                std::optional<result_routing> routing) {
    validate_topic_name(command);
    if (!handler) throw error("subscribe_results needs a handler");
    ensure_results_lane(command, routing_of(routing));
    subscription_id id;
    {
        std::lock_guard<std::mutex> lk(mu_);
        id = next_sub_++;
    }
    std::lock_guard<std::mutex> lk(results_mu_);
    result_handlers_[command][id] = std::move(handler);
    return id;
}

bool client::impl::remove_result_handler(subscription_id id) {
    std::lock_guard<std::mutex> lk(results_mu_);
    for (auto& [cmd, hs] : result_handlers_)
        if (hs.erase(id)) return true;
    return false;
}

bool client::impl::has_result_subscription(const std::string& command, result_routing routing) const {
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        auto it = result_handlers_.find(command);
        if (it != result_handlers_.end() && !it->second.empty()) return true;
    }
    if (routing == result_routing::per_client) return false;  // results come only to this client's own topics
    std::set<subscription_id> internal;
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        for (const auto& [cmd, ids] : result_lanes_) internal.insert({ids.first, ids.second});
    }
    const auto resolve = wire::resolve_topic(command), reject = wire::reject_topic(command);
    bool has_resolve = false, has_reject = false;
    for (const auto& [id, f] : inbox_->handler_filters()) {
        if (internal.count(id)) continue;  // the awaitable form's own subscriptions do not count
        has_resolve = has_resolve || topic_matches(f, resolve);
        has_reject = has_reject || topic_matches(f, reject);
    }
    return has_resolve && has_reject;
}

std::string client::impl::start_call(const std::string& command, std::string body, const call_options& opts,
                                     result_routing routing, call_completion awaiting) {
    if (opts.format == wire_format::binary && opts_.mqtt_version != 5)
        throw configuration_error("the binary format carries the message id in MQTT 5 properties: use MQTT 5 or JSON");
    const bool per_client = routing == result_routing::per_client;
    if (per_client) {
        // Nothing is accepted that could never be answered.
        std::lock_guard<std::mutex> lk(mu_);
        if (!results_refused_.empty()) throw broker_error(results_refused_, 0x87);
    }
    const auto id = make_message_id();
    auto out = wire::encode_invoke(opts.format, id, body, opts.expiry);
    if (per_client) {
        out.props.response_topic = results_root_ + "/" + command;
        out.props.correlation_data = id;
    }
    auto pub = make_publish(wire::invoke_topic(command), std::move(out.payload), std::move(out.props), false, kind_call);
    stored_message c;
    c.topic = command;
    c.kind = kind_call;
    c.created_ms = now_ms();
    if (opts_.resend_unanswered_after) {
        // Kept with the call, to be sent again while it is unanswered.
        c.payload = pub.msg->payload;
        c.props = pub.msg->props;
    }
    if (awaiting) {
        // Registered before the invoke is stored, so that a fast result finds its completion.
        std::lock_guard<std::mutex> lk(mu_);
        awaiting_[id] = awaiting;
    }
    try {
        // The call is remembered with its invoke, atomically: a result can only match a stored call.
        commit_publishes({{table::calls, id, encode_record(c)}}, {std::move(pub)});
    } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        awaiting_.erase(id);
        throw;
    }
    if (opts_.resend_unanswered_after) schedule_resend(id, *opts_.resend_unanswered_after);
    return id;
}

void client::impl::schedule_resend(const std::string& id, std::chrono::milliseconds after) {
    schedule(std::chrono::steady_clock::now() + after, [this, id, after] {
        if (closing_) return;
        std::optional<std::string> rec;
        try {
            rec = store_->get(table::calls, id);
        } catch (const std::exception& e) {
            log(log_level::warning, "call " + id + " not sent again: its record is unreadable: " + e.what());
            return;
        }
        if (!rec) return;  // answered, timed out or cancelled
        const auto call = decode_record(*rec);
        if (call.payload.empty() && call.props == message_properties{}) return;  // stored without its invoke
        try {
            commit_publishes({}, {make_publish(wire::invoke_topic(call.topic), call.payload, call.props, false, kind_call)});
            log(log_level::info, "call " + id + " of " + call.topic + " unanswered after " +
                                     std::to_string(after.count()) + " ms: its invoke is sent again");
        } catch (const std::exception& e) {
            log(log_level::warning, "call " + id + " could not be sent again: " + e.what());
        }
        schedule_resend(id, std::min<std::chrono::milliseconds>(after * 2, std::chrono::hours(1)));
    });
}

void client::impl::resume_resends() {
    if (!opts_.resend_unanswered_after) return;
    std::vector<std::string> ids;
    store_->for_each(table::calls, [&](const std::string& id, const std::string&) {
        ids.push_back(id);
        return true;
    });
    for (const auto& id : ids) schedule_resend(id, *opts_.resend_unanswered_after);
}

bool client::impl::awaits(const std::string& id) const {
    std::lock_guard<std::mutex> lk(mu_);
    return awaiting_.count(id) > 0;
}

call_completion client::impl::take_awaiting(const std::string& id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = awaiting_.find(id);
    if (it == awaiting_.end()) return {};
    auto p = std::move(it->second);
    awaiting_.erase(it);
    return p;
}

call_handle client::impl::make_handle(const std::string& command, const std::string& id, wire_format format) {
    return call_handle(command, id, [this, alive = alive_, command, id, format] {
        if (!*alive) throw client_closed("cannot cancel: the client is closed");
        cancel_call(command, id, format);
    });
}

void client::impl::cancel_call(const std::string& command, const std::string& message_id, wire_format format) {
    auto out = wire::encode_cancel(format, message_id);
    std::vector<write_op> ops;
    if (opts_.resend_unanswered_after) {
        // A cancelled call is not sent again: its record keeps no invoke.
        if (auto rec = store_->get(table::calls, message_id)) {
            auto call = decode_record(*rec);
            call.payload.clear();
            call.props = {};
            ops.push_back({table::calls, message_id, encode_record(call)});
        }
    }
    // Stored before returning, like the invoke: a cancel is not lost if the caller exits right after.
    commit_publishes(std::move(ops), {make_publish(wire::cancel_topic(command), std::move(out.payload),
                                                   std::move(out.props), false, "cancel")});
}

call_handle client::impl::call(const std::string& command, std::string body, call_options opts) {
    validate_topic_name(command);
    require_open();
    const auto routing = routing_of(opts.results);
    if (routing == result_routing::per_client) ensure_results_lane(command, routing);
    if (!has_result_subscription(command, routing))
        throw call_with_no_subscription("call of " + command + " needs subscriptions to " + wire::resolve_topic(command) +
                                        " and " + wire::reject_topic(command) +
                                        " (subscribe_results): results may arrive while this client is offline");
    const auto id = start_call(command, std::move(body), opts, routing, nullptr);
    return make_handle(command, id, opts.format);
}

call_handle client::impl::call_async(const std::string& command, std::string body, call_options opts,
                                     std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    if (!done) throw configuration_error("call_async of " + command + " needs a completion");
    validate_topic_name(command);
    require_open();
    const auto routing = routing_of(opts.results);
    ensure_results_lane(command, routing);
    const auto id = start_call(command, std::move(body), opts, routing, std::move(done));
    const auto f = opts.format;
    if (timeout) {
        schedule(std::chrono::steady_clock::now() + *timeout, [this, command, id, f, t = *timeout] {
            const auto p = take_awaiting(id);
            if (!p) return;
            // Forget the call, so a late result is ignored instead of waiting for a handler forever.
            committer_->submit({{table::calls, id, std::nullopt}}, nullptr);
            p(std::make_exception_ptr(
                  timeout_error("no result for " + command + " call " + id + " within " + std::to_string(t.count()) + " ms")),
              {});
            try {
                cancel_call(command, id, f);
            } catch (const std::exception& e) {
                log(log_level::warning, std::string("cancel after timeout failed: ") + e.what());
            }
        });
    }
    return make_handle(command, id, f);
}

// ---------------------------------------------------------------------------------------------------
// timers and retention

void client::impl::schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) {
    std::lock_guard<std::mutex> lk(timer_mu_);
    timers_.emplace(at, std::move(fn));
    timer_cv_.notify_one();
}

void client::impl::timer_loop() {
    auto next_purge = std::chrono::steady_clock::now() + std::chrono::hours(1);
    std::unique_lock<std::mutex> lk(timer_mu_);
    while (!closing_) {
        auto until = next_purge;
        if (!timers_.empty()) until = std::min(until, timers_.begin()->first);
        timer_cv_.wait_until(lk, until);
        if (closing_) break;
        const auto now = std::chrono::steady_clock::now();
        std::vector<std::function<void()>> due;
        while (!timers_.empty() && timers_.begin()->first <= now) {
            due.push_back(std::move(timers_.begin()->second));
            timers_.erase(timers_.begin());
        }
        const bool purge = now >= next_purge;
        if (purge) next_purge = now + std::chrono::hours(1);
        lk.unlock();
        for (auto& f : due) f();
        if (purge) purge_expired_results();
        lk.lock();
    }
}

void client::impl::purge_expired_results() {
    const auto cutoff = now_ms() - std::int64_t(opts_.result_retention.count()) * 1000;
    std::vector<write_op> ops;
    for (auto t : {table::results, table::calls}) {
        store_->for_each(t, [&](const std::string& id, const std::string& v) {
            try {
                if (decode_record(v).created_ms < cutoff) ops.push_back({t, id, std::nullopt});
            } catch (const storage_error&) {
                ops.push_back({t, id, std::nullopt});
            }
            return true;
        });
    }
    if (ops.empty()) return;
    try {
        committer_->commit(std::move(ops));
    } catch (const std::exception& e) {
        log(log_level::error, std::string("purging old command results failed: ") + e.what());
    }
}

}  // namespace xymqtt
