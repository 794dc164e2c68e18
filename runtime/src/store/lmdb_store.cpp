// The LMDB store: one environment with a named database per table; Paho's own records are kept apart
// in `dir/paho` (session_records_file.h).
//
// Commits go to a write-ahead journal (journal.h) and to an in-memory overlay; a checkpoint applies the
// overlay to LMDB in one transaction, together with the journal's last sequence number (table
// xymqtt_meta), and starts the journal over. Opening replays the journal's records after that number,
// whatever the durability asked for now. durability::fsync: one fdatasync per append, synced
// checkpoints. durability::process: appends are copies into a shared mapping of the journal (the page
// cache outlives the process), checkpoints are MDB_NOSYNC transactions.
//
// Concurrency: writers are serialized by a mutex; every transaction (read or write) holds a shared
// lock on `map_mutex_`, which growing the map takes exclusively, because mdb_env_set_mapsize remaps
// the file and must not run while any transaction of this process is open. Reads are short
// MDB_NOTLS transactions that never outlive a call (for_each reads in chunks and calls back with
// no transaction open, so callbacks may use the store).
#include <fcntl.h>
#include <lmdb.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string_view>
#include <utility>

#include "store/journal.h"
#include "store/session_records_file.h"
#include "store/store_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"

namespace xymqtt {
namespace {

bool is_full(int rc) { return rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT; }

// LMDB reports a write cut short by a full file system as EIO: tell that apart by the space left.
bool out_of_space(const std::string& dir, int rc) {
    struct statvfs fs {};
    if (rc != EIO || ::statvfs(dir.c_str(), &fs) != 0) return false;
    return static_cast<unsigned long long>(fs.f_bavail) * fs.f_frsize < (1ULL << 20);
}

[[noreturn]] void throw_lmdb(const std::string& where, const char* what, int rc) {
    std::string msg = "lmdb: " + std::string(what) + " in '" + where + "': " + mdb_strerror(rc) + " (" +
                      std::to_string(rc) + ")";
    if (is_full(rc)) throw storage_full(msg, rc);
    if (out_of_space(where, rc)) throw storage_full(msg + ": the file system is full", rc);
    throw storage_error(msg, rc);
}

// Aborts a transaction unless it was handed over (committed).
struct txn_guard {
    MDB_txn* txn = nullptr;
    ~txn_guard() {
        if (txn) mdb_txn_abort(txn);
    }
};

// A cursor over `dbi`, closed at scope exit (LMDB frees a read-only transaction's cursors only when
// closed, also when a copy into the results throws). @throw storage_error
class cursor_guard {
public:
    cursor_guard(MDB_txn* txn, MDB_dbi dbi, const std::string& where, const char* what) {
        if (const int rc = mdb_cursor_open(txn, dbi, &cur_)) throw_lmdb(where, what, rc);
    }
    ~cursor_guard() { mdb_cursor_close(cur_); }
    cursor_guard(const cursor_guard&) = delete;
    cursor_guard& operator=(const cursor_guard&) = delete;
    MDB_cursor* get() const { return cur_; }

private:
    MDB_cursor* cur_ = nullptr;
};

MDB_val as_val(const std::string& s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string as_string(const MDB_val& v) { return std::string(static_cast<const char*>(v.mv_data), v.mv_size); }

// One LMDB environment with the locking and map-growth rules described at the top of the file.
class lmdb_env {
public:
    lmdb_env(std::string dir, std::size_t map_bytes, std::size_t max_map_bytes)
        : dir_(std::move(dir)), max_map_bytes_(std::max(map_bytes, max_map_bytes)), map_bytes_(map_bytes) {}

    ~lmdb_env() { close(); }
    lmdb_env(const lmdb_env&) = delete;
    lmdb_env& operator=(const lmdb_env&) = delete;

    /// Opens the environment; returns the LMDB code instead of throwing so callers can recover.
    int try_open(unsigned flags, unsigned max_dbs) {
        int rc = mdb_env_create(&env_);
        if (rc != 0) return rc;
        if ((rc = mdb_env_set_maxdbs(env_, max_dbs)) != 0 || (rc = mdb_env_set_mapsize(env_, map_bytes_)) != 0 ||
            (rc = mdb_env_open(env_, dir_.c_str(), flags | MDB_NOTLS, 0600)) != 0) {
            close();
            return rc;
        }
        // Clear reader slots left by a process that died holding a read transaction.
        int dead = 0;
        mdb_reader_check(env_, &dead);
        find_map();
        return 0;
    }

    void close() {
        if (env_) mdb_env_close(env_);
        env_ = nullptr;
    }

    const std::string& dir() const { return dir_; }

    /// Runs `fn(txn)` (returning an LMDB code) in one write transaction and commits it; on
    /// MDB_MAP_FULL grows the map and runs it again. @throw storage_full / storage_error
    template <class Fn>
    void write(const char* what, Fn&& fn) {
        std::lock_guard<std::mutex> serial(write_mutex_);
        for (;;) {
            int rc;
            {
                std::shared_lock<std::shared_mutex> map(map_mutex_);
                // A write transaction touches many pages (a checkpoint applies a whole journal): it counts
                // for write_weight reads.
                if ((uses_ += write_weight) % trim_every < write_weight) trim();
                txn_guard g;
                rc = mdb_txn_begin(env_, nullptr, 0, &g.txn);
                if (rc != 0) {
                    g.txn = nullptr;
                    throw_lmdb(dir_, what, rc);
                }
                rc = fn(g.txn);
                if (rc == 0) {
                    MDB_txn* t = g.txn;
                    g.txn = nullptr;  // commit frees the transaction, even when it fails
                    rc = mdb_txn_commit(t);
                }
                if (rc == 0) return;
            }
            if (rc != MDB_MAP_FULL) throw_lmdb(dir_, what, rc);
            grow(what);
        }
    }

    /// Runs `fn(txn)` in a short read transaction. `fn` may throw.
    template <class Fn>
    void read(const char* what, Fn&& fn) const {
        std::shared_lock<std::shared_mutex> map(map_mutex_);
        if (++uses_ % trim_every == 0) trim();
        txn_guard g;
        const int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &g.txn);
        if (rc != 0) {
            g.txn = nullptr;
            throw_lmdb(dir_, what, rc);
        }
        fn(g.txn);
    }

    /// Forces buffered commits to disk (for environments opened with MDB_NOSYNC).
    void sync(const char* what) {
        std::shared_lock<std::shared_mutex> map(map_mutex_);
        const int rc = mdb_env_sync(env_, 1);
        if (rc != 0) throw_lmdb(dir_, what, rc);
    }

    MDB_env* handle() const { return env_; }

private:
    static constexpr unsigned trim_every = 128;
    static constexpr unsigned write_weight = 32;
    // Below this much data the whole file may stay resident: no trimming, which costs latency (the next
    // transactions fault their pages back in; measured: call p99 2.0 -> 5.5 ms with a small store).
    static constexpr std::size_t trim_above = std::size_t(32) << 20;

    // Transactions fault the data file's pages into this process's mapping, where they stay: draining a
    // backlog of a million publishes kept ~170 MiB of the file resident. Dropping the mapping of pages
    // we are done with loses nothing (they stay in the page cache, and LMDB's map is shared and
    // read-only, as MDB_WRITEMAP is not used); the next access faults them back in.
    // Called with map_mutex_ held (shared), so the map is not moved meanwhile.
    void trim() const {
        if (map_.second <= map_.first) return;
        MDB_envinfo info{};
        MDB_stat st{};
        if (mdb_env_info(env_, &info) != 0 || mdb_env_stat(env_, &st) != 0) return;
        if ((info.me_last_pgno + 1) * std::size_t(st.ms_psize) < trim_above) return;
        ::madvise(reinterpret_cast<void*>(map_.first), map_.second - map_.first, MADV_DONTNEED);
    }

    // Where LMDB mapped the data file (me_mapaddr is only set for MDB_FIXEDMAP): after open and after
    // every growth, which maps it again.
    void find_map() {
        map_ = {0, 0};
        const std::string file = dir_ + "/data.mdb";
        std::ifstream maps("/proc/self/maps");
        std::string line;
        while (std::getline(maps, line)) {
            if (line.size() < file.size() || line.compare(line.size() - file.size(), file.size(), file) != 0) continue;
            char* end = nullptr;
            const auto lo = std::strtoull(line.c_str(), &end, 16);
            const auto hi = std::strtoull(end + 1, nullptr, 16);
            if (hi > lo && hi - lo > map_.second - map_.first) map_ = {lo, hi};
        }
    }

    // Called with write_mutex_ held and no transaction of ours open.
    void grow(const char* what) {
        std::unique_lock<std::shared_mutex> map(map_mutex_);
        MDB_envinfo info{};
        mdb_env_info(env_, &info);
        const std::size_t cur = info.me_mapsize;
        if (cur >= max_map_bytes_) throw_lmdb(dir_, what, MDB_MAP_FULL);
        const std::size_t next = cur > max_map_bytes_ / 2 ? max_map_bytes_ : cur * 2;
        int rc = mdb_env_set_mapsize(env_, next);
        if (rc != 0) throw_lmdb(dir_, "grow map", rc);
        find_map();
    }

    MDB_env* env_ = nullptr;
    std::string dir_;
    std::size_t max_map_bytes_;
    std::size_t map_bytes_;
    mutable std::atomic<unsigned> uses_{0};  // transactions, for trim()
    std::pair<unsigned long long, unsigned long long> map_{0, 0};  // address range of the map
    std::mutex write_mutex_;
    mutable std::shared_mutex map_mutex_;
};

// The journal's batch encoding: per write, table (1 byte), put or delete (1 byte), id (length-prefixed),
// value (length-prefixed, puts only).
void append_u32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

void encode_batch(const std::vector<write_op>& batch, std::string& out) {
    out.clear();
    for (const auto& op : batch) {
        out.push_back(static_cast<char>(op.tbl));
        out.push_back(op.value ? 1 : 0);
        append_u32(out, static_cast<std::uint32_t>(op.id.size()));
        out += op.id;
        if (op.value) {
            append_u32(out, static_cast<std::uint32_t>(op.value->size()));
            out += *op.value;
        }
    }
}

std::vector<write_op> decode_batch(const std::string& body, const std::string& dir) {
    std::vector<write_op> out;
    std::size_t pos = 0;
    const auto take = [&](std::size_t n) {
        if (body.size() - pos < n) throw storage_error("lmdb: malformed journal record in '" + dir + "'", EINVAL);
        const std::size_t at = pos;
        pos += n;
        return at;
    };
    const auto take_str = [&] {
        std::uint32_t n;
        std::memcpy(&n, body.data() + take(4), 4);
        return body.substr(take(n), n);
    };
    while (pos < body.size()) {
        const auto tbl = static_cast<table>(static_cast<unsigned char>(body[take(1)]));
        detail::table_index(tbl);
        const bool put = body[take(1)] != 0;
        write_op op{tbl, take_str(), std::nullopt};
        if (put) op.value = take_str();
        out.push_back(std::move(op));
    }
    return out;
}

class lmdb_store final : public store {
public:
    lmdb_store(const std::string& dir, const store_options& opts)
        : lock_((detail::make_private_dir(dir), dir)),
          durability_(opts.durability),
          env_(dir, opts.map_bytes, opts.max_map_bytes) {
        // fsync: default flags, every transaction is synced. process: MDB_NOSYNC, the OS writes it back.
        const unsigned flags = opts.durability == durability::process ? MDB_NOSYNC : 0;
        int rc = env_.try_open(flags, detail::table_count + 2);
        if (rc != 0) throw_lmdb(dir, "open", rc);
        max_key_ = static_cast<std::size_t>(mdb_env_get_maxkeysize(env_.handle()));
        // Named databases are created once and their handles kept for the store's lifetime.
        env_.write("open tables", [&](MDB_txn* txn) {
            for (std::size_t i = 0; i < detail::table_count; ++i) {
                const int r = mdb_dbi_open(txn, table_name(static_cast<table>(i)), MDB_CREATE, &dbis_[i]);
                if (r != 0) return r;
            }
            return mdb_dbi_open(txn, "xymqtt_meta", MDB_CREATE, &meta_dbi_);
        });
        open_journal(dir, opts);
        session_ = std::make_unique<detail::session_records_file>(dir + "/paho", opts);
    }

