// The loopback's command protocol: the client's own (commands/command_server.h, commands/command_caller.h),
// hosted in memory. The results and calls tables are maps, a commit is applied at once, a publish goes
// back into the loopback, and timers run on the loopback's clock when it pumps (or its workers wake).
//
//  - Calls start one at a time whatever the command's concurrency (checked all the same): the loopback
//    is deterministic.
//  - Results come on the shared result topics (the loopback has no client id of its own).
//  - A failure injected for the next publish fails the next call's invoke; call_async takes it first.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "commands/command_caller.h"
#include "commands/command_host.h"
#include "commands/command_server.h"
#include "xymqtt/hooks.h"
#include "xymqtt/transport.h"

namespace xymqtt::detail {

/// What the loopback's commands need from the loopback: its lanes, its publishing and its clock.
class loopback_port {
public:
    virtual ~loopback_port() = default;
    /// Subscribes an internal handler (the protocol's, not the user's) to `filter`. @return its id
    virtual subscription_id subscribe_internal(const std::string& filter, message_handler handler) = 0;
    virtual void unsubscribe(subscription_id id) = 0;
    virtual subscription_id new_subscription_id() = 0;
    virtual std::optional<subscription_id> sole_handler(const std::string& filter) const = 0;
    virtual std::vector<std::pair<subscription_id, std::string>> handler_filters() const = 0;
    /// Publishes `m` into the loopback, as an accepted publish.
    virtual void accept(const stored_message& m) = 0;
    /// @return the failure injected for the next publish, taken, if any.
    virtual std::exception_ptr take_failure_for_call() = 0;
    /// @return how far the loopback's clock is ahead of the real one (advance_clock).
    virtual std::chrono::milliseconds clock_offset() const = 0;
    /// @return the loopback's wall clock, milliseconds since the epoch.
    virtual std::int64_t wall_ms() const = 0;
    /// A timer was added: a worker waiting for the next one must look again.
    virtual void timers_changed() = 0;
    virtual void invoke_expired() = 0;
};

class loopback_commands final : public command_host {
public:
    loopback_commands(loopback_port& port, const hooks& h);

    // -- the protocol
    void command_register(const std::string& command, command_handler handler, command_options o);
    void command_register(const std::string& command, deferred_command_handler handler, command_options o);
    void command_unregister(const std::string& command) { server_.remove(command); }
    subscription_id subscribe_results(const std::string& command, result_handler handler) {
        return caller_.subscribe_results(command, std::move(handler), std::nullopt);
    }
    bool remove_result_handler(subscription_id id) { return caller_.remove_result_handler(id); }
    call_handle call(const std::string& command, std::string body, call_options o);
    call_handle call_async(const std::string& command, std::string body, call_options o,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done);
    /// Fails the calls awaited with `why`; handles can no longer cancel.
    void close(std::exception_ptr why) { caller_.close(std::move(why)); }

    // -- timers, on the loopback's clock
    /// Runs the timers due at `now`.
    void fire_due(std::chrono::steady_clock::time_point now);
    /// @return when the next timer is due, if any.
    std::optional<std::chrono::steady_clock::time_point> next_due() const;

    // -- command_host
    subscription_id subscribe(const std::string& filter, lane_handler handler, unsigned concurrency) override;
    void unsubscribe(subscription_id id) override { port_.unsubscribe(id); }
    subscription_id new_subscription_id() override { return port_.new_subscription_id(); }
    std::optional<subscription_id> sole_handler(const std::string& filter) const override {
        return port_.sole_handler(filter);
    }
    std::vector<std::pair<subscription_id, std::string>> handler_filters() const override {
        return port_.handler_filters();
    }
    stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                const std::string& kind) override;
    void commit(std::vector<write_op> ops, std::vector<stored_publish> pubs) override;
    void commit_later(std::vector<write_op> ops) override;
    std::optional<std::string> stored(table t, const std::string& id) const override;
    std::int64_t wall_ms() const override { return port_.wall_ms(); }
    void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) override;
    void mark_handler_thread() override {}
    void invoke_expired() override { port_.invoke_expired(); }

private:
    /// Applies a handler's effects: the tables written, the publishes accepted, then its after-commit work;
    /// a handler that finishes later applies the rest when it does.
    void apply(effects fx);

    loopback_port& port_;
    mutable std::mutex mu_;  // never held while the port is called
    std::map<table, std::map<std::string, std::string>> tables_;
    std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;
    std::uint64_t next_publish_ = 0;
    command_server server_;
    command_caller caller_;
};

}  // namespace xymqtt::detail
