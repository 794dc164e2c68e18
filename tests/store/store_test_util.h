// Helpers for the store tests: temporary directories and the store kinds as types.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "xymqtt/store.h"

namespace store_test {

/// A fresh directory under /tmp, removed with everything in it at scope exit.
class temp_dir {
public:
    temp_dir() {
        char tmpl[] = "/tmp/xymqtt-store-test-XXXXXX";
        if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    const std::string& path() const { return path_; }
    /// A not-yet-existing store directory inside (so the store creates it).
    std::string store_dir() const { return path_ + "/store"; }

private:
    std::string path_;
};

struct lmdb_kind {
    static constexpr xymqtt::store_kind kind = xymqtt::store_kind::lmdb;
};
struct sqlite_kind {
    static constexpr xymqtt::store_kind kind = xymqtt::store_kind::sqlite;
};

inline unsigned file_mode(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("stat failed: " + path);
    return st.st_mode & 07777;
}

/// Overwrites `bytes` at `off` of the file `path` (to tear or corrupt a store's file).
inline void overwrite(const std::string& path, off_t off, const std::string& bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), off) == static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

/// Forks a child that runs `child(fd)` (it never returns) and reports step numbers through `fd`;
/// returns what it reported, after checking that SIGKILL ended it and that the reports are 0, 1, 2...
template <class Child>
std::vector<std::uint64_t> reports_until_killed(Child&& child) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
        child(fds[1]);
    }
    ::close(fds[1]);
    std::vector<std::uint64_t> reported;
    std::uint64_t i = 0;
    while (::read(fds[0], &i, sizeof i) == static_cast<ssize_t>(sizeof i)) reported.push_back(i);
    ::close(fds[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    for (std::size_t k = 0; k < reported.size(); ++k) REQUIRE(reported[k] == k);
    return reported;
}

}  // namespace store_test