    ~lmdb_store() override {
        session_.reset();
        if (journal_) {
            // Leaves an empty journal, so the next open has nothing to replay. A failure here loses
            // nothing: the records stay in the journal and are replayed on the next open.
            try {
                std::lock_guard<std::mutex> serial(commit_mu_);
                checkpoint();
            } catch (...) {
            }
        }
        env_.close();
    }

    void commit(const std::vector<write_op>& batch) override {
        if (batch.empty()) return;
        // Validate before writing, with a clearer message than LMDB's MDB_BAD_VALSIZE.
        for (const auto& op : batch) {
            detail::table_index(op.tbl);
            if (op.value && !key_ok(op.id))
                throw storage_error("lmdb: id of " + std::to_string(op.id.size()) + " bytes in '" + env_.dir() +
                                        "': ids must be 1 to " + std::to_string(max_key_) + " bytes",
                                    MDB_BAD_VALSIZE);
        }
        std::lock_guard<std::mutex> serial(commit_mu_);
        if (!journal_) {
            apply(batch, nullptr);
            return;
        }
        encode_batch(batch, body_);
        if (!journal_->could_fit(body_.size())) {
            // Larger than the journal: straight to LMDB, after what the journal holds so order is kept.
            checkpoint();
            apply(batch, nullptr);
            return;
        }
        if (!journal_->fits(body_.size())) checkpoint();
        journal_->append(seq_ + 1, body_);
        ++seq_;
        std::lock_guard<std::mutex> lk(ov_mu_);
        for (const auto& op : batch) {
            if (!key_ok(op.id)) continue;  // an id LMDB cannot store cannot be there
            const std::size_t t = detail::table_index(op.tbl);
            const std::string_view id = keep(op.id);
            overlay_[t][id] = op.value ? std::optional<std::string_view>(keep(*op.value)) : std::nullopt;
        }
    }

