/// @file journal.h
/// A write-ahead journal: the LMDB store's commit path (see lmdb_store.cpp).
///
/// Why: an LMDB commit with default flags costs two synchronous writes (the data pages, then the
/// meta page), and the receive callback commits one message at a time. A record appended to a file
/// whose blocks are already written costs one `fdatasync` and no file-system metadata, about twice
/// the rate on the machines measured (docs/benchmarks.md). Without syncs, even an `MDB_NOSYNC`
/// transaction writes whole pages with system calls, where a record copied into a shared mapping of
/// the file costs none. The store appends each batch here, applies it to LMDB later in one transaction
/// (a checkpoint), and replays what a crash left behind.
///
/// Format: a file of `capacity` bytes, written in full once when created. Records follow each other
/// from offset 0: a 20-byte header (magic, body length, sequence number, CRC-32 of length, sequence
/// and body) and the body. After a checkpoint, writing starts again at offset 0 with the next sequence
/// number, so the valid journal is the run of records from offset 0 whose sequence numbers continue
/// the checkpointed one by one; a torn or stale record ends it, unless a whole record numbered past
/// every record before it follows (a record damaged in place): the run goes on from that one.
///
/// Guarantees:
///  - mode::synced: `append` returns once the record is on disk (`fdatasync`); on failure it throws
///    storage_error and the record is not part of the journal (recovery stops before it, and the next
///    append overwrites it).
///  - mode::mapped: `append` returns once the record is in the page cache, which outlives the process
///    (not the machine); a process killed during an append leaves a torn record, which ends recovery.
///  - `recover(after)` returns exactly the records appended after sequence `after` and before the last
///    reset, in order, up to the first record that did not reach the disk whole. A record damaged after
///    it was written (its successors whole) costs that record only: the ones after it are returned.
/// Not thread-safe: the store serializes its commits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace xymqtt::detail {

class journal {
public:
    struct record {
        std::uint64_t seq = 0;
        std::string body;
    };

    static constexpr std::size_t header_bytes = 20;

    /// How an append reaches the file.
    enum class mode {
        synced,  ///< `pwrite` and `fdatasync`: on disk when append returns (survives a power loss)
        mapped,  ///< copied into a shared mapping of the file: in the page cache when append returns,
                 ///< so it survives the process being killed, with no system call per record
    };

    /// Opens `path`, creating it (0600, `capacity` bytes written and synced) if it is missing or shorter.
    /// @throw storage_error (storage_full if the disk has no room for it)
    journal(std::string path, std::size_t capacity, mode m = mode::synced);
    ~journal();
    journal(const journal&) = delete;
    journal& operator=(const journal&) = delete;

    /// @return the records with a sequence number greater than `after`, in order, out of the run of
    /// valid records from offset 0 whose sequence numbers follow each other, resumed past a damaged
    /// record at the next whole one numbered higher than any before it.
    /// @throw storage_error if the file cannot be read
    std::vector<record> recover(std::uint64_t after) const;

    /// @return whether a record with a body of `body_bytes` fits after the records written so far.
    bool fits(std::size_t body_bytes) const { return offset_ + header_bytes + body_bytes <= capacity_; }
    /// @return whether a record with a body of `body_bytes` could fit at all (in an empty journal).
    bool could_fit(std::size_t body_bytes) const { return header_bytes + body_bytes <= capacity_; }

    /// Writes record `seq` after the previous one (and syncs it in mode::synced). Requires fits(body.size()).
    /// @throw storage_error
    void append(std::uint64_t seq, const std::string& body);

    /// Starts writing at offset 0 again: every record so far is durable elsewhere.
    void reset() { offset_ = 0; }

    /// @return bytes used since the last reset.
    std::size_t used() const { return offset_; }
    /// @return the size of the file: no more record bytes fit between two resets.
    std::size_t capacity() const { return capacity_; }

private:
    std::string path_;
    std::size_t capacity_;
    std::size_t offset_ = 0;
    int fd_ = -1;
    char* map_ = nullptr;  // mode::mapped: the whole file, whose blocks are written (no SIGBUS on a full disk)
};

/// CRC-32 (IEEE 802.3) of `n` bytes, continuing from `crc`: zlib's crc32, which records on disk carry.
std::uint32_t crc32(std::uint32_t crc, const void* data, std::size_t n);

/// @return the 32-bit field at `p` of a record (host byte order, as written), without alignment needs.
inline std::uint32_t load_u32(const char* p) {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

}  // namespace xymqtt::detail
