/// @file retry_policy.h
/// How often, and how soon, a handler that throws is run again.
///
/// A message whose handler throws stays stored and is retried with exponential backoff: `initial`, then
/// multiplied by `multiplier` after each failure, never longer than `cap`. xymqtt::client counts the
/// attempts in its store, so the backoff and `max_attempts` hold across restarts. With `max_attempts` 0
/// (the default) a message is retried until a handler succeeds; otherwise it moves to the dead letters
/// after that many failed attempts, and the messages behind it go on.
#pragma once

#include <chrono>
#include <cstdint>

namespace xymqtt {

/// Retry of a handler that throws.
struct retry_policy {
    std::chrono::milliseconds initial{100};   ///< Delay before the first retry.
    std::chrono::milliseconds cap{12800};     ///< Longest delay (xy-mqtt's 12.8 s).
    double multiplier = 2.0;                  ///< Factor between one delay and the next.
    /// 0 retries forever (xy-mqtt's behaviour); otherwise the message is dead-lettered after this
    /// many failed attempts.
    std::uint32_t max_attempts = 0;
    /// The backoff: the smaller of `initial` × `multiplier`^(`attempt` − 1) and `cap`, in whole
    /// milliseconds (0 failures count as 1).
    /// @param attempt the number of failed attempts so far.
    /// @return the delay before attempt `attempt + 1` after `attempt` failures.
    std::chrono::milliseconds delay_after(std::uint32_t attempt) const;
};

}  // namespace xymqtt
