#include "commands/command_caller.h"

#include <algorithm>
#include <set>
#include <tuple>

#include "base/hook_calls.h"
#include "commands/wire.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::detail {

namespace {

// The kind of a call's record in the calls table, and of its invoke in the outbox.
constexpr const char* kind_call = "call";

}  // namespace

command_caller::command_caller(command_host& host, const hooks& h, options opts)
    : host_(host), hooks_(h), opts_(std::move(opts)) {}

void command_caller::log(log_level level, const std::string& text) const { log_to(hooks_, level, text); }

result_routing command_caller::routing_of(std::optional<result_routing> routing) const {
    const auto r = routing.value_or(opts_.routing);
    if (r == result_routing::per_client && opts_.results_root.empty()) throw configuration_error(opts_.no_results_root);
    return r;
}

std::string command_caller::results_filter() const {
    return opts_.results_root.empty() ? std::string() : opts_.results_root + "/#";
}

void command_caller::ensure_results_lane(const std::string& command, result_routing routing) {
    if (routing == result_routing::per_client) {
        // Per-client result topics: one lane for the results of every command this client calls. Made
        // under a lock of its own: no call may publish its invoke before the SUBSCRIBE has gone first.
        std::lock_guard<std::mutex> once(root_mu_);
        if (!root_sub_)
            root_sub_ = host_.subscribe(
                results_filter(), [this](const message& m, effects& fx) { handle_routed_result(m, fx); }, 1);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        if (result_lanes_.count(command)) return;
        result_lanes_[command] = {0, 0};
    }
    const auto a = host_.subscribe(
        wire::resolve_topic(command),
        [this, command](const message& m, effects& fx) { handle_result(command, false, m, fx); }, 1);
    const auto b = host_.subscribe(
        wire::reject_topic(command),
        [this, command](const message& m, effects& fx) { handle_result(command, true, m, fx); }, 1);
    std::lock_guard<std::mutex> lk(results_mu_);
    result_lanes_[command] = {a, b};
}

void command_caller::results_subscription(int reason_code) {
    std::map<std::string, call_completion> failed;
    std::string why;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (reason_code < 0x80) {
            refused_.clear();  // granted (again: the ACL may have been fixed)
            return;
        }
        why = "the broker refused this client's result topics " + results_filter() + " (reason code " +
              std::to_string(reason_code) + "): results of its calls cannot reach it; a broker ACL must let " +
              opts_.client_id + " read them";
        refused_ = why;
        failed.swap(awaiting_);
    }
    log(log_level::error, why);
    for (auto& [id, done] : failed) done(std::make_exception_ptr(broker_error(why, reason_code)), {});
}

std::optional<std::pair<std::string, bool>> command_caller::routed_result_topic(const std::string& topic) const {
    // <root>/<command>/resolve or <root>/<command>/reject
    const auto rest = topic.substr(std::min(topic.size(), opts_.results_root.size() + 1));
    const auto slash = rest.rfind('/');
    if (slash == std::string::npos || slash == 0) return std::nullopt;
    const auto kind = rest.substr(slash + 1);
    if (kind != "resolve" && kind != "reject") return std::nullopt;
    return std::make_pair(rest.substr(0, slash), kind == "reject");
}

void command_caller::handle_routed_result(const message& m, effects& fx) {
    const auto routed = routed_result_topic(m.topic);
    if (!routed) {
        log(log_level::warning, "message on this client's result topics ignored: " + m.topic +
                                    " is not <command>/resolve or <command>/reject");
        return;
    }
    handle_result(routed->first, routed->second, m, fx);
}

