// The SQLite store: xy-mqtt's tables (id, at, packet) in dir/xymqtt.sqlite3, WAL journal, and
// Paho's records in dir/paho.sqlite3.
//
// Each database has one connection, opened SQLITE_OPEN_NOMUTEX and guarded by our own mutex, with
// every statement prepared once at open and reused.
#include <sqlite3.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <mutex>

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

class sqlite_session_records final : public session_records {
public:
    explicit sqlite_session_records(const std::string& path) : db_(path) {
        int rc = open();
        if (is_corruption(rc)) {
            // Only duplicates are lost: the tables are the source of truth. Start afresh.
            db_.close();
            for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
            rc = open();
        }
        if (rc != SQLITE_OK) db_.fail("open paho records", rc);
        put_ = db_.prepare(
            "INSERT INTO paho_record(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value");
        get_ = db_.prepare("SELECT value FROM paho_record WHERE key=?1");
        del_ = db_.prepare("DELETE FROM paho_record WHERE key=?1");
        keys_ = db_.prepare("SELECT key FROM paho_record ORDER BY key");
        clear_ = db_.prepare("DELETE FROM paho_record");
    }

    void put(const std::string& key, const std::string& value, bool sync) override {
        std::lock_guard<std::mutex> lock(db_.mutex());
        // A synced put commits with synchronous=FULL, which fsyncs the WAL holding it (and every
        // record before it). The rest of the time NORMAL: no sync per commit, but checkpoints
        // sync, so an earlier synced record is never lost to a WAL reset.
        // (PRAGMA synchronous takes effect when prepared, not when stepped: hence exec, not a
        // cached statement.)
        if (sync) db_.exec("paho put", "PRAGMA synchronous=FULL");
        try {
            db_.bind_text("paho put", put_, 1, key);
            db_.bind_blob("paho put", put_, 2, value);
            db_.run("paho put", put_);
        } catch (...) {
            if (sync) db_.exec("paho put", "PRAGMA synchronous=NORMAL");
            throw;
        }
        if (sync) db_.exec("paho put", "PRAGMA synchronous=NORMAL");
    }

    std::optional<std::string> get(const std::string& key) const override {
        std::lock_guard<std::mutex> lock(db_.mutex());
        stmt_use use{get_};
        db_.bind_text("paho get", get_, 1, key);
        const int rc = sqlite3_step(get_);
        if (rc == SQLITE_ROW) return column_string(get_, 0);
        if (rc != SQLITE_DONE) db_.fail("paho get", rc);
        return std::nullopt;
    }

    void remove(const std::string& key) override {
        std::lock_guard<std::mutex> lock(db_.mutex());
        db_.bind_text("paho remove", del_, 1, key);
        db_.run("paho remove", del_);
    }

    std::vector<std::string> keys() const override {
        std::lock_guard<std::mutex> lock(db_.mutex());
        std::vector<std::string> out;
        stmt_use use{keys_};
        int rc;
        while ((rc = sqlite3_step(keys_)) == SQLITE_ROW) out.push_back(column_string(keys_, 0));
        if (rc != SQLITE_DONE) db_.fail("paho keys", rc);
        return out;
    }

    void clear() override {
        std::lock_guard<std::mutex> lock(db_.mutex());
        db_.run("paho clear", clear_);
    }

private:
    int open() {
        int rc = db_.try_open("NORMAL");
        if (rc != SQLITE_OK) return rc;
        return create_table(
            "CREATE TABLE IF NOT EXISTS paho_record (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID");
    }

    int create_table(const char* sql) {
        try {
            db_.exec("create paho table", sql);
            return SQLITE_OK;
        } catch (const storage_error& e) {
            return e.code();
        }
    }

    // Mutable: const readers use the connection under its mutex.
    mutable sqlite_db db_;
    sqlite3_stmt* put_ = nullptr;
    sqlite3_stmt* get_ = nullptr;
    sqlite3_stmt* del_ = nullptr;
    sqlite3_stmt* keys_ = nullptr;
    sqlite3_stmt* clear_ = nullptr;
};

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
        session_ = std::make_unique<sqlite_session_records>(dir + "/paho.sqlite3");
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
    std::unique_ptr<sqlite_session_records> session_;
};

}  // namespace

std::unique_ptr<store> open_sqlite_store(const std::string& dir, const store_options& opts) {
    return std::make_unique<sqlite_store>(dir, opts);
}

}  // namespace xymqtt
