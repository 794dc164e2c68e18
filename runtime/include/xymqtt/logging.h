/// @file logging.h
/// Log lines of a client: their levels, the level the environment asks for, and a logger that writes
/// them to a stream.
///
/// A client hands every log line to `hooks::on_log`. When that hook is unset, the client writes the
/// lines of the level `log_level_from_env()` gives and above to stderr through `stream_logger()`:
/// warnings and errors by default, none with `XYMQTT_LOG_LEVEL=off`. Log lines never contain
/// credentials.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>

namespace xymqtt {

/// Severity of a log line, from least to most severe.
enum class log_level : std::uint8_t {
    debug,    ///< Detail of the client's work, e.g. a deferred publish or an ignored result.
    info,     ///< Normal events, e.g. connected, or an unanswered invoke sent again.
    warning,  ///< Something to look at, e.g. a lost connection or a message moved to dead letters.
    error,    ///< A failure, e.g. a store error or a hook that threw.
};

/// The level the environment asks for: XYMQTT_LOG_LEVEL = debug, info, warning (the default when unset
/// or empty) or error; `off` gives std::nullopt (no log lines).
/// @return the level, or std::nullopt for `off`.
/// @throw xymqtt::configuration_error when XYMQTT_LOG_LEVEL is set to any other value.
std::optional<log_level> log_level_from_env();

/// A logger for hooks::on_log that writes each line of `min` and above to `out` (one write per line, so
/// lines of several threads do not mix): `xymqtt <client id> <level>: <text>`.
/// @param out the stream to write to; it must outlive the logger (std::cerr does).
/// @param min the lowest level written; lines below it are dropped.
/// @param client_id written after `xymqtt` on each line; left out when empty.
/// @return the logger, to assign to hooks::on_log.
std::function<void(log_level, const std::string&)> stream_logger(std::ostream& out, log_level min,
                                                                 std::string client_id = {});

}  // namespace xymqtt
