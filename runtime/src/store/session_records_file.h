/// @file session_records_file.h
/// Paho's records for the LMDB store: a log file in a shared mapping, indexed in memory.
///
/// Why: Paho writes or removes a record several times per packet (eight per published message), on its
/// network threads and mostly under its global lock. As LMDB write transactions these were ~10 % of a
/// publisher's CPU and lengthened the hold times of that lock (docs/benchmarks.md, F3). Here a write is an
/// index update and a copy into the mapping: no system call (a value of 2 KiB or more: one pwritev, which
/// costs less than a page fault per page). The mapping holds the only copy of the values. A shared file
/// mapping is the page cache itself,
/// so a written record survives the death of the process, which is all process durability asks;
/// `put(..., sync=true)` also syncs the file for the records that must survive a power loss.
///
/// Format of `dir/records`: records follow each other from offset 0, each a 12-byte header (CRC-32 of
/// the rest of the header and the body; key length, its top bit set for a removal; value length) and
/// the body (key, then value). The file is allocated in full before it is mapped (a write to an
/// unbacked page of a mapping would kill the process with SIGBUS on a full disk), so its unused end
/// reads as zeros; the log ends at the first all-zero, torn or corrupt header.
///
/// Compaction: when a record does not fit, and on every open, the live records are written to
/// `dir/records.new`, which replaces `dir/records` by rename; a crash leaves one of the two whole. The new
/// file has room for three times the live records more, so that a compaction, which writes every page of a
/// new file, comes once per three times the live bytes written (64 KiB publishes in flight: F21).
/// Thread-safe.
#pragma once

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xymqtt/store.h"

namespace xymqtt::detail {

class session_records_file final : public session_records {
public:
    /// Opens (creating if needed) the records in directory `dir`. An unreadable log starts empty: the
    /// store's tables are the source of truth, so only duplicates can result.
    /// @param durable_compaction sync each compacted file before it replaces the old one (fsync stores)
    /// @param min_capacity bytes of a new log file (more if the live records need it). Small, because
    ///        its blocks are reserved on disk while Paho's live records are only what is in flight.
    /// @throw storage_error (storage_full when the disk has no room for the file)
    session_records_file(const std::string& dir, bool durable_compaction,
                      std::size_t min_capacity = std::size_t(256) << 10);
    /// For the LMDB store: durable compactions with fsync durability.
    session_records_file(const std::string& dir, const store_options& opts);
    ~session_records_file() override;
    session_records_file(const session_records_file&) = delete;
    session_records_file& operator=(const session_records_file&) = delete;

    void put(const std::string& key, const std::string& value, bool sync) override;
    std::optional<std::string> get(const std::string& key) const override;
    void remove(const std::string& key) override;
    /// @return the keys in ascending byte order.
    std::vector<std::string> keys() const override;
    void clear() override;

    /// @return the size of the current log file (for tests).
    std::size_t capacity() const;

private:
    /// Where a record's value lies in the mapping: the mapping is the only copy of the records.
    struct location {
        std::size_t off;
        std::size_t len;
    };
    /// Values from this size on are written with pwritev rather than through the mapping.
    static constexpr std::size_t pwrite_above = 2048;

    /// @return the live records of the log file (none if it is missing).
    std::unordered_map<std::string, std::string> load() const;
    /// Appends one record; compacts first if it does not fit. mu_ held. @return where its value lies
    std::size_t append(const std::string& key, const std::string* value);
    /// Writes the live records (and room for `extra` bytes more) to a new file that replaces the log.
    void compact(std::size_t extra);
    /// Writes `live` (and room for `extra` bytes more) to a new file that replaces the log, and maps it.
    void rewrite(const std::vector<std::pair<std::string_view, std::string_view>>& live, std::size_t extra);
    void unmap();

    std::string dir_;
    std::string path_;
    bool durable_compaction_;
    std::size_t min_capacity_;
    mutable std::mutex mu_;
    std::unordered_map<std::string, location> records_;
    int fd_ = -1;
    char* map_ = nullptr;
    std::size_t capacity_ = 0;
    std::size_t used_ = 0;
};

}  // namespace xymqtt::detail
