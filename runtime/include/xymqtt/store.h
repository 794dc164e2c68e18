/// @file store.h
/// The durable store behind a client: what it must guarantee, and the two implementations.
///
/// A store holds a few tables of records keyed by id. Each table has xy-mqtt's packet-store
/// contract (`put / get / del / all`, see packet_store); the runtime itself writes through `commit`,
/// which applies a batch to several tables atomically so that, for example, a command's result, its
/// outgoing publish and the removal of its invoke from the inbox become durable together.
///
/// Guarantees every implementation gives:
///  - `commit` is atomic: after a crash either all writes of a batch are present or none are.
///  - When `commit` returns with durability::fsync, the batch survives power loss; with
///    durability::process it survives the death of the process, not of the machine.
///  - `commit` throws storage_error (storage_full for a full disk or map that cannot grow) and then
///    has written nothing. Errors are never swallowed.
///  - `for_each` and `all` visit records in ascending byte order of their ids.
///  - Files are created 0600 in a directory created 0700.
///  - A store is used by one process at a time (`open_*` fails if another process holds it).
/// Stores are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xymqtt/message.h"

namespace xymqtt {

/// What a successful commit survives.
enum class durability : std::uint8_t {
    fsync,    ///< Synced to disk before the commit returns: survives power loss. The default.
    process,  ///< Written to the OS: survives a killed process, not a power loss. Much faster.
};

/// The tables of a store.
enum class table : std::uint8_t {
    outgoing,      ///< Outbox: accepted publishes not yet completed (xy-mqtt's outgoingDB).
    incoming,      ///< Inbox: committed deliveries not yet handled (xy-mqtt's incomingDB).
    dead_letters,  ///< Deliveries that could not be decoded or ran out of attempts.
    results,       ///< Command server: outcome of each invoke by message id (durable dedupe).
    calls,         ///< Command caller: calls awaiting a result, by message id.
};

/// @return the table's name, as used in SQLite table names and by the command-line tool.
const char* table_name(table t);

/// One write of a batch: a put when `value` is set, a delete otherwise.
struct write_op {
    table tbl;
    std::string id;
    std::optional<std::string> value;
};

/// xy-mqtt's packet-store contract over one table: records keyed by message id.
class packet_store {
public:
    virtual ~packet_store() = default;
    /// Inserts or replaces the record `id`. Durable when it returns. @throw storage_error
    virtual void put(const std::string& id, const std::string& record) = 0;
    /// @return the record `id`, or nothing. @throw storage_error
    virtual std::optional<std::string> get(const std::string& id) const = 0;
    /// Removes the record `id`; removing a missing record is not an error. @throw storage_error
    virtual void del(const std::string& id) = 0;
    /// @return every record, ordered by id. @throw storage_error
    virtual std::vector<std::pair<std::string, std::string>> all() const = 0;
};

/// A flat key-value area for Paho's own persistence records (`mqtt::iclient_persistence`).
/// Kept apart from the tables: Paho writes it on its network threads, several times per packet.
class paho_records {
public:
    virtual ~paho_records() = default;
    /// @param sync also sync to disk before returning (used for records that guard an ack).
    virtual void put(const std::string& key, const std::string& value, bool sync) = 0;
    virtual std::optional<std::string> get(const std::string& key) const = 0;
    virtual void remove(const std::string& key) = 0;
    virtual std::vector<std::string> keys() const = 0;
    virtual void clear() = 0;
};

/// A durable store. See the file comment for the guarantees.
class store {
public:
    virtual ~store() = default;

