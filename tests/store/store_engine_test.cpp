// Engine-specific behaviour: LMDB map growth and map full, recovery of corrupted Paho records.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "store_test_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"

using namespace xymqtt;
using store_test::temp_dir;

namespace {
constexpr std::size_t mib = std::size_t(1) << 20;

write_op put(table t, std::string id, std::string v) { return write_op{t, std::move(id), std::move(v)}; }
}  // namespace

TEST_CASE("lmdb: the map grows while readers run", "[store][lmdb]") {
    temp_dir tmp;
    store_options opts;
    opts.durability = durability::process;
    opts.map_bytes = mib;
    auto s = open_lmdb_store(tmp.store_dir(), opts);

    // Readers keep running while the writer hits MDB_MAP_FULL and remaps.
    std::atomic<bool> stop{false};
    std::atomic<bool> reader_failed{false};
    std::thread reader([&] {
        try {
            while (!stop) {
                s->count(table::outgoing);
                s->get(table::outgoing, sequence_id(0));
                s->last_id(table::outgoing);
            }
        } catch (...) {
            reader_failed = true;
        }
    });

    const std::string value(50 * 1024, 'v');
    constexpr std::uint64_t records = 400;  // ~20 MiB
    for (std::uint64_t i = 0; i < records; i += 4) {
        std::vector<write_op> batch;
        for (std::uint64_t j = i; j < i + 4; ++j) batch.push_back(put(table::outgoing, sequence_id(j), value));
        s->commit(batch);
    }
    stop = true;
    reader.join();
    CHECK_FALSE(reader_failed);
    CHECK(s->count(table::outgoing) == records);
    for (std::uint64_t i = 0; i < records; ++i) {
        const auto v = s->get(table::outgoing, sequence_id(i));
        REQUIRE(v.has_value());
        CHECK(v->size() == value.size());
    }

    // The grown data is there after reopening with the small initial map too.
    s.reset();
    s = open_lmdb_store(tmp.store_dir(), opts);
    CHECK(s->count(table::outgoing) == records);
}

TEST_CASE("lmdb: map full at the maximum throws storage_full and writes nothing", "[store][lmdb]") {
    temp_dir tmp;
    store_options opts;
    opts.map_bytes = mib;
    opts.max_map_bytes = mib;
    auto s = open_lmdb_store(tmp.store_dir(), opts);

    const std::string value(64 * 1024, 'x');
    std::uint64_t written = 0;
    bool full = false;
    for (; written < 100; ++written) {
        try {
            s->commit({put(table::outgoing, sequence_id(written), value), put(table::calls, sequence_id(written), "c")});
        } catch (const storage_full& e) {
            full = true;
            CHECK_THAT(e.what(), Catch::Contains("MDB_MAP_FULL"));
            break;
        }
    }
    REQUIRE(full);
    CHECK(written > 0);
    // The failed batch left nothing behind, in either table.
    CHECK_FALSE(s->get(table::outgoing, sequence_id(written)).has_value());
    CHECK_FALSE(s->get(table::calls, sequence_id(written)).has_value());
    CHECK(s->count(table::outgoing) == written);
    CHECK(s->count(table::calls) == written);

    // Freeing space makes the store usable again.
    for (std::uint64_t i = 0; i < written / 2 + 1; ++i) s->commit({write_op{table::outgoing, sequence_id(i), {}}});
    CHECK_NOTHROW(s->commit({put(table::outgoing, sequence_id(1000), "small")}));
    CHECK(s->get(table::outgoing, sequence_id(1000)) == std::optional<std::string>("small"));
    CHECK_NOTHROW(s->commit({put(table::outgoing, sequence_id(1001), value)}));

    // A single record that can never fit is storage_full too.
    CHECK_THROWS_AS(s->commit({put(table::outgoing, "huge", std::string(2 * mib, 'h'))}), storage_full);
}

