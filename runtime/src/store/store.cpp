// The store base class (per-table packet_store views), open_store, and the directory rules both
// implementations share.
#include "xymqtt/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "store/store_util.h"
#include "xymqtt/exception.h"

namespace xymqtt {
namespace detail {

std::size_t table_index(table t) {
    const auto i = static_cast<std::size_t>(t);
    if (i >= table_count) throw storage_error("unknown table " + std::to_string(i));
    return i;
}

namespace {

[[noreturn]] void throw_dir_error(const std::string& what, const std::string& path, int err) {
    throw configuration_error("store: cannot " + what + " '" + path + "': " + std::strerror(err));
}

}  // namespace

void throw_file_error(const char* component, const char* what, const std::string& path, int err) {
    const std::string msg = std::string(component) + ": " + what + " '" + path + "': " + std::strerror(err);
    if (err == ENOSPC || err == EDQUOT) throw storage_full(msg, err);
    throw storage_error(msg, err);
}

int sync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    const int err = ::fsync(fd) == 0 ? 0 : errno;
    ::close(fd);
    return err;
}

void make_private_dir(const std::string& dir) {
    if (dir.empty()) throw configuration_error("store: empty directory path");
    // Walk the components left to right, creating each missing one; a racing creator is fine.
    std::size_t pos = 0;
    for (;;) {
        pos = dir.find('/', pos + 1);
        const std::string part = dir.substr(0, pos);
        if (!part.empty() && part != "/") {
            if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) throw_dir_error("create directory", part, errno);
        }
        if (pos == std::string::npos) break;
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) throw_dir_error("use directory", dir, errno);
    if (!S_ISDIR(st.st_mode)) throw_dir_error("use directory", dir, ENOTDIR);
}

void touch_private_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw_dir_error("create file", path, errno);
    ::close(fd);
}

dir_lock::dir_lock(const std::string& dir) {
    const std::string path = dir + "/lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) throw_dir_error("open lock file", path, errno);
    // flock locks belong to the open file description, so a second open in this process conflicts
    // as well as one in another process.
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        ::close(fd_);
        fd_ = -1;
        if (err == EWOULDBLOCK) throw configuration_error("store '" + dir + "' is in use by another process");
        throw_dir_error("lock", path, err);
    }
}

dir_lock::~dir_lock() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace detail

namespace {

// xy-mqtt's put/get/del/all over one table of a store; each write is its own commit.
class table_view final : public packet_store {
public:
    table_view(store& s, table t) : store_(s), table_(t) {}

    void put(const std::string& id, const std::string& record) override {
        store_.commit({write_op{table_, id, record}});
    }
    std::optional<std::string> get(const std::string& id) const override { return store_.get(table_, id); }
    void del(const std::string& id) override { store_.commit({write_op{table_, id, std::nullopt}}); }
    std::vector<std::pair<std::string, std::string>> all() const override {
        std::vector<std::pair<std::string, std::string>> out;
        store_.for_each(table_, [&](const std::string& id, const std::string& value) {
            out.emplace_back(id, value);
            return true;
        });
        return out;
    }

private:
    store& store_;
    table table_;
};

}  // namespace

// The views only keep a reference: built here once, they need no locking afterwards.
store::store() {
    views_.reserve(detail::table_count);
    for (std::size_t i = 0; i < detail::table_count; ++i)
        views_.push_back(std::make_unique<table_view>(*this, static_cast<table>(i)));
}

packet_store& store::view(table t) { return *views_[detail::table_index(t)]; }

std::unique_ptr<store> open_store(store_kind kind, const std::string& dir, const store_options& opts) {
    switch (kind) {
        case store_kind::lmdb:
            return open_lmdb_store(dir, opts);
        case store_kind::sqlite:
            return open_sqlite_store(dir, opts);
    }
    throw configuration_error("store: unknown store kind " + std::to_string(static_cast<int>(kind)));
}

}  // namespace xymqtt
