#include "commands/command_server.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>

#include "base/hook_calls.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::detail {

namespace {

// Kinds of records in the results table.
constexpr const char* kind_resolve = "resolve";
constexpr const char* kind_reject = "reject";
constexpr const char* kind_cancelled = "cancelled";

}  // namespace

class command_server::answer_gate {
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

command_server::command_server(command_host& host, const hooks& h)
    : host_(host), hooks_(h), answer_gate_(std::make_shared<answer_gate>()) {}

void command_server::log(log_level level, const std::string& text) const { log_to(hooks_, level, text); }

void command_server::add(const std::string& command, command_handler handler, const command_options& opts) {
    if (!handler) throw error("command_register needs a handler");
    runner run;
    run.sync = std::make_shared<const command_handler>(std::move(handler));
    add(command, std::move(run), opts);
}

void command_server::add(const std::string& command, deferred_command_handler handler, const command_options& opts) {
    if (!handler) throw error("command_register needs a handler");
    runner run;
    run.deferred = std::make_shared<const deferred_command_handler>(std::move(handler));
    add(command, std::move(run), opts);
}

void command_server::add(const std::string& command, runner run, const command_options& opts) {
    wire::validate_command(command, opts);
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (commands_.count(command)) throw command_already_registered("command " + command + " is already registered");
        commands_[command] = entry{};
    }
    const std::string invoke = opts.group.empty() ? wire::invoke_topic(command)
                                                  : "$share/" + opts.group + "/" + wire::invoke_topic(command);
    entry e;
    // A synchronous handler with concurrency 1 runs on the invoke lane's own thread; above, on the
    // command's threads. A deferred one needs none. The lane keeps up to `concurrency` invokes at work.
    if (run.sync && opts.concurrency > 1)
        run.workers = worker_pool::start(opts.concurrency, [this] { host_.mark_handler_thread(); });
    e.workers = run.workers;
    e.invoke_sub = host_.subscribe(
        invoke, [this, command, run](const message& m, effects& fx) { serve_invoke(command, run, m, fx); },
        opts.concurrency);
    // Cancels are not shared: the server that runs the call must hear its cancel.
    e.cancel_sub = host_.subscribe(wire::cancel_topic(command),
                                   [this, command](const message& m, effects& fx) { serve_cancel(command, m, fx); }, 1);
    std::lock_guard<std::mutex> lk(mu_);
    commands_[command] = e;
}

void command_server::remove(const std::string& command) {
    entry e;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = commands_.find(command);
        if (it == commands_.end()) return;
        e = it->second;
        commands_.erase(it);
        // Kept until their threads have ended (close() waits for them); the ended ones are let go here, so
        // that registering and unregistering a command again and again does not pile up pools.
        retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                              [](const auto& w) { return w->ended(); }),
                               retired_.end());
        if (e.workers) retired_.push_back(e.workers);
    }
    host_.unsubscribe(e.invoke_sub);
    host_.unsubscribe(e.cancel_sub);
    if (e.workers) e.workers->stop();  // the calls at work finish and are answered first
}

void command_server::serve_invoke(const std::string& command, const runner& run, const message& m,
                                effects& fx) {
    wire::decoded_invoke inv;
    try {
        inv = wire::decode_invoke(m.payload, m.props);
    } catch (const wire::undecodable_invoke& e) {
        if (e.message_id.empty()) throw parse_error(std::string("undecodable invoke: ") + e.what());
        // Answered, but not stored: without a decodable request there is no call to answer again.
        auto pub = make_outcome(command, kind_reject, undecodable_reject(e), e.message_id, m.props);
        fx.publishes.emplace_back(pub.seq, pub.msg);
        return;
    }

    // Durable dedupe: a repeated invoke gets the stored outcome again.
    if (auto prior = host_.stored(table::results, inv.message_id)) {
        stored_message r = decode_record(*prior);
        if (r.kind == kind_resolve || r.kind == kind_reject) {
            auto pub = host_.make_publish(r.topic, r.payload, r.props, r.kind);
            fx.publishes.emplace_back(pub.seq, pub.msg);
            log(log_level::debug, "repeated invoke " + inv.message_id + " answered from the stored result");
        }
        return;  // cancelled: nothing is published for it
    }
    if (invoke_expired(m, host_.wall_ms())) {
        host_.invoke_expired();
        publish_outcome(command, kind_reject, expired_reject(inv.format, inv.message_id), inv.message_id,
                        m.props, fx);
        return;
    }

    auto ctx = std::make_shared<running_call>();
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (running_.count(inv.message_id) || finalizing_.count(inv.message_id)) {
            // A repeated invoke while its first copy is at work (concurrency above 1): that copy answers,
            // and stays in the inbox until it has, so dropping this one loses nothing.
            log(log_level::debug, "repeated invoke " + inv.message_id + " while its first copy runs: left to it");
            return;
        }
        running_[inv.message_id] = ctx;
    }
    auto call = std::make_shared<invocation>();
    call->command = command;
    call->message_id = inv.message_id;
    call->format = inv.format;
    call->body = std::move(inv.body);
    call->props = m.props;
    call->attempt = m.attempt;
    if (run.deferred) {
        fx.later = [this, command, handler = run.deferred, call, ctx, gate = answer_gate_](
                       std::function<void(effects)> finish) {
            responder respond([this, command, call, ctx, gate, finish](std::exception_ptr error, std::string result) {
                // An answer after close() is dropped: the invoke stays in the inbox and runs again.
                if (!gate->enter()) return;
                effects fx;
                conclude_call(command, *call, ctx, std::move(error), result, fx);
                finish(std::move(fx));
                gate->leave();
            });
            try {
                (*handler)(*call, *ctx, respond);
            } catch (...) {
                respond.reject(std::current_exception());
            }
        };
        return;
    }
    if (!run.workers) return run_call(command, *run.sync, *call, ctx, fx);
    fx.later = [this, command, handler = run.sync, workers = run.workers, call, ctx](std::function<void(effects)> finish) {
        // Not taken once the command is unregistered or the client closes: the invoke stays in the inbox.
        workers->submit([this, command, handler, call, ctx, finish = std::move(finish)] {
            effects fx;
            run_call(command, *handler, *call, ctx, fx);
            finish(std::move(fx));
        });
    };
}

