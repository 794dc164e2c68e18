// Runs a shell command for `xymqtt serve --exec`: stdin in, stdout and stderr captured, cancellable.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <sys/types.h>

namespace xymqtt::cli {

struct exec_result {
    int exit_code = 0;       ///< The exit status, or 128 + signal.
    std::string out;         ///< stdout
    std::string err;         ///< stderr
    bool timed_out = false;  ///< Killed after the timeout.
};

/// A running command's process group, so that another thread can end it.
struct exec_control {
    std::atomic<pid_t> pid{0};
    std::atomic<bool> killed{false};
    /// Sends SIGTERM to the command's process group (and remembers that it was asked to end).
    void terminate();
};

/// Runs `/bin/sh -c command` with `input` on stdin and `env` added to the environment.
/// @throw std::runtime_error if it cannot be started.
exec_result run_shell(const std::string& command, const std::string& input,
                      const std::map<std::string, std::string>& env, exec_control& control,
                      std::optional<std::chrono::milliseconds> timeout = std::nullopt);

}  // namespace xymqtt::cli
