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

/// The name of a table.
/// @param t the table.
/// @return the table's name, as used in SQLite table names and by the command-line tool; "unknown" for
///         a value outside the enum.
const char* table_name(table t);

/// One write of a batch: a put when `value` is set, a delete otherwise.
struct write_op {
    table tbl;                         ///< The table written.
    std::string id;                    ///< The record's id within `tbl`.
    std::optional<std::string> value;  ///< The record to store; unset deletes `id`.
};

/// xy-mqtt's packet-store contract over one table: records keyed by message id.
class packet_store {
public:
    virtual ~packet_store() = default;
    /// Inserts or replaces the record `id`. Durable when it returns.
    /// @param id the record's id.
    /// @param record the record's bytes.
    /// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk or map) if the store fails;
    ///        nothing is written then.
    virtual void put(const std::string& id, const std::string& record) = 0;
    /// Reads one record.
    /// @param id the record's id.
    /// @return the record `id`, or nothing.
    /// @throw xymqtt::storage_error if the store fails.
    virtual std::optional<std::string> get(const std::string& id) const = 0;
    /// Removes the record `id`; removing a missing record is not an error. Durable when it returns.
    /// @param id the record's id.
    /// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk or map) if the store fails;
    ///        nothing is removed then.
    virtual void del(const std::string& id) = 0;
    /// Reads the whole table.
    /// @return every record as (id, record), ordered by id.
    /// @throw xymqtt::storage_error if the store fails.
    virtual std::vector<std::pair<std::string, std::string>> all() const = 0;
};

/// A flat key-value area for the MQTT session's own records: the packets in flight that the protocol
/// layer must find again after a restart (keys such as `s-12`, `r-7`). Kept apart from the tables: the
/// session writes it on its network threads, several times per packet.
class session_records {
public:
    virtual ~session_records() = default;
    /// Inserts or replaces the record `key`.
    /// @param key the record's key (the session layer's).
    /// @param value the record's bytes.
    /// @param sync also sync to disk before returning (used for records that guard an ack).
    /// @throw xymqtt::storage_error if the record cannot be written.
    virtual void put(const std::string& key, const std::string& value, bool sync) = 0;
    /// Reads one record.
    /// @param key the record's key.
    /// @return the record, or nothing.
    /// @throw xymqtt::storage_error if the area cannot be read.
    virtual std::optional<std::string> get(const std::string& key) const = 0;
    /// Removes the record `key`; removing a missing record is not an error.
    /// @param key the record's key.
    /// @throw xymqtt::storage_error if the area cannot be written.
    virtual void remove(const std::string& key) = 0;
    /// Lists the records.
    /// @return every key.
    /// @throw xymqtt::storage_error if the area cannot be read.
    virtual std::vector<std::string> keys() const = 0;
    /// Removes every record.
    /// @throw xymqtt::storage_error if the area cannot be written.
    virtual void clear() = 0;
};

/// A durable store. See the file comment for the guarantees.
class store {
public:
    virtual ~store() = default;

    /// Applies `batch` atomically, durable at the store's durability level when it returns.
    /// @param batch the writes, applied in order (a later write of the same id wins).
    /// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk or a map that cannot grow);
    ///        nothing of the batch is then written.
    virtual void commit(const std::vector<write_op>& batch) = 0;
    /// Reads one record.
    /// @param t the table.
    /// @param id the record's id.
    /// @return the record `id` of `t`, or nothing.
    /// @throw xymqtt::storage_error if the store fails.
    virtual std::optional<std::string> get(table t, const std::string& id) const = 0;
    /// Calls `fn` for each record of `t` in id order until it returns false.
    /// @param t the table.
    /// @param fn called with each record's id and value; returns false to stop.
    /// @throw xymqtt::storage_error if the store fails; what `fn` throws.
    virtual void for_each(table t,
                          const std::function<bool(const std::string& id, const std::string& value)>& fn) const = 0;
    /// The last record of a table.
    /// @param t the table.
    /// @return the greatest id in `t`, or nothing if it is empty.
    /// @throw xymqtt::storage_error if the store fails.
    virtual std::optional<std::string> last_id(table t) const = 0;
    /// The size of a table.
    /// @param t the table.
    /// @return the number of records in `t`.
    /// @throw xymqtt::storage_error if the store fails.
    virtual std::size_t count(table t) const = 0;
    /// @return the area for the MQTT session's records.
    virtual session_records& session() = 0;
    /// @return the durability of commits.
    virtual xymqtt::durability durability() const = 0;

    /// A packet_store over one table of this store.
    /// @param t the table.
    /// @return xy-mqtt's put/get/del/all view of `t` (each put or del is its own commit), valid as long
    ///         as the store.
    /// @throw xymqtt::storage_error for a value of `t` outside the enum.
    packet_store& view(table t);

protected:
    /// Builds the per-table views that view() returns.
    store();

private:
    std::vector<std::unique_ptr<packet_store>> views_;
};

