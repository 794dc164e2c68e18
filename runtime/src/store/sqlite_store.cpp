// The SQLite store: xy-mqtt's tables (id, at, packet) in dir/xymqtt.sqlite3, WAL journal, and Paho's
// records in dir/paho/records (session_records_file.h), as in the LMDB store: Paho writes several per
// packet, and as SQLite transactions they cost the publisher most of its CPU (docs/benchmarks.md, F31).
//
// The database has one connection, opened SQLITE_OPEN_NOMUTEX and guarded by our own mutex, with every
// statement prepared once at open and reused.
#include <sqlite3.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <mutex>

#include "store/session_records_file.h"
#include "store/store_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"

namespace xymqtt {
namespace {

const char* sql_table(table t) {
    switch (t) {
        case table::outgoing:
            return "mqtt_outgoing_packet";
        case table::incoming:
            return "mqtt_incoming_packet";
        case table::dead_letters:
            return "mqtt_dead_letter";
        case table::results:
            return "mqtt_command_result";
        case table::calls:
            return "mqtt_command_call";
    }
    return "";
}

std::string column_string(sqlite3_stmt* s, int col) {
    const void* p = sqlite3_column_blob(s, col);
    const int n = sqlite3_column_bytes(s, col);
    return p && n > 0 ? std::string(static_cast<const char*>(p), static_cast<std::size_t>(n)) : std::string();
}

// Resets a statement (and drops its bindings) when a use of it ends, however it ends.
struct stmt_use {
    sqlite3_stmt* s;
    ~stmt_use() {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
};

// One connection: opening, error reporting, statement cache and the mutex that serializes its use.
class sqlite_db {
public:
    explicit sqlite_db(std::string path) : path_(std::move(path)) {}
    ~sqlite_db() { close(); }
    sqlite_db(const sqlite_db&) = delete;
    sqlite_db& operator=(const sqlite_db&) = delete;

    /// Opens the file (pre-created 0600 so SQLite's WAL and shm files inherit that mode) and sets
    /// WAL with `synchronous`. Returns the SQLite code so callers may recover.
    int try_open(const char* synchronous) {
        detail::touch_private_file(path_);
        int rc = sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
        if (rc != SQLITE_OK) return rc;
        sqlite3_extended_result_codes(db_, 1);
        sqlite3_busy_timeout(db_, 5000);
        std::string mode;
        rc = sqlite3_exec(
            db_, "PRAGMA journal_mode=WAL",
            [](void* out, int n, char** values, char**) {
                if (n > 0 && values[0]) *static_cast<std::string*>(out) = values[0];
                return 0;
            },
            &mode, nullptr);
        if (rc != SQLITE_OK) return rc;
        if (mode != "wal") return SQLITE_CANTOPEN;
        return sqlite3_exec(db_, (std::string("PRAGMA synchronous=") + synchronous).c_str(), nullptr, nullptr, nullptr);
    }

    void close() {
        for (auto* s : stmts_) sqlite3_finalize(s);
        stmts_.clear();
        if (db_) sqlite3_close_v2(db_);
        db_ = nullptr;
    }

    [[noreturn]] void fail(const char* what, int rc) const {
        const int sys = db_ ? sqlite3_system_errno(db_) : 0;
        std::string msg = "sqlite: " + std::string(what) + " in '" + path_ + "': " +
                          (db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)) + " (" + std::to_string(rc) + ")";
        if ((rc & 0xff) == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT) throw storage_full(msg, rc);
        throw storage_error(msg, rc);
    }

    void exec(const char* what, const std::string& sql) {
        const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
        if (rc != SQLITE_OK) fail(what, rc);
    }

    sqlite3_stmt* prepare(const std::string& sql) {
        sqlite3_stmt* s = nullptr;
        const int rc = sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
        if (rc != SQLITE_OK) fail("prepare", rc);
        stmts_.push_back(s);
        return s;
    }

    /// Steps a statement that returns no rows. @throw storage_error
    void run(const char* what, sqlite3_stmt* s) {
        stmt_use use{s};
        const int rc = sqlite3_step(s);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) fail(what, rc);
    }

    void bind_text(const char* what, sqlite3_stmt* s, int i, const std::string& v) {
        const int rc = sqlite3_bind_text64(s, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8);
        if (rc != SQLITE_OK) fail(what, rc);
    }

    void bind_blob(const char* what, sqlite3_stmt* s, int i, const std::string& v) {
        // A non-null pointer keeps an empty record an empty blob rather than NULL.
        const int rc = sqlite3_bind_blob64(s, i, v.empty() ? "" : v.data(), v.size(), SQLITE_STATIC);
        if (rc != SQLITE_OK) fail(what, rc);
    }

