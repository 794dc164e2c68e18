// Journals of the history checker's agents: written with one write(2) per record (O_APPEND, nothing
// buffered in the process), so a SIGKILL cuts a journal only between records; read by the test while the
// run goes on (journal_tail returns the lines appended since the last call).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace xymqtt::test {

class journal_writer {
public:
    explicit journal_writer(const std::string& path)
        : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) {
        if (fd_ < 0) throw std::runtime_error("cannot open journal " + path + ": " + std::strerror(errno));
    }
    ~journal_writer() { ::close(fd_); }
    journal_writer(const journal_writer&) = delete;
    journal_writer& operator=(const journal_writer&) = delete;

    /// Appends one line.
    void line(const std::string& s) { write(s + "\n"); }
    /// Appends `lines` (complete lines) with one write(2) (a regular file takes it whole).
    void write(const std::string& lines) {
        std::lock_guard<std::mutex> lk(mu_);
        const char* p = lines.data();
        std::size_t left = lines.size();
        while (left > 0) {
            const ssize_t n = ::write(fd_, p, left);
            if (n < 0) {
                if (errno == EINTR) continue;
                std::perror("journal write");
                std::_Exit(4);
            }
            p += n;
            left -= static_cast<std::size_t>(n);
        }
    }

private:
    int fd_;
    std::mutex mu_;
};

/// Reads the complete lines appended to a file since the previous call.
class journal_tail {
public:
    explicit journal_tail(std::string path) : path_(std::move(path)) {}

    /// Calls fn(words) for each new complete line (a partial last line waits for its end).
    template <class F>
    void poll(F fn) {
        const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        char buf[1 << 16];
        while (true) {
            const ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(offset_));
            if (n <= 0) break;
            offset_ += static_cast<std::size_t>(n);
            partial_.append(buf, static_cast<std::size_t>(n));
        }
        ::close(fd);
        std::size_t start = 0;
        std::vector<std::string> words;
        for (std::size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
            words.clear();
            std::size_t i = start;
            while (i < nl) {
                while (i < nl && partial_[i] == ' ') ++i;
                const std::size_t b = i;
                while (i < nl && partial_[i] != ' ') ++i;
                if (i > b) words.emplace_back(partial_, b, i - b);
            }
            if (!words.empty()) fn(words);
        }
        partial_.erase(0, start);
    }

private:
    std::string path_;
    std::size_t offset_ = 0;
    std::string partial_;
};

/// @return the complete lines of a journal, each split into words (empty lines left out).
inline std::vector<std::vector<std::string>> read_journal(const std::string& path) {
    std::vector<std::vector<std::string>> out;
    journal_tail(path).poll([&](const std::vector<std::string>& words) { out.push_back(words); });
    return out;
}

}  // namespace xymqtt::test