/// Options to open a store.
struct store_options {
    xymqtt::durability durability = durability::fsync;  ///< What a successful commit survives.
    /// LMDB: initial map size; the map grows (doubling) when full, up to max_map_bytes.
    std::size_t map_bytes = std::size_t(256) << 20;
    /// LMDB: the largest map; a commit that needs more throws storage_full.
    std::size_t max_map_bytes = std::size_t(64) << 30;
    /// LMDB: size of the write-ahead journal (file `journal` in the store's directory). Each commit is
    /// appended there and applied to LMDB in one transaction when the journal is full, on close, and on
    /// the next open after a crash. With durability::fsync an append costs one fdatasync; with
    /// durability::process it is copied into a shared mapping of the file (no system call). 0 commits
    /// every batch straight to LMDB: with fsync two synced writes each (data pages, then the meta page),
    /// with process an `MDB_NOSYNC` transaction.
    std::size_t journal_bytes = std::size_t(1) << 20;
};

/// Opens (creating if needed) the LMDB store in directory `dir`. The embedded default. Commits that a
/// crash left in the journal are applied before it returns.
/// @param dir the store's directory; missing directories are created 0700.
/// @param opts durability, map and journal sizes.
/// @return the open store; it holds `dir` until it is destroyed.
/// @throw xymqtt::configuration_error if the directory cannot be created or used, or another process
///        (or another open store of this process) holds it.
/// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk) if LMDB, its journal or the
///        session records cannot be opened or recovered.
std::unique_ptr<store> open_lmdb_store(const std::string& dir, const store_options& opts = {});

/// Opens (creating if needed) the SQLite store in directory `dir` (file `xymqtt.sqlite3`), with
/// xy-mqtt's tables `mqtt_outgoing_packet` and `mqtt_incoming_packet` (columns id, at, packet)
/// plus the other tables in the same form. WAL journal; synchronous=EXTRA for fsync durability,
/// OFF for process durability.
/// @param dir the store's directory; missing directories are created 0700.
/// @param opts durability (the LMDB sizes do not apply).
/// @return the open store; it holds `dir` until it is destroyed.
/// @throw xymqtt::configuration_error if the directory or the database file cannot be created or used,
///        or another process (or another open store of this process) holds the directory.
/// @throw xymqtt::storage_error (xymqtt::storage_full for a full disk) if SQLite cannot open or set up
///        the database.
std::unique_ptr<store> open_sqlite_store(const std::string& dir, const store_options& opts = {});

/// Which built-in store a client opens.
enum class store_kind : std::uint8_t {
    lmdb,    ///< open_lmdb_store (the default).
    sqlite,  ///< open_sqlite_store.
};

/// Opens the built-in store of kind `kind` in `dir`: open_lmdb_store or open_sqlite_store.
/// @param kind which store.
/// @param dir the store's directory.
/// @param opts options of the store.
/// @return the open store.
/// @throw xymqtt::configuration_error as the chosen open function does, and for a value of `kind`
///        outside the enum.
/// @throw xymqtt::storage_error as the chosen open function does.
std::unique_ptr<store> open_store(store_kind kind, const std::string& dir, const store_options& opts = {});

/// A stored delivery or publish: the record format of the outgoing, incoming and dead_letters tables.
struct stored_message {
    std::string topic;         ///< The message's topic.
    std::string payload;       ///< The payload bytes.
    message_properties props;  ///< MQTT 5 properties.
    bool retain = false;       ///< Outbox: published with the retain flag.
    /// Inbox: the subscription filter (lane) this delivery belongs to; empty until one matches.
    std::string lane;
    std::uint32_t attempts = 0;        ///< Inbox: attempts made so far.
    std::int64_t next_attempt_ms = 0;  ///< Inbox: when the next attempt may start (ms since epoch).
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
/// @param m the message.
/// @return the record's bytes.
std::string encode_record(const stored_message& m);
/// Decodes a record written by encode_record. Any input is safe: every length is checked.
/// @param bytes the record's bytes.
/// @return the message.
/// @throw xymqtt::storage_error if the record is malformed (truncated, trailing bytes, unknown
///        version or flags).
stored_message decode_record(const std::string& bytes);

/// Makes an id for a sequence number.
/// @param seq the number.
/// @return a fixed-width id (20 decimal digits) whose byte order is the numeric order of `seq`.
std::string sequence_id(std::uint64_t seq);
/// Reads an id made by sequence_id.
/// @param id the id.
/// @return the number behind a sequence_id, or nothing if `id` is not one.
std::optional<std::uint64_t> parse_sequence_id(const std::string& id);

}  // namespace xymqtt