    /// Runs `fn` inside BEGIN IMMEDIATE ... COMMIT, rolling back if anything fails.
    template <class Fn>
    void transaction(const char* what, Fn&& fn) {
        if (!begin_) {
            begin_ = prepare("BEGIN IMMEDIATE");
            commit_ = prepare("COMMIT");
            rollback_ = prepare("ROLLBACK");
        }
        run(what, begin_);
        try {
            fn();
            run(what, commit_);
        } catch (...) {
            if (!sqlite3_get_autocommit(db_)) {
                stmt_use use{rollback_};
                sqlite3_step(rollback_);
            }
            throw;
        }
    }

    std::mutex& mutex() const { return mutex_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    sqlite3* db_ = nullptr;
    std::vector<sqlite3_stmt*> stmts_;
    sqlite3_stmt* begin_ = nullptr;
    sqlite3_stmt* commit_ = nullptr;
    sqlite3_stmt* rollback_ = nullptr;
    mutable std::mutex mutex_;
};

bool is_corruption(int rc) { return (rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT; }

// Reads Paho's records from `path`, the database an earlier version kept them in. Opened read-write, so
// that a WAL a killed process left is applied to what is read. @return the records, or none if the file
// is not a readable records database (corrupt, or no such table): the tables are the source of truth, so
// only duplicates can result. @throw storage_error for a failure that may pass (busy, I/O, full)
std::vector<std::pair<std::string, std::string>> read_old_paho_records(const std::string& path) {
    std::vector<std::pair<std::string, std::string>> rows;
    sqlite3* db = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc == SQLITE_OK) {
        sqlite3_extended_result_codes(db, 1);
        sqlite3_busy_timeout(db, 5000);
        sqlite3_stmt* q = nullptr;
        rc = sqlite3_prepare_v2(db, "SELECT key, value FROM paho_record", -1, &q, nullptr);
        if (rc == SQLITE_OK) {
            while ((rc = sqlite3_step(q)) == SQLITE_ROW) rows.emplace_back(column_string(q, 0), column_string(q, 1));
            if (rc == SQLITE_DONE) rc = SQLITE_OK;
        }
        sqlite3_finalize(q);
    }
    const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    if (rc == SQLITE_OK) return rows;
    if (is_corruption(rc) || (rc & 0xff) == SQLITE_ERROR) return {};  // not a records database
    const std::string what = "sqlite: read Paho's records in '" + path + "': " + msg + " (" + std::to_string(rc) + ")";
    if ((rc & 0xff) == SQLITE_FULL) throw storage_full(what, rc);
    throw storage_error(what, rc);
}

// Paho's records were kept in dir/paho.sqlite3 before they moved to dir/paho/records: a store written so
// is moved over once. The old database goes first, so that a crash midway never reads its records again
// over newer ones; then its WAL and shared-memory files (left alone they are only litter).
void move_old_paho_records(const std::string& dir, detail::session_records_file& records, bool durable) {
    const std::string old_path = dir + "/paho.sqlite3";
    if (::access(old_path.c_str(), F_OK) == 0) {
        auto rows = read_old_paho_records(old_path);
        for (std::size_t i = 0; i < rows.size(); ++i)
            records.put(rows[i].first, rows[i].second, durable && i + 1 == rows.size());  // the last syncs all
        if (::unlink(old_path.c_str()) != 0 && errno != ENOENT)
            detail::throw_file_error("sqlite store", "remove", old_path, errno);
        if (durable)
            if (const int err = detail::sync_dir(dir)) detail::throw_file_error("sqlite store", "sync", dir, err);
    }
    for (const char* suffix : {"-wal", "-shm"}) ::unlink((old_path + suffix).c_str());
}

class sqlite_store final : public store {
public:
    sqlite_store(const std::string& dir, const store_options& opts)
        : lock_((detail::make_private_dir(dir), dir)), durability_(opts.durability), db_(dir + "/xymqtt.sqlite3") {
        // fsync: EXTRA syncs the WAL on every commit. process: OFF leaves writing back to the OS.
        const int rc = db_.try_open(opts.durability == durability::fsync ? "EXTRA" : "OFF");
        if (rc != SQLITE_OK) db_.fail("open", rc);
        for (std::size_t i = 0; i < detail::table_count; ++i) {
            const std::string name = sql_table(static_cast<table>(i));
            db_.exec("create table", "CREATE TABLE IF NOT EXISTS " + name +
                                         " (id TEXT PRIMARY KEY, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                                         "packet BLOB NOT NULL)");
            auto& s = stmts_[i];
            s.upsert = db_.prepare("INSERT INTO " + name +
                                   "(id, packet) VALUES(?1, ?2) ON CONFLICT(id) DO UPDATE SET "
                                   "packet=excluded.packet, at=CURRENT_TIMESTAMP");
            s.del = db_.prepare("DELETE FROM " + name + " WHERE id=?1");
            s.get = db_.prepare("SELECT packet FROM " + name + " WHERE id=?1");
            s.first = db_.prepare("SELECT id, packet FROM " + name + " ORDER BY id LIMIT ?1");
            s.next = db_.prepare("SELECT id, packet FROM " + name + " WHERE id > ?1 ORDER BY id LIMIT ?2");
            s.last = db_.prepare("SELECT id FROM " + name + " ORDER BY id DESC LIMIT 1");
            s.count = db_.prepare("SELECT count(*) FROM " + name);
        }
        session_ = std::make_unique<detail::session_records_file>(dir + "/paho", opts);
        move_old_paho_records(dir, *session_, opts.durability == durability::fsync);
    }