    std::optional<std::string> get(table t, const std::string& id) const override {
        const MDB_dbi dbi = dbi_of(t);
        std::optional<std::string> out;
        if (!key_ok(id)) return out;
        std::lock_guard<std::mutex> lk(ov_mu_);
        const auto& ov = overlay_[detail::table_index(t)];
        if (const auto it = ov.find(id); it != ov.end())
            return it->second ? std::optional<std::string>(*it->second) : std::nullopt;
        env_.read("get", [&](MDB_txn* txn) {
            MDB_val k = as_val(id), v{};
            const int rc = mdb_get(txn, dbi, &k, &v);
            if (rc == 0)
                out = as_string(v);
            else if (rc != MDB_NOTFOUND)
                throw_lmdb(env_.dir(), "get", rc);
        });
        return out;
    }

    void for_each(table t, const std::function<bool(const std::string&, const std::string&)>& fn) const override {
        const MDB_dbi dbi = dbi_of(t);
        const auto& ov = overlay_[detail::table_index(t)];
        // Chunks bound both the time a read transaction stays open and the memory copied.
        constexpr std::size_t chunk_records = 256;
        constexpr std::size_t chunk_bytes = std::size_t(4) << 20;
        std::vector<std::pair<std::string, std::string>> chunk, merged;
        std::optional<std::string> after;
        for (;;) {
            chunk.clear();
            merged.clear();
            bool more = false;
            {
                std::lock_guard<std::mutex> lk(ov_mu_);
                env_.read("for_each", [&](MDB_txn* txn) {
                    const cursor_guard g(txn, dbi, env_.dir(), "for_each");
                    MDB_cursor* cur = g.get();
                    int rc;
                    MDB_val k{}, v{};
                    if (after) {
                        k = as_val(*after);
                        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
                        if (rc == 0 && k.mv_size == after->size() &&
                            after->compare(0, after->size(), static_cast<const char*>(k.mv_data), k.mv_size) == 0)
                            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
                    } else {
                        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
                    }
                    std::size_t bytes = 0;
                    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
                        if (chunk.size() >= chunk_records || bytes >= chunk_bytes) {
                            more = true;
                            break;
                        }
                        bytes += k.mv_size + v.mv_size;
                        chunk.emplace_back(as_string(k), as_string(v));
                    }
                    if (rc != 0 && rc != MDB_NOTFOUND) throw_lmdb(env_.dir(), "for_each", rc);
                });
                // The journal's writes not yet in LMDB, over this chunk's id range (all the rest after the
                // last chunk): they replace LMDB's record of the same id, a delete hides it.
                auto o = after ? ov.upper_bound(*after) : ov.begin();
                const auto o_end = more ? ov.upper_bound(chunk.back().first) : ov.end();
                if (more) after = chunk.back().first;
                const auto take_overlay = [&] {  // a put is listed, a delete is not
                    if (o->second) merged.emplace_back(std::string(o->first), std::string(*o->second));
                    ++o;
                };
                for (auto& kv : chunk) {
                    while (o != o_end && o->first < kv.first) take_overlay();
                    if (o != o_end && o->first == kv.first)
                        take_overlay();
                    else
                        merged.push_back(std::move(kv));
                }
                while (o != o_end) take_overlay();
            }
            for (const auto& kv : merged)
                if (!fn(kv.first, kv.second)) return;
            if (!more) return;
        }
    }

