// What the command protocol needs from the transport under it: lanes to subscribe, publishes to make and
// commit, the command tables to read, and a clock to schedule on. The durable client is one host (inbox,
// outbox and store); the loopback is the other (in memory): both run the same protocol
// (commands/command_server.h, commands/command_caller.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/effects.h"
#include "xymqtt/store.h"
#include "xymqtt/transport.h"

namespace xymqtt::detail {

class command_host {
public:
    virtual ~command_host() = default;

    /// Subscribes `handler` to `filter` on a lane that keeps up to `concurrency` deliveries at work. The
    /// lane commits a delivery's effects with its removal; a handler that throws has it retried, a
    /// parse_error dead-lettered.
    /// @return the subscription's id.
    virtual subscription_id subscribe(const std::string& filter, lane_handler handler, unsigned concurrency) = 0;
    virtual void unsubscribe(subscription_id id) = 0;
    /// @return a new id from the series of subscribe's (for result handlers, which have no lane of their own).
    virtual subscription_id new_subscription_id() = 0;
    /// @return the subscription of the lane of `filter` if it has exactly one handler.
    virtual std::optional<subscription_id> sole_handler(const std::string& filter) const = 0;
    /// @return the subscriptions of every lane, with their filters.
    virtual std::vector<std::pair<subscription_id, std::string>> handler_filters() const = 0;

    /// @return a publish (not yet stored) of `kind` ("call", "cancel", "resolve", "reject").
    virtual stored_publish make_publish(const std::string& topic, std::string payload, message_properties props,
                                        const std::string& kind) = 0;
    /// Commits `ops` with `pubs` atomically, then sends the publishes.
    /// @throw what the commit throws (nothing is then stored or sent).
    virtual void commit(std::vector<write_op> ops, std::vector<stored_publish> pubs) = 0;
    /// Commits `ops` in the background: nobody waits for it.
    virtual void commit_later(std::vector<write_op> ops) = 0;
    /// @return the record `id` of table `t` (results or calls), or nothing.
    virtual std::optional<std::string> stored(table t, const std::string& id) const = 0;

    /// @return the host's wall clock, milliseconds since the epoch (that of message::received_at_ms).
    virtual std::int64_t wall_ms() const = 0;
    /// Runs `fn` at `at` (or soon after) on a thread of the host's.
    virtual void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) = 0;
    /// Marks the calling thread as one that runs the host's handlers.
    virtual void mark_handler_thread() = 0;
    /// An invoke expired before it ran (it is rejected with 408).
    virtual void invoke_expired() {}
};

}  // namespace xymqtt::detail