    /// Applies `batch` atomically, durable at the store's durability level when it returns.
    /// @throw storage_error (or storage_full); nothing of the batch is then written.
    virtual void commit(const std::vector<write_op>& batch) = 0;
    /// @return the record `id` of `t`, or nothing. @throw storage_error
    virtual std::optional<std::string> get(table t, const std::string& id) const = 0;
    /// Calls `fn` for each record of `t` in id order until it returns false. @throw storage_error
    virtual void for_each(table t,
                          const std::function<bool(const std::string& id, const std::string& value)>& fn) const = 0;
    /// @return the greatest id in `t`, or nothing if it is empty.
    virtual std::optional<std::string> last_id(table t) const = 0;
    /// @return the number of records in `t`.
    virtual std::size_t count(table t) const = 0;
    /// @return the area for Paho's records.
    virtual paho_records& paho() = 0;
    /// @return the durability of commits.
    virtual xymqtt::durability durability() const = 0;

    /// @return xy-mqtt's put/get/del/all view of one table (each put or del is its own commit).
    packet_store& view(table t);

protected:
    store();

private:
    std::vector<std::unique_ptr<packet_store>> views_;
};

/// Options to open a store.
struct store_options {
    xymqtt::durability durability = durability::fsync;
    /// LMDB: initial map size; the map grows (doubling) when full, up to max_map_bytes.
    std::size_t map_bytes = std::size_t(256) << 20;
    std::size_t max_map_bytes = std::size_t(64) << 30;
    /// LMDB: size of the write-ahead journal (file `journal` in the store's directory). Each commit is
    /// appended there and applied to LMDB in one transaction when the journal is full, on close, and on
    /// the next open after a crash. With durability::fsync an append costs one fdatasync; with
    /// durability::process it is copied into a shared mapping of the file (no system call). 0 commits
    /// every batch straight to LMDB: with fsync two synced writes each (data pages, then the meta page),
    /// with process an `MDB_NOSYNC` transaction.
    std::size_t journal_bytes = std::size_t(1) << 20;
};

/// Opens (creating if needed) the LMDB store in directory `dir`. The embedded default.
/// @throw configuration_error if the directory cannot be created or used; storage_error otherwise.
std::unique_ptr<store> open_lmdb_store(const std::string& dir, const store_options& opts = {});

/// Opens (creating if needed) the SQLite store in directory `dir` (file `xymqtt.sqlite3`), with
/// xy-mqtt's tables `mqtt_outgoing_packet` and `mqtt_incoming_packet` (columns id, at, packet)
/// plus the other tables in the same form. WAL journal; synchronous=EXTRA for fsync durability,
/// OFF for process durability.
/// @throw configuration_error if the directory cannot be created or used; storage_error otherwise.
std::unique_ptr<store> open_sqlite_store(const std::string& dir, const store_options& opts = {});

/// Which built-in store a client opens.
enum class store_kind : std::uint8_t { lmdb, sqlite };

/// Opens the built-in store of kind `kind` in `dir`.
std::unique_ptr<store> open_store(store_kind kind, const std::string& dir, const store_options& opts = {});

/// A stored delivery or publish: the record format of the outgoing, incoming and dead_letters tables.
struct stored_message {
    std::string topic;
    std::string payload;
    message_properties props;
    bool retain = false;
    /// Inbox: the subscription filter (lane) this delivery belongs to; empty until one matches.
    std::string lane;
    /// Inbox: attempts made so far, and when the next may start (ms since epoch).
    std::uint32_t attempts = 0;
    std::int64_t next_attempt_ms = 0;
    /// When it was stored (ms since epoch).
    std::int64_t created_ms = 0;
    /// Dead letters: why the message was dead-lettered.
    std::string error;
    /// Outbox: the message belongs to a command call/result (kept for the command-line tool).
    std::string kind;
    /// Dead letters: the broker refused it on its way out; replaying it publishes it again.
    bool outgoing = false;
};

/// Encodes a stored_message as a versioned binary record.
std::string encode_record(const stored_message& m);
/// Decodes a record written by encode_record. @throw storage_error if it is malformed.
stored_message decode_record(const std::string& bytes);

/// @return a fixed-width id (20 decimal digits) whose byte order is the numeric order of `seq`.
std::string sequence_id(std::uint64_t seq);
/// @return the number behind a sequence_id, or nothing if `id` is not one.
std::optional<std::uint64_t> parse_sequence_id(const std::string& id);

}  // namespace xymqtt