std::string command_server::outcome_topic(const std::string& command, bool rejected, const message_properties& invoke,
                                        const std::string& message_id) const {
    if (!invoke.response_topic.empty()) {
        try {
            validate_topic_name(invoke.response_topic);
            return invoke.response_topic + (rejected ? "/reject" : "/resolve");
        } catch (const invalid_topic& e) {
            log(log_level::warning, "invoke " + message_id + " of " + command + " names an invalid response topic (" +
                                     e.what() + "): answered on the shared result topics");
        }
    }
    return rejected ? wire::reject_topic(command) : wire::resolve_topic(command);
}

stored_publish command_server::make_outcome(const std::string& command, const char* kind,
                                                        wire::outgoing out, const std::string& message_id,
                                                        const message_properties& invoke) {
    const std::string topic = outcome_topic(command, kind != std::string(kind_resolve), invoke, message_id);
    // MQTT 5 request/response: the answer carries the request's correlation data back.
    if (!invoke.correlation_data.empty()) out.props.correlation_data = invoke.correlation_data;
    return host_.make_publish(topic, std::move(out.payload), std::move(out.props), kind);
}

void command_server::publish_outcome(const std::string& command, const char* kind, wire::outgoing out,
                                   const std::string& message_id, const message_properties& invoke, effects& fx) {
    auto pub = make_outcome(command, kind, std::move(out), message_id, invoke);
    fx.publishes.emplace_back(pub.seq, pub.msg);
    // The outcome is kept so that a repeated invoke is answered without running the handler again.
    stored_message r = *pub.msg;
    r.kind = kind;
    fx.ops.push_back({table::results, message_id, encode_record(r)});
}

void command_server::run_call(const std::string& command, const command_handler& handler, const invocation& call,
                            const std::shared_ptr<running_call>& ctx, effects& fx) {
    std::exception_ptr error;
    std::string result;
    try {
        result = handler(call, *ctx);
    } catch (...) {
        error = std::current_exception();
    }
    conclude_call(command, call, ctx, std::move(error), result, fx);
}

void command_server::conclude_call(const std::string& command, const invocation& call,
                                 const std::shared_ptr<running_call>& ctx, std::exception_ptr error,
                                 const std::string& result, effects& fx) {
    // The handler's outcome: its result, or the rejection that its exception stands for.
    bool rejected = true;
    auto out = wire::encode_outcome(call.format, call.message_id, std::move(error), result, rejected);

    // Decide between the outcome and a cancel that raced with it, under one lock with serve_cancel.
    std::lock_guard<std::mutex> lk(mu_);
    running_.erase(call.message_id);
    if (ctx->cancelled()) {
        stored_message r;
        r.kind = kind_cancelled;
        r.created_ms = host_.wall_ms();
        fx.ops.push_back({table::results, call.message_id, encode_record(r)});
        return;
    }
    finalizing_.insert(call.message_id);
    fx.after_commit.push_back([this, id = call.message_id] {
        std::lock_guard<std::mutex> g(mu_);
        finalizing_.erase(id);
    });
    publish_outcome(command, rejected ? kind_reject : kind_resolve, std::move(out), call.message_id, call.props, fx);
}

void command_server::serve_cancel(const std::string& command, const message& m, effects& fx) {
    auto id = wire::decode_message_id(m.payload, m.props);
    if (!id || id->empty()) throw parse_error("cancel of " + command + " without a message id");
    if (!wire::valid_message_id(*id))
        throw parse_error("cancel of " + command + " with a message id longer than " +
                          std::to_string(wire::max_message_id) + " bytes");
    std::shared_ptr<running_call> ctx;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (finalizing_.count(*id)) return;  // finished already: cancelling a finished call is harmless
        auto it = running_.find(*id);
        if (it != running_.end()) ctx = it->second;
    }
    if (ctx) {
        ctx->cancel();  // the invoke's own lane records the cancel when its handler returns
        return;
    }
    if (host_.stored(table::results, *id)) return;
    // Not started (or not yet arrived): remember, so the invoke is skipped when it comes.
    stored_message r;
    r.kind = kind_cancelled;
    r.created_ms = host_.wall_ms();
    fx.ops.push_back({table::results, *id, encode_record(r)});
}

std::size_t command_server::at_work() const {
    std::lock_guard<std::mutex> lk(mu_);
    return running_.size();
}

std::vector<std::shared_ptr<worker_pool>> command_server::pools(bool retired) const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::shared_ptr<worker_pool>> out;
    if (retired) out = retired_;
    for (const auto& [c, e] : commands_)
        if (e.workers) out.push_back(e.workers);
    return out;
}

void command_server::stop() {
    // A command's own threads finish the calls they run (their outcomes are committed), then end.
    for (auto& w : pools(false)) w->stop();
    answer_gate_->close();  // deferred answers under way are committed; later ones wait for a restart
}

void command_server::wait_ended() {
    for (auto& w : pools(true)) w->wait_ended();
}

}  // namespace xymqtt::detail
