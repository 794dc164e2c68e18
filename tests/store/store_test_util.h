// Helpers for the store tests: temporary directories and the store kinds as types.
#pragma once

#include <stdlib.h>
#include <sys/stat.h>

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

}  // namespace store_test
