// The retry policy's delays (public in retry_policy.h): the inbox's retries and the loopback's follow it.
#include "xymqtt/retry_policy.h"

#include <algorithm>
#include <cstdint>

namespace xymqtt {

std::chrono::milliseconds retry_policy::delay_after(std::uint32_t attempt) const {
    double d = double(initial.count());
    for (std::uint32_t i = 1; i < attempt && d < double(cap.count()); ++i) d *= multiplier;
    return std::chrono::milliseconds(std::min<std::int64_t>(std::int64_t(d), cap.count()));
}

}  // namespace xymqtt