    ~sqlite_store() override {
        session_.reset();
        db_.close();
    }

    void commit(const std::vector<write_op>& batch) override {
        if (batch.empty()) return;
        for (const auto& op : batch) detail::table_index(op.tbl);  // validate before writing
        std::lock_guard<std::mutex> lock(db_.mutex());
        db_.transaction("commit", [&] {
            for (const auto& op : batch) {
                const auto& s = stmts_[static_cast<std::size_t>(op.tbl)];
                if (op.value) {
                    db_.bind_text("commit", s.upsert, 1, op.id);
                    db_.bind_blob("commit", s.upsert, 2, *op.value);
                    db_.run("commit", s.upsert);
                } else {
                    db_.bind_text("commit", s.del, 1, op.id);
                    db_.run("commit", s.del);
                }
            }
        });
    }

    std::optional<std::string> get(table t, const std::string& id) const override {
        const auto& s = stmts_[detail::table_index(t)];
        std::lock_guard<std::mutex> lock(db_.mutex());
        stmt_use use{s.get};
        db_.bind_text("get", s.get, 1, id);
        const int rc = sqlite3_step(s.get);
        if (rc == SQLITE_ROW) return column_string(s.get, 0);
        if (rc != SQLITE_DONE) db_.fail("get", rc);
        return std::nullopt;
    }

    void for_each(table t, const std::function<bool(const std::string&, const std::string&)>& fn) const override {
        const auto& s = stmts_[detail::table_index(t)];
        // Read in chunks and call back with the connection free, so callbacks may use the store.
        constexpr int chunk_records = 256;
        std::vector<std::pair<std::string, std::string>> chunk;
        std::optional<std::string> after;
        for (;;) {
            chunk.clear();
            {
                std::lock_guard<std::mutex> lock(db_.mutex());
                sqlite3_stmt* q = after ? s.next : s.first;
                stmt_use use{q};
                if (after) {
                    db_.bind_text("for_each", q, 1, *after);
                    sqlite3_bind_int(q, 2, chunk_records);
                } else {
                    sqlite3_bind_int(q, 1, chunk_records);
                }
                int rc;
                while ((rc = sqlite3_step(q)) == SQLITE_ROW) chunk.emplace_back(column_string(q, 0), column_string(q, 1));
                if (rc != SQLITE_DONE) db_.fail("for_each", rc);
            }
            for (const auto& kv : chunk)
                if (!fn(kv.first, kv.second)) return;
            if (chunk.size() < static_cast<std::size_t>(chunk_records)) return;
            after = std::move(chunk.back().first);
        }
    }

    std::optional<std::string> last_id(table t) const override {
        const auto& s = stmts_[detail::table_index(t)];
        std::lock_guard<std::mutex> lock(db_.mutex());
        stmt_use use{s.last};
        const int rc = sqlite3_step(s.last);
        if (rc == SQLITE_ROW) return column_string(s.last, 0);
        if (rc != SQLITE_DONE) db_.fail("last_id", rc);
        return std::nullopt;
    }

    std::size_t count(table t) const override {
        const auto& s = stmts_[detail::table_index(t)];
        std::lock_guard<std::mutex> lock(db_.mutex());
        stmt_use use{s.count};
        const int rc = sqlite3_step(s.count);
        if (rc != SQLITE_ROW) db_.fail("count", rc);
        return static_cast<std::size_t>(sqlite3_column_int64(s.count, 0));
    }

    session_records& session() override { return *session_; }
    xymqtt::durability durability() const override { return durability_; }

private:
    struct table_stmts {
        sqlite3_stmt* upsert = nullptr;
        sqlite3_stmt* del = nullptr;
        sqlite3_stmt* get = nullptr;
        sqlite3_stmt* first = nullptr;
        sqlite3_stmt* next = nullptr;
        sqlite3_stmt* last = nullptr;
        sqlite3_stmt* count = nullptr;
    };

    detail::dir_lock lock_;  // first member: taken before, released after, the databases
    xymqtt::durability durability_;
    mutable sqlite_db db_;
    std::array<table_stmts, detail::table_count> stmts_{};
    std::unique_ptr<detail::session_records_file> session_;
};

}  // namespace

std::unique_ptr<store> open_sqlite_store(const std::string& dir, const store_options& opts) {
    return std::make_unique<sqlite_store>(dir, opts);
}

}  // namespace xymqtt
