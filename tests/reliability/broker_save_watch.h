// When Mosquitto last took a snapshot of its state: a broker killed hard (SIGKILL) restarts from its
// last completed save and forgets everything after the moment that save began. Mosquitto (single-
// threaded) writes `<file>.new` and renames it to `<file>`; the snapshot is the state when `.new` was
// created. Watched with inotify, so a hard kill's forget window is measured, not assumed: under load the
// saves come later and take longer than the configured autosave_interval says.
#pragma once

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

namespace xymqtt::test {

class broker_save_watch {
public:
    /// @param data_dir the broker's persistence directory; @param file its persistence file name;
    /// @param clock the clock the snapshot times are read on (microseconds).
    broker_save_watch(const std::string& data_dir, std::string file, std::function<std::int64_t()> clock)
        : file_(std::move(file)), clock_(std::move(clock)) {
        fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (fd_ >= 0 && ::inotify_add_watch(fd_, data_dir.c_str(), IN_CREATE | IN_MOVED_TO) < 0) {
            ::close(fd_);
            fd_ = -1;
        }
        if (fd_ >= 0) thread_ = std::thread([this] { run(); });
    }
    ~broker_save_watch() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
        if (fd_ >= 0) ::close(fd_);
    }
    broker_save_watch(const broker_save_watch&) = delete;
    broker_save_watch& operator=(const broker_save_watch&) = delete;

    /// @return false if inotify could not watch the directory (then no save is ever seen).
    bool watching() const { return fd_ >= 0; }
    /// @return when the last completed save began (its `.new` file was seen created), or 0 if none yet.
    std::int64_t last_snapshot() const { return last_snapshot_.load(); }

private:
    void run() {
        alignas(inotify_event) char buf[4096];
        std::int64_t started = 0;
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const auto now = clock_();
            const ssize_t n = ::read(fd_, buf, sizeof buf);
            for (ssize_t off = 0; n > 0 && off < n;) {
                const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
                const std::string name = e->len ? e->name : "";
                if ((e->mask & IN_CREATE) && name == file_ + ".new") started = now;
                if ((e->mask & IN_MOVED_TO) && name == file_ && started) last_snapshot_ = started;
                off += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
            }
        }
    }

    std::string file_;
    std::function<std::int64_t()> clock_;
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    std::atomic<std::int64_t> last_snapshot_{0};
    std::thread thread_;
};

}  // namespace xymqtt::test