TEST_CASE("lmdb: ids beyond the key limit are refused whole", "[store][lmdb]") {
    temp_dir tmp;
    auto s = open_lmdb_store(tmp.store_dir());
    const std::string long_id(600, 'k');
    // LMDB keys are limited to 511 bytes: the batch is refused and nothing of it is written.
    try {
        s->commit({put(table::outgoing, "ok", "1"), put(table::outgoing, long_id, "2")});
        FAIL("expected storage_error");
    } catch (const storage_error& e) {
        CHECK(e.code() != 0);
        CHECK_THAT(e.what(), Catch::Contains("600 bytes"));
    }
    CHECK_THROWS_AS(s->commit({put(table::outgoing, "", "empty id")}), storage_error);
    CHECK(s->count(table::outgoing) == 0);
    // Such ids cannot be present: reading or deleting them is not an error.
    CHECK_FALSE(s->get(table::outgoing, long_id).has_value());
    CHECK_FALSE(s->get(table::outgoing, "").has_value());
    CHECK_NOTHROW(s->commit({write_op{table::outgoing, long_id, {}}, put(table::outgoing, "ok", "1")}));
    CHECK(s->count(table::outgoing) == 1);
    CHECK_NOTHROW(s->commit({put(table::outgoing, std::string(511, 'k'), "max")}));
}

TEST_CASE("lmdb: reads agree with a model while the journal fills, checkpoints and is replayed", "[store][lmdb][journal]") {
    // Small journal: a checkpoint every few commits, and batches larger than the journal go straight
    // to LMDB. Large journal: everything stays in the overlay, over more LMDB records than a for_each
    // chunk holds.
    const std::size_t journal_bytes = GENERATE(std::size_t(2048), std::size_t(1) << 20);
    INFO("journal bytes " << journal_bytes);
    temp_dir tmp;
    store_options opts;
    opts.journal_bytes = journal_bytes;
    std::map<std::string, std::string> model;  // table incoming
    std::mt19937 rng(42);
    const auto key = [](unsigned k) { return sequence_id(k); };
    auto s = open_lmdb_store(tmp.store_dir(), opts);
    // A base in LMDB (the close checkpoints it), then random writes over it.
    std::vector<write_op> base;
    for (unsigned k = 0; k < 1000; k += 2) {
        base.push_back(put(table::incoming, key(k), "base" + std::to_string(k)));
        model[key(k)] = "base" + std::to_string(k);
    }
    s->commit(base);
    s.reset();
    s = open_lmdb_store(tmp.store_dir(), opts);

    const auto check_all = [&] {
        std::vector<std::pair<std::string, std::string>> seen;
        s->for_each(table::incoming, [&](const std::string& id, const std::string& v) {
            seen.emplace_back(id, v);
            return true;
        });
        REQUIRE(seen == std::vector<std::pair<std::string, std::string>>(model.begin(), model.end()));
        REQUIRE(s->count(table::incoming) == model.size());
        REQUIRE(s->last_id(table::incoming) ==
                (model.empty() ? std::nullopt : std::optional<std::string>(model.rbegin()->first)));
    };
    for (int step = 0; step < 400; ++step) {
        std::vector<write_op> batch;
        const int n = step % 50 == 49 ? 100 : 1 + static_cast<int>(rng() % 3);
        for (int i = 0; i < n; ++i) {
            const unsigned k = rng() % 1100;
            if (rng() % 3 == 0) {
                batch.push_back(write_op{table::incoming, key(k), std::nullopt});
                model.erase(key(k));
            } else {
                const std::string v = "v" + std::to_string(step) + "-" + std::to_string(i);
                batch.push_back(put(table::incoming, key(k), v));
                model[key(k)] = v;
            }
        }
        // The greatest id removed now and then, so last_id must look past deletes.
        if (step % 40 == 7 && !model.empty()) {
            batch.push_back(write_op{table::incoming, model.rbegin()->first, std::nullopt});
            model.erase(std::prev(model.end()));
        }
        s->commit(batch);
        for (const auto& op : batch) {
            const auto it = model.find(op.id);
            REQUIRE(s->get(table::incoming, op.id) ==
                    (it == model.end() ? std::nullopt : std::optional<std::string>(it->second)));
        }
        if (step % 25 == 0) check_all();
        if (step == 200) {
            s.reset();  // a close checkpoints
            s = open_lmdb_store(tmp.store_dir(), opts);
            check_all();
        }
    }
    check_all();
    CHECK(s->count(table::results) == 0);
}