    std::optional<std::string> last_id(table t) const override {
        const MDB_dbi dbi = dbi_of(t);
        const auto& ov = overlay_[detail::table_index(t)];
        std::optional<std::string> out;
        std::lock_guard<std::mutex> lk(ov_mu_);
        env_.read("last_id", [&](MDB_txn* txn) {
            const cursor_guard g(txn, dbi, env_.dir(), "last_id");
            MDB_cursor* cur = g.get();
            int rc;
            MDB_val k{}, v{};
            // The greatest id the journal has not deleted.
            for (rc = mdb_cursor_get(cur, &k, &v, MDB_LAST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)) {
                const auto it = ov.find(as_string(k));
                if (it == ov.end() || it->second) {
                    out = as_string(k);
                    break;
                }
            }
            if (rc != 0 && rc != MDB_NOTFOUND) throw_lmdb(env_.dir(), "last_id", rc);
        });
        for (auto it = ov.rbegin(); it != ov.rend(); ++it)
            if (it->second) {
                if (!out || it->first > *out) out = std::string(it->first);
                break;
            }
        return out;
    }

    std::size_t count(table t) const override {
        const MDB_dbi dbi = dbi_of(t);
        const auto& ov = overlay_[detail::table_index(t)];
        std::int64_t n = 0;
        std::lock_guard<std::mutex> lk(ov_mu_);
        env_.read("count", [&](MDB_txn* txn) {
            MDB_stat st{};
            const int rc = mdb_stat(txn, dbi, &st);
            if (rc != 0) throw_lmdb(env_.dir(), "count", rc);
            n = static_cast<std::int64_t>(st.ms_entries);
            // The journal's writes: a put of a new id adds one, a delete of an id LMDB has removes one.
            // Counted here rather than on each commit, as counts are only asked for at start and by tools.
            for (const auto& [id, value] : ov) {
                MDB_val k{id.size(), const_cast<char*>(id.data())}, v{};
                const int r = mdb_get(txn, dbi, &k, &v);
                if (r != 0 && r != MDB_NOTFOUND) throw_lmdb(env_.dir(), "count", r);
                n += (value ? 1 : 0) - (r == 0 ? 1 : 0);
            }
        });
        return static_cast<std::size_t>(n);
    }