std::optional<command_result> command_caller::awaited_result(const stored_message& rec) {
    // Only while a call_async waits (every other arrival leaves here, after one lock), and only on a lane
    // with the caller's result handler alone: a subscription of the application with the same filter
    // shares the lane, and must see the message.
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (awaiting_.empty()) return std::nullopt;
    }
    const auto sole = host_.sole_handler(rec.lane);
    if (!sole) return std::nullopt;
    const subscription_id only = *sole;
    std::string command;
    bool rejected = false;
    if (only == root_sub_ && root_sub_ != 0) {
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

void command_caller::answer(const command_result& r) {
    if (auto awaiting = take_awaiting(r.message_id)) awaiting(nullptr, r);
}

void command_caller::handle_result(const std::string& command, bool rejected, const message& m, effects& fx) {
    command_result r = wire::decode_result(command, rejected, m.payload, m.props);
    if (!wire::valid_message_id(r.message_id)) {
        log(log_level::debug, "result with a message id this client never makes ignored");
        return;
    }
    if (awaits(r.message_id)) {
        // Handed over once the removal is committed: a failed commit leaves the completion for the retry.
        fx.ops.push_back({table::calls, r.message_id, std::nullopt});
        fx.after_commit.push_back([this, r] { answer(r); });
        return;
    }
    if (!host_.stored(table::calls, r.message_id)) {
        // Not ours, or handed over already: the protocol says ignore it.
        log(log_level::debug, "result for unknown message id " + r.message_id + " ignored");
        return;
    }
    std::vector<result_handler> handlers;
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

std::optional<stored_message> command_caller::refused(const stored_message& invoke, int reason_code,
                                                      const std::string& why, std::vector<write_op>& ops) {
    const auto id = wire::decode_message_id(invoke.payload, invoke.props);
    if (!id) return std::nullopt;
    if (auto p = take_awaiting(*id)) {
        // call_async: its future fails with the broker's reason.
        ops.push_back({table::calls, *id, std::nullopt});
        p(std::make_exception_ptr(broker_error(why, reason_code)), {});
        return std::nullopt;
    }
    // call(): a refused invoke never reaches a server, so its result handlers get a reject from here,
    // through the inbox like any result.
    const auto command = invoke.topic.substr(0, invoke.topic.size() - std::string("/invoke").size());
    const int status = reason_code == 0x87 ? 403 : 502;
    auto out = wire::encode_reject(wire::detect_format(invoke.props), *id, status, why, "");
    stored_message rec;
    rec.topic = wire::reject_topic(command);
    rec.payload = std::move(out.payload);
    rec.props = std::move(out.props);
    rec.created_ms = host_.wall_ms();
    return rec;
}

subscription_id command_caller::subscribe_results(const std::string& command, result_handler handler,
                                                  std::optional<result_routing> routing) {
    validate_topic_name(command);
    if (!handler) throw error("subscribe_results needs a handler");
    ensure_results_lane(command, routing_of(routing));
    const subscription_id id = host_.new_subscription_id();
    std::lock_guard<std::mutex> lk(results_mu_);
    result_handlers_[command][id] = std::move(handler);
    return id;
}

bool command_caller::remove_result_handler(subscription_id id) {
    std::lock_guard<std::mutex> lk(results_mu_);
    for (auto& [cmd, hs] : result_handlers_)
        if (hs.erase(id)) return true;
    return false;
}

bool command_caller::has_result_subscription(const std::string& command, result_routing routing) const {
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
    for (const auto& [id, f] : host_.handler_filters()) {
        if (internal.count(id)) continue;  // the awaitable form's own subscriptions do not count
        has_resolve = has_resolve || topic_matches(f, resolve);
        has_reject = has_reject || topic_matches(f, reject);
    }
    return has_resolve && has_reject;
}

std::string command_caller::start_call(const std::string& command, std::string body, const call_options& opts,
                                       result_routing routing, call_completion awaiting) {
    if (opts.format == wire_format::binary && opts_.mqtt_version != 5)
        throw configuration_error("the binary format carries the message id in MQTT 5 properties: use MQTT 5 or JSON");
    const bool per_client = routing == result_routing::per_client;
    if (per_client) {
        // Nothing is accepted that could never be answered.
        std::lock_guard<std::mutex> lk(mu_);
        if (!refused_.empty()) throw broker_error(refused_, 0x87);
    }
    const auto id = make_message_id();
    auto out = wire::encode_invoke(opts.format, id, body, opts.expiry);
    if (per_client) {
        out.props.response_topic = opts_.results_root + "/" + command;
        out.props.correlation_data = id;
    }
    auto pub = host_.make_publish(wire::invoke_topic(command), std::move(out.payload), std::move(out.props), kind_call);
    stored_message c;
    c.topic = command;
    c.kind = kind_call;
    c.created_ms = host_.wall_ms();
    if (opts_.resend_after) {
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
        std::vector<stored_publish> pubs;
        pubs.push_back(std::move(pub));
        host_.commit({write_op{table::calls, id, encode_record(c)}}, std::move(pubs));
    } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        awaiting_.erase(id);
        throw;
    }
    if (opts_.resend_after) schedule_resend(id, *opts_.resend_after);
    return id;
}

void command_caller::schedule_resend(const std::string& id, std::chrono::milliseconds after) {
    host_.schedule(std::chrono::steady_clock::now() + after, [this, id, after] {
        if (stopping_) return;
        std::optional<std::string> rec;
        try {
            rec = host_.stored(table::calls, id);
        } catch (const std::exception& e) {
            log(log_level::warning, "call " + id + " not sent again: its record is unreadable: " + e.what());
            return;
        }
        if (!rec) return;  // answered, timed out or cancelled
        const auto call = decode_record(*rec);
        if (call.payload.empty() && call.props == message_properties{}) return;  // stored without its invoke
        try {
            host_.commit({}, {host_.make_publish(wire::invoke_topic(call.topic), call.payload, call.props, kind_call)});
            log(log_level::info, "call " + id + " of " + call.topic + " unanswered after " +
                                     std::to_string(after.count()) + " ms: its invoke is sent again");
        } catch (const std::exception& e) {
            log(log_level::warning, "call " + id + " could not be sent again: " + e.what());
        }
        schedule_resend(id, std::min<std::chrono::milliseconds>(after * 2, std::chrono::hours(1)));
    });
}

void command_caller::resume(const std::vector<std::string>& ids) {
    if (!opts_.resend_after) return;
    for (const auto& id : ids) schedule_resend(id, *opts_.resend_after);
}

bool command_caller::awaits(const std::string& id) const {
    std::lock_guard<std::mutex> lk(mu_);
    return awaiting_.count(id) > 0;
}

call_completion command_caller::take_awaiting(const std::string& id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = awaiting_.find(id);
    if (it == awaiting_.end()) return {};
    auto p = std::move(it->second);
    awaiting_.erase(it);
    return p;
}

call_handle command_caller::make_handle(const std::string& command, const std::string& id, wire_format format) {
    return call_handle(command, id, [this, alive = alive_, closed = opts_.closed, command, id, format] {
        if (!*alive) throw client_closed("cannot cancel: " + closed);
        cancel_call(command, id, format);
    });
}

void command_caller::cancel_call(const std::string& command, const std::string& message_id, wire_format format) {
    auto out = wire::encode_cancel(format, message_id);
    std::vector<write_op> ops;
    if (opts_.resend_after) {
        // A cancelled call is not sent again: its record keeps no invoke.
        if (auto rec = host_.stored(table::calls, message_id)) {
            auto call = decode_record(*rec);
            call.payload.clear();
            call.props = {};
            ops.push_back({table::calls, message_id, encode_record(call)});
        }
    }
    // Stored before returning, like the invoke: a cancel is not lost if the caller exits right after.
    host_.commit(std::move(ops), {host_.make_publish(wire::cancel_topic(command), std::move(out.payload),
                                                     std::move(out.props), "cancel")});
}

call_handle command_caller::call(const std::string& command, std::string body, const call_options& opts) {
    validate_topic_name(command);
    const auto routing = routing_of(opts.results);
    if (routing == result_routing::per_client) ensure_results_lane(command, routing);
    if (!has_result_subscription(command, routing))
        throw call_with_no_subscription("call of " + command + " needs subscriptions to " + wire::resolve_topic(command) +
                                        " and " + wire::reject_topic(command) +
                                        " (subscribe_results): results may arrive while this client is offline");
    const auto id = start_call(command, std::move(body), opts, routing, nullptr);
    return make_handle(command, id, opts.format);
}

call_handle command_caller::call_async(const std::string& command, std::string body, const call_options& opts,
                                       std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    if (!done) throw configuration_error("call_async of " + command + " needs a completion");
    validate_topic_name(command);
    const auto routing = routing_of(opts.results);
    ensure_results_lane(command, routing);
    const auto id = start_call(command, std::move(body), opts, routing, std::move(done));
    const auto f = opts.format;
    if (timeout) {
        host_.schedule(std::chrono::steady_clock::now() + *timeout, [this, command, id, f, t = *timeout] {
            const auto p = take_awaiting(id);
            if (!p) return;
            // Forget the call, so a late result is ignored instead of waiting for a handler forever.
            host_.commit_later({{table::calls, id, std::nullopt}});
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

void command_caller::stop() { stopping_ = true; }

void command_caller::close(std::exception_ptr why) {
    stopping_ = true;
    *alive_ = false;
    std::map<std::string, call_completion> awaiting;
    {
        std::lock_guard<std::mutex> lk(mu_);
        awaiting.swap(awaiting_);
    }
    for (auto& [id, done] : awaiting) done(why, {});
}

}  // namespace xymqtt::detail
