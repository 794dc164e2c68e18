// The wall clock of stored records (created_ms, next_attempt_ms) and of message::received_at_ms.
#pragma once

#include <chrono>
#include <cstdint>

namespace xymqtt::detail {

/// @return milliseconds since the epoch, now: the clock that records keep across restarts (intervals
///         inside one process use the steady clock).
inline std::int64_t wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace xymqtt::detail