TEST_CASE("lmdb: a journal already applied is never replayed", "[store][lmdb][journal]") {
    temp_dir tmp;
    // An fsync session writes through the journal; its close applies it to LMDB, the records stay in the file.
    open_lmdb_store(tmp.store_dir())->commit({put(table::outgoing, "a", "from the journal")});
    // A process session (no journal) deletes the record straight in LMDB.
    store_options process;
    process.durability = durability::process;
    open_lmdb_store(tmp.store_dir(), process)->commit({write_op{table::outgoing, "a", std::nullopt}});
    // The next fsync session must not bring it back from the journal's old record.
    auto s = open_lmdb_store(tmp.store_dir());
    CHECK(s->get(table::outgoing, "a") == std::nullopt);
    CHECK(s->count(table::outgoing) == 0);
}

TEST_CASE("corrupted paho records are recreated empty", "[store]") {
    temp_dir tmp;
    const std::string dir = tmp.store_dir();
    SECTION("lmdb") {
        {
            auto s = open_lmdb_store(dir);
            s->commit({put(table::outgoing, "1", "kept")});
            s->session().put("s-1", "lost", true);
        }
        {
            std::ofstream f(dir + "/paho/records", std::ios::binary | std::ios::trunc);
            f << std::string(16384, 'g');
        }
        auto s = open_lmdb_store(dir);
        CHECK(s->session().keys().empty());
        CHECK(s->get(table::outgoing, "1") == std::optional<std::string>("kept"));
        s->session().put("s-2", "new", true);
        CHECK(s->session().get("s-2") == std::optional<std::string>("new"));
    }
    SECTION("sqlite") {
        {
            auto s = open_sqlite_store(dir);
            s->commit({put(table::outgoing, "1", "kept")});
            s->session().put("s-1", "lost", true);
        }
        {
            std::ofstream f(dir + "/paho.sqlite3", std::ios::binary | std::ios::trunc);
            f << std::string(16384, 'g');
        }
        auto s = open_sqlite_store(dir);
        CHECK(s->session().keys().empty());
        CHECK(s->get(table::outgoing, "1") == std::optional<std::string>("kept"));
        s->session().put("s-2", "new", true);
        CHECK(s->session().get("s-2") == std::optional<std::string>("new"));
    }
}

TEST_CASE("sqlite: xy-mqtt's tables with a primary key", "[store][sqlite]") {
    temp_dir tmp;
    auto s = open_sqlite_store(tmp.store_dir());
    s->commit({put(table::outgoing, "1", "x")});
    s.reset();
    // Reopen and check the schema through the store's own file (no sqlite3 dependency in tests).
    std::ifstream f(tmp.store_dir() + "/xymqtt.sqlite3", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (const char* name : {"mqtt_outgoing_packet", "mqtt_incoming_packet", "mqtt_dead_letter",
                             "mqtt_command_result", "mqtt_command_call"})
        CHECK(bytes.find(std::string("CREATE TABLE ") + name + " (id TEXT PRIMARY KEY") != std::string::npos);
}

// A one-off measurement, not run by ctest: ./store_tests "[.bench]" -s
TEST_CASE("commit rate of single-put commits", "[.bench]") {
    const std::string value(150, 'p');
    {
        // The disk's bound: one 150-byte pwrite + fdatasync per commit.
        temp_dir tmp;
        const int fd = ::open((tmp.path() + "/raw").c_str(), O_RDWR | O_CREAT, 0600);
        REQUIRE(fd >= 0);
        const int n = 2000;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i) {
            REQUIRE(::pwrite(fd, value.data(), value.size(), off_t(i) * 4096) == ssize_t(value.size()));
            REQUIRE(::fdatasync(fd) == 0);
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ::close(fd);
        std::printf("%-14s %8.0f syncs/s\n", "raw fdatasync", n / secs);
    }
    for (auto kind : {store_kind::lmdb, store_kind::sqlite}) {
        for (auto dur : {durability::fsync, durability::process}) {
            temp_dir tmp;
            auto s = open_store(kind, tmp.store_dir(), {dur});
            const int n = dur == durability::fsync ? 2000 : 50000;
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < n; ++i) s->commit({put(table::outgoing, sequence_id(std::uint64_t(i)), value)});
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("%-6s %-7s %8.0f commits/s\n", kind == store_kind::lmdb ? "lmdb" : "sqlite",
                        dur == durability::fsync ? "fsync" : "process", n / secs);
        }
    }
}
