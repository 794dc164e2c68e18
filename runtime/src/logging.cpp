// The default logger (stderr, level from XYMQTT_LOG_LEVEL) and its parts, public in logging.h.
#include <cstdlib>
#include <ostream>
#include <sstream>

#include "xymqtt/logging.h"
#include "xymqtt/exception.h"

namespace xymqtt {

namespace {

const char* name_of(log_level level) {
    switch (level) {
        case log_level::debug: return "debug";
        case log_level::info: return "info";
        case log_level::warning: return "warning";
        case log_level::error: return "error";
    }
    return "?";
}

}  // namespace

std::optional<log_level> log_level_from_env() {
    const char* v = std::getenv("XYMQTT_LOG_LEVEL");
    if (!v || !*v) return log_level::warning;
    const std::string s(v);
    for (auto level : {log_level::debug, log_level::info, log_level::warning, log_level::error})
        if (s == name_of(level)) return level;
    if (s == "off") return std::nullopt;
    throw configuration_error("XYMQTT_LOG_LEVEL=" + s + " is not one of debug, info, warning, error, off");
}

std::function<void(log_level, const std::string&)> stream_logger(std::ostream& out, log_level min,
                                                                 std::string client_id) {
    return [&out, min, prefix = "xymqtt " + (client_id.empty() ? std::string() : client_id + " ")](
               log_level level, const std::string& text) {
        if (level < min) return;
        std::ostringstream line;
        line << prefix << name_of(level) << ": " << text << '\n';
        out << line.str() << std::flush;  // one write per line
    };
}

}  // namespace xymqtt
