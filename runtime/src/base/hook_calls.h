// Calls into the application's hooks from the runtime's threads: an exception a hook throws is logged,
// never passed on into the runtime (or into Paho, which does not catch).
#pragma once

#include <exception>
#include <string>
#include <utility>

#include "xymqtt/hooks.h"

namespace xymqtt::detail {

/// Logs `text` through `h.on_log`, if set; a logger that throws is ignored.
inline void log_to(const hooks& h, log_level level, const std::string& text) {
    if (!h.on_log) return;
    try {
        h.on_log(level, text);
    } catch (...) {
    }
}

/// Calls `hook(args...)` if it is set; what it throws is logged through `h`.
template <class F, class... A>
void fire_hook(const hooks& h, const F& hook, A&&... args) {
    if (!hook) return;
    try {
        hook(std::forward<A>(args)...);
    } catch (const std::exception& e) {
        log_to(h, log_level::error, std::string("hook threw: ") + e.what());
    } catch (...) {
        log_to(h, log_level::error, "hook threw");
    }
}

}  // namespace xymqtt::detail
