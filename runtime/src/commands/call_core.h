// The command protocol's rules that every server of it follows, the client's and the loopback's alike:
// one implementation, so that a unit test on the loopback checks what the broker path does.
//
//  - running_call: the call_context of a handler at work. A cancel runs each on_cancel callback once,
//    on the thread that delivers the cancel; callbacks registered after it run at once. A call marked
//    finished can no longer be cancelled.
//  - An invoke whose Message Expiry Interval ran out before it could run is not executed: it is
//    rejected with 408 (invoke_expired, expired_reject).
//  - An invoke that cannot be decoded but names its message id is rejected with 400
//    (undecodable_reject); one that names none cannot be answered and is a parse_error.
//  - Message ids: 32 lowercase hex digits, 128 random bits (format_message_id).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "commands/wire.h"
#include "xymqtt/message.h"
#include "xymqtt/transport.h"

namespace xymqtt::detail {

/// The call_context of one running command handler.
class running_call final : public call_context {
public:
    void on_cancel(std::function<void()> fn) override;
    bool cancelled() const override;
    /// Cancels the call and runs its callbacks (a callback that throws stops neither the others nor the
    /// cancel).
    /// @return false if it was cancelled or finished already (nothing ran).
    bool cancel();
    /// Marks the call finished: a later cancel is a no-op.
    /// @return false if it was cancelled before (its outcome must not be published).
    bool finish();

private:
    mutable std::mutex mu_;
    bool cancelled_ = false;
    bool finished_ = false;
    std::vector<std::function<void()>> callbacks_;
};

/// @return true if `invoke`'s Message Expiry Interval, counted from its arrival, has run out at `now_ms`
///         (milliseconds since the epoch, the clock of message::received_at_ms).
bool invoke_expired(const message& invoke, std::int64_t now_ms);

/// The 408 reject of an invoke that expired before it ran.
wire::outgoing expired_reject(wire_format format, const std::string& message_id);

/// The 400 reject of an invoke that cannot be decoded (e.message_id must not be empty).
wire::outgoing undecodable_reject(const wire::undecodable_invoke& e);

/// @return the message id made of two 64-bit random numbers: 32 lowercase hex digits.
std::string format_message_id(std::uint64_t hi, std::uint64_t lo);

}  // namespace xymqtt::detail