    session_records& session() override { return *session_; }
    xymqtt::durability durability() const override { return durability_; }

private:
    MDB_dbi dbi_of(table t) const { return dbis_[detail::table_index(t)]; }
    bool key_ok(std::string_view id) const { return !id.empty() && id.size() <= max_key_; }

    // Copies `bytes` into arena_ (never reallocated: see its declaration). Called with commit_mu_ and ov_mu_ held.
    std::string_view keep(const std::string& bytes) {
        const std::size_t at = arena_.size();
        arena_.append(bytes);
        return std::string_view(arena_.data() + at, bytes.size());
    }

    // Writes `batch` in one LMDB transaction (synced unless MDB_NOSYNC), and the journal's sequence
    // number `seq` with it when given.
    void apply(const std::vector<write_op>& batch, const std::uint64_t* seq) {
        write("commit", seq, [&](const auto& write_one) {
            for (const auto& op : batch) {
                const std::string_view value = op.value ? std::string_view(*op.value) : std::string_view();
                if (const int rc = write_one(op.tbl, op.id, op.value ? &value : nullptr)) return rc;
            }
            return 0;
        });
    }

    // One write transaction: `writes(write_one)` calls write_one(table, id, value or nullptr for a delete)
    // for each write and returns the first non-zero LMDB code.
    template <class Writes>
    void write(const char* what, const std::uint64_t* seq, Writes&& writes) {
        env_.write(what, [&](MDB_txn* txn) {
            const auto write_one = [&](table t, std::string_view id, const std::string_view* value) {
                MDB_val k{id.size(), const_cast<char*>(id.data())};
                if (value) {
                    MDB_val v{value->size(), const_cast<char*>(value->data())};
                    return mdb_put(txn, dbi_of(t), &k, &v, 0);
                }
                if (!key_ok(id)) return 0;  // an id LMDB cannot store cannot be there
                const int rc = mdb_del(txn, dbi_of(t), &k, nullptr);
                return rc == MDB_NOTFOUND ? 0 : rc;
            };
            if (const int rc = writes(write_one)) return rc;
            if (!seq) return 0;
            MDB_val k = as_val(journal_key), v{sizeof *seq, const_cast<std::uint64_t*>(seq)};
            return mdb_put(txn, meta_dbi_, &k, &v, 0);
        });
    }

