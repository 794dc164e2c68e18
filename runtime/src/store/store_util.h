/// @file store_util.h
/// Private helpers shared by the store implementations: directory rules, the exclusivity lock,
/// table indexing.
#pragma once

#include <cstddef>
#include <string>

#include "xymqtt/store.h"

namespace xymqtt {
namespace detail {

/// Number of tables in xymqtt::table.
constexpr std::size_t table_count = 5;

/// @return the index of `t` in [0, table_count). @throw storage_error for a value outside the enum.
std::size_t table_index(table t);

/// Creates `dir` and its missing parents with mode 0700 (mkdir -p). An existing directory is left
/// as it is. @throw configuration_error naming the path and the system error.
void make_private_dir(const std::string& dir);

/// Creates `path` as an empty 0600 file if it does not exist (so engines that create files with
/// wider default modes reuse ours). @throw configuration_error
void touch_private_file(const std::string& path);

/// Throws the error of a failed file operation: storage_full for ENOSPC and EDQUOT, storage_error
/// otherwise, with the message "`component`: `what` '`path`': strerror(err)".
[[noreturn]] void throw_file_error(const char* component, const char* what, const std::string& path, int err);

/// Syncs directory `dir`, so that entries created or renamed in it survive a power loss.
/// @return 0, or the errno of the failure.
int sync_dir(const std::string& dir);

/// An exclusive flock on `dir/lock`, held for the lifetime of the object: one process per store.
class dir_lock {
public:
    /// @throw configuration_error if the lock file cannot be opened or another holder has it.
    explicit dir_lock(const std::string& dir);
    ~dir_lock();
    dir_lock(const dir_lock&) = delete;
    dir_lock& operator=(const dir_lock&) = delete;

private:
    int fd_ = -1;
};

}  // namespace detail
}  // namespace xymqtt
