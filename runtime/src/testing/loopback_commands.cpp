#include "testing/loopback_commands.h"

#include <algorithm>

#include "commands/wire.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::detail {

namespace {

command_caller::options caller_options() {
    command_caller::options o;
    o.no_results_root = "the loopback has no per-client result topics";
    o.closed = "the loopback is destroyed";
    return o;
}

}  // namespace

loopback_commands::loopback_commands(loopback_port& port, const hooks& h)
    : port_(port), server_(*this, h), caller_(*this, h, caller_options()) {}

void loopback_commands::command_register(const std::string& command, command_handler handler, command_options o) {
    wire::validate_command(command, o);
    o.concurrency = 1;
    server_.add(command, std::move(handler), o);
}

void loopback_commands::command_register(const std::string& command, deferred_command_handler handler,
                                         command_options o) {
    wire::validate_command(command, o);
    o.concurrency = 1;
    server_.add(command, std::move(handler), o);
}

call_handle loopback_commands::call(const std::string& command, std::string body, call_options o) {
    o.results = result_routing::shared;
    return caller_.call(command, std::move(body), o);
}

call_handle loopback_commands::call_async(const std::string& command, std::string body, call_options o,
                                          std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    o.results = result_routing::shared;
    return caller_.call_async(command, std::move(body), o, timeout, std::move(done));
}

void loopback_commands::fire_due(std::chrono::steady_clock::time_point now) {
    std::vector<std::function<void()>> due;
    {
        std::lock_guard<std::mutex> lk(mu_);
        while (!timers_.empty() && timers_.begin()->first <= now) {
            due.push_back(std::move(timers_.begin()->second));
            timers_.erase(timers_.begin());
        }
    }
    for (auto& f : due) f();
}

std::optional<std::chrono::steady_clock::time_point> loopback_commands::next_due() const {
    std::lock_guard<std::mutex> lk(mu_);
    if (timers_.empty()) return std::nullopt;
    return timers_.begin()->first;
}

subscription_id loopback_commands::subscribe(const std::string& filter, lane_handler handler, unsigned) {
    return port_.subscribe_internal(filter, [this, h = std::move(handler)](const message& m) {
        effects fx;
        h(m, fx);
        apply(std::move(fx));
    });
}

stored_publish loopback_commands::make_publish(const std::string& topic, std::string payload,
                                               message_properties props, const std::string& kind) {
    auto m = std::make_shared<stored_message>();
    m->topic = topic;
    m->payload = std::move(payload);
    m->props = std::move(props);
    m->kind = kind;
    std::lock_guard<std::mutex> lk(mu_);
    return stored_publish{++next_publish_, std::move(m), {}};
}

void loopback_commands::commit(std::vector<write_op> ops, std::vector<stored_publish> pubs) {
    const bool invoke = std::any_of(pubs.begin(), pubs.end(), [](const auto& p) { return p.msg->kind == "call"; });
    if (invoke)
        if (auto f = port_.take_failure_for_call()) std::rethrow_exception(f);
    effects fx;
    fx.ops = std::move(ops);
    for (auto& p : pubs) fx.publishes.emplace_back(p.seq, std::move(p.msg));
    apply(std::move(fx));
}

void loopback_commands::commit_later(std::vector<write_op> ops) {
    effects fx;
    fx.ops = std::move(ops);
    apply(std::move(fx));
}

std::optional<std::string> loopback_commands::stored(table t, const std::string& id) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto tb = tables_.find(t);
    if (tb == tables_.end()) return std::nullopt;
    auto it = tb->second.find(id);
    if (it == tb->second.end()) return std::nullopt;
    return it->second;
}

void loopback_commands::schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) {
    const auto offset = port_.clock_offset();
    {
        std::lock_guard<std::mutex> lk(mu_);
        timers_.emplace(at + offset, std::move(fn));  // on the loopback's clock
    }
    port_.timers_changed();
}

void loopback_commands::apply(effects fx) {
    if (fx.later) {
        auto later = std::move(fx.later);
        later([this](effects rest) { apply(std::move(rest)); });
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        for (const auto& op : fx.ops) {
            auto& t = tables_[op.tbl];
            if (op.value)
                t[op.id] = *op.value;
            else
                t.erase(op.id);
        }
    }
    for (const auto& [seq, msg] : fx.publishes) port_.accept(*msg);
    for (auto& f : fx.after_commit) f();
}

}  // namespace xymqtt::detail