    // Replays what a crash left in the journal (whatever the durability now), then keeps the journal
    // unless journal_bytes is 0.
    void open_journal(const std::string& dir, const store_options& opts) {
        const std::string path = dir + "/journal";
        const bool use = opts.journal_bytes > 0;
        if (!use && ::access(path.c_str(), F_OK) != 0) return;
        env_.read("journal", [&](MDB_txn* txn) {
            MDB_val k = as_val(journal_key), v{};
            const int rc = mdb_get(txn, meta_dbi_, &k, &v);
            if (rc == 0 && v.mv_size == sizeof seq_)
                std::memcpy(&seq_, v.mv_data, sizeof seq_);
            else if (rc != 0 && rc != MDB_NOTFOUND)
                throw_lmdb(dir, "journal", rc);
        });
        // Process durability writes through a shared mapping: the page cache outlives a killed process,
        // and a transaction per arriving message cost the subscriber ~10 us (docs/benchmarks.md, F14).
        const auto mode = use && durability_ == durability::process ? detail::journal::mode::mapped
                                                                     : detail::journal::mode::synced;
        auto j = std::make_unique<detail::journal>(path, use ? opts.journal_bytes : 0, mode);
        const auto records = j->recover(seq_);
        if (!records.empty()) {
            std::vector<write_op> all;
            for (const auto& r : records)
                for (auto& op : decode_batch(r.body, dir)) all.push_back(std::move(op));
            seq_ = records.back().seq;
            apply(all, &seq_);
            if (durability_ == durability::process) env_.sync("journal replay");
        }
        if (use) {
            journal_ = std::move(j);
            arena_.reserve(journal_->capacity());
        }
    }

    // Moves the journal's writes into LMDB in one transaction (synced unless MDB_NOSYNC) and starts the
    // journal over.
    // Called with commit_mu_ held. @throw storage_error (nothing is lost: the journal keeps them)
    void checkpoint() {
        if (journal_->used() == 0) return;
        std::lock_guard<std::mutex> lk(ov_mu_);  // readers must not see LMDB and the overlay both apply
        write("checkpoint", &seq_, [&](const auto& write_one) {
            for (std::size_t i = 0; i < detail::table_count; ++i)
                for (const auto& [id, value] : overlay_[i])
                    if (const int rc = write_one(static_cast<table>(i), id, value ? &*value : nullptr)) return rc;
            return 0;
        });
        for (auto& ov : overlay_) ov.clear();
        arena_.clear();
        journal_->reset();
    }

    static inline const std::string journal_key = "journal_seq";  // in xymqtt_meta: the last seq in LMDB

    detail::dir_lock lock_;  // first member: taken before, released after, the environments
    xymqtt::durability durability_;
    lmdb_env env_;
    std::array<MDB_dbi, detail::table_count> dbis_{};
    MDB_dbi meta_dbi_ = 0;
    std::size_t max_key_ = 0;  // LMDB's key limit (511 bytes by default)
    std::unique_ptr<detail::session_records_file> session_;

    // Commits go to the journal first; the overlay holds their writes (a delete as nothing) until a
    // checkpoint applies them to LMDB. Readers look at the overlay, then LMDB.
    std::unique_ptr<detail::journal> journal_;
    std::uint64_t seq_ = 0;  // the last journal record written (or applied to LMDB)
    std::mutex commit_mu_;   // serializes commits and checkpoints
    mutable std::mutex ov_mu_;
    // The overlay's ids and values live in arena_, reserved once to the journal's capacity (what they add up
    // to is less than the journal records holding them), so a checkpoint frees them at once and the
    // heap does not fragment with thousands of small strings per cycle (measured: +12 MiB RSS).
    std::array<std::map<std::string_view, std::optional<std::string_view>>, detail::table_count> overlay_;
    std::string arena_;
    std::string body_;  // the journal record being written (commit_mu_); reused, so no large allocation per
                        // commit stays behind in the heap
};

}  // namespace

std::unique_ptr<store> open_lmdb_store(const std::string& dir, const store_options& opts) {
    return std::make_unique<lmdb_store>(dir, opts);
}

}  // namespace xymqtt
