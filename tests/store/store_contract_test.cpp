// The store contract (store.h), run against every built-in store.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <thread>

#include "store_test_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"

using namespace xymqtt;
using store_test::file_mode;
using store_test::lmdb_kind;
using store_test::sqlite_kind;
using store_test::temp_dir;

namespace {

using records = std::vector<std::pair<std::string, std::string>>;

records all_of(const store& s, table t) {
    records out;
    s.for_each(t, [&](const std::string& id, const std::string& v) {
        out.emplace_back(id, v);
        return true;
    });
    return out;
}

write_op put(table t, std::string id, std::string v) { return write_op{t, std::move(id), std::move(v)}; }
write_op del(table t, std::string id) { return write_op{t, std::move(id), std::nullopt}; }

}  // namespace

TEMPLATE_TEST_CASE("put, get, del and ordered reads", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir());

    CHECK_FALSE(s->get(table::outgoing, "a").has_value());
    CHECK(all_of(*s, table::outgoing).empty());
    CHECK(s->count(table::outgoing) == 0);
    CHECK_FALSE(s->last_id(table::outgoing).has_value());

    s->commit({put(table::outgoing, "b", "2"), put(table::outgoing, "c", "3"), put(table::outgoing, "a", "1")});
    CHECK(s->get(table::outgoing, "a") == std::optional<std::string>("1"));
    CHECK(all_of(*s, table::outgoing) == records{{"a", "1"}, {"b", "2"}, {"c", "3"}});

    SECTION("replace keeps one record with the new value") {
        s->commit({put(table::outgoing, "b", "two")});
        CHECK(s->get(table::outgoing, "b") == std::optional<std::string>("two"));
        CHECK(s->count(table::outgoing) == 3);
    }
    SECTION("delete, and deleting a missing record is harmless") {
        s->commit({del(table::outgoing, "b")});
        CHECK_FALSE(s->get(table::outgoing, "b").has_value());
        CHECK_NOTHROW(s->commit({del(table::outgoing, "b"), del(table::outgoing, "zzz")}));
        CHECK(all_of(*s, table::outgoing) == records{{"a", "1"}, {"c", "3"}});
    }
    SECTION("tables are independent") {
        CHECK(s->count(table::incoming) == 0);
        CHECK_FALSE(s->get(table::incoming, "a").has_value());
    }
    SECTION("order is byte order of the ids, and binary values survive") {
        const std::string bin("\0\x01\xff\x80zz", 6);
        s->commit({put(table::calls, "\x7f", bin), put(table::calls, "\x01", ""), put(table::calls, "a\xc3", "x"),
                   put(table::calls, "aa", "y"), put(table::calls, "A", "z")});
        const auto got = all_of(*s, table::calls);
        REQUIRE(got.size() == 5);
        CHECK(got[0].first == "\x01");
        CHECK(got[0].second.empty());
        CHECK(got[1].first == "A");
        CHECK(got[2].first == "aa");
        CHECK(got[3].first == "a\xc3");
        CHECK(got[4].first == "\x7f");
        CHECK(got[4].second == bin);
        CHECK(s->get(table::calls, "\x01") == std::optional<std::string>(""));
    }
    SECTION("a batch applies its writes in order") {
        s->commit({put(table::calls, "k", "1"), del(table::calls, "k"), put(table::calls, "j", "1"),
                   put(table::calls, "j", "2")});
        CHECK(all_of(*s, table::calls) == records{{"j", "2"}});
    }
    SECTION("an empty batch is a no-op") { CHECK_NOTHROW(s->commit({})); }
}

TEMPLATE_TEST_CASE("for_each stops early, crosses chunks and allows callbacks to use the store", "[store]",
                   lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir(), {durability::process});
    std::vector<write_op> batch;
    for (std::uint64_t i = 0; i < 1000; ++i) batch.push_back(put(table::incoming, sequence_id(i), std::to_string(i)));
    s->commit(batch);

    std::uint64_t next = 0;
    s->for_each(table::incoming, [&](const std::string& id, const std::string& v) {
        CHECK(parse_sequence_id(id) == std::optional<std::uint64_t>(next));
        CHECK(v == std::to_string(next));
        ++next;
        // Consuming the inbox while iterating it: the runtime's pattern.
        s->commit({del(table::incoming, id), put(table::results, id, v)});
        return true;
    });
    CHECK(next == 1000);
    CHECK(s->count(table::incoming) == 0);
    CHECK(s->count(table::results) == 1000);

    int seen = 0;
    s->for_each(table::results, [&](const std::string&, const std::string&) { return ++seen < 3; });
    CHECK(seen == 3);
}

TEMPLATE_TEST_CASE("a batch spanning tables is atomic", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir());
    s->commit({put(table::incoming, "m1", "invoke")});
    s->commit({del(table::incoming, "m1"), put(table::results, "m1", "result"), put(table::outgoing, "o1", "publish")});
    CHECK(s->count(table::incoming) == 0);
    CHECK(s->get(table::results, "m1") == std::optional<std::string>("result"));
    CHECK(s->get(table::outgoing, "o1") == std::optional<std::string>("publish"));

    // A batch that cannot be applied throws and writes nothing.
    CHECK_THROWS_AS(s->commit({put(table::dead_letters, "x", "1"), put(static_cast<table>(42), "y", "2")}),
                    storage_error);
    CHECK(s->count(table::dead_letters) == 0);
    CHECK_THROWS_AS(s->get(static_cast<table>(42), "y"), storage_error);
}

TEMPLATE_TEST_CASE("data survives close and reopen", "[store]", lmdb_kind, sqlite_kind) {
    const auto dur = GENERATE(durability::fsync, durability::process);
    temp_dir tmp;
    {
        auto s = open_store(TestType::kind, tmp.store_dir(), {dur});
        CHECK(s->durability() == dur);
        s->commit({put(table::outgoing, sequence_id(1), "one"), put(table::dead_letters, "d", "dead")});
        s->commit({put(table::outgoing, sequence_id(2), "two")});
        s->session().put("s-1", "paho", dur == durability::fsync);
    }
    auto s = open_store(TestType::kind, tmp.store_dir(), {dur});
    CHECK(all_of(*s, table::outgoing) == records{{sequence_id(1), "one"}, {sequence_id(2), "two"}});
    CHECK(s->get(table::dead_letters, "d") == std::optional<std::string>("dead"));
    CHECK(s->last_id(table::outgoing) == std::optional<std::string>(sequence_id(2)));
    CHECK(s->session().get("s-1") == std::optional<std::string>("paho"));
}

TEMPLATE_TEST_CASE("view() is xy-mqtt's put/get/del/all", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir());
    packet_store& out = s->view(table::outgoing);
    CHECK(&out == &s->view(table::outgoing));
    CHECK(&out != &s->view(table::incoming));
    out.put("2", "b");
    out.put("1", "a");
    out.put("2", "B");
    CHECK(out.get("2") == std::optional<std::string>("B"));
    CHECK(out.all() == records{{"1", "a"}, {"2", "B"}});
    out.del("1");
    out.del("1");
    CHECK(out.all() == records{{"2", "B"}});
    CHECK_FALSE(out.get("1").has_value());
    CHECK(s->get(table::outgoing, "2") == std::optional<std::string>("B"));
    CHECK(s->view(table::incoming).all().empty());
}

TEMPLATE_TEST_CASE("last_id and count", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir(), {durability::process});
    for (std::uint64_t i : {5u, 1u, 1000u, 42u}) s->commit({put(table::outgoing, sequence_id(i), "v")});
    CHECK(s->count(table::outgoing) == 4);
    CHECK(s->last_id(table::outgoing) == std::optional<std::string>(sequence_id(1000)));
    s->commit({del(table::outgoing, sequence_id(1000))});
    CHECK(s->last_id(table::outgoing) == std::optional<std::string>(sequence_id(42)));
    CHECK(s->count(table::outgoing) == 3);
    CHECK(s->count(table::calls) == 0);
}

TEMPLATE_TEST_CASE("paho records", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    {
        auto s = open_store(TestType::kind, tmp.store_dir());
        auto& p = s->session();
        CHECK(p.keys().empty());
        CHECK_FALSE(p.get("s-1").has_value());
        p.put("s-2", "two", false);
        p.put("s-1", "one", true);
        p.put("r-7", std::string("\0bin", 4), false);
        p.put("s-2", "TWO", false);
        CHECK(p.get("s-2") == std::optional<std::string>("TWO"));
        CHECK(p.get("r-7") == std::optional<std::string>(std::string("\0bin", 4)));
        CHECK(p.keys() == std::vector<std::string>{"r-7", "s-1", "s-2"});
        p.remove("r-7");
        p.remove("missing");
        CHECK(p.keys() == std::vector<std::string>{"s-1", "s-2"});
        // Paho's records are apart from the tables.
        CHECK(s->count(table::outgoing) == 0);
    }
    {
        auto s = open_store(TestType::kind, tmp.store_dir());
        auto& p = s->session();
        CHECK(p.keys() == std::vector<std::string>{"s-1", "s-2"});
        CHECK(p.get("s-1") == std::optional<std::string>("one"));
        p.clear();
        CHECK(p.keys().empty());
        p.put("c-1", "after clear", false);
    }
    auto s = open_store(TestType::kind, tmp.store_dir());
    CHECK(s->session().keys() == std::vector<std::string>{"c-1"});
}

TEMPLATE_TEST_CASE("a store is used by one process at a time", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir());
    CHECK_THROWS_AS(open_store(TestType::kind, tmp.store_dir()), configuration_error);
    try {
        open_store(TestType::kind, tmp.store_dir());
    } catch (const configuration_error& e) {
        CHECK_THAT(e.what(), Catch::Contains("in use by another process"));
    }
    // Whatever the kind, the directory is locked.
    const auto other = TestType::kind == store_kind::lmdb ? store_kind::sqlite : store_kind::lmdb;
    CHECK_THROWS_AS(open_store(other, tmp.store_dir()), configuration_error);

    // Another process: the child only tries to open and reports by its exit status.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 1;
        try {
            open_store(TestType::kind, tmp.store_dir());
        } catch (const configuration_error&) {
            code = 0;
        } catch (...) {
            code = 2;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);

    // Released on close.
    s.reset();
    CHECK_NOTHROW(open_store(TestType::kind, tmp.store_dir()));
}

TEMPLATE_TEST_CASE("directories are 0700 and files 0600", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    const std::string dir = tmp.path() + "/a/b/store";
    auto s = open_store(TestType::kind, dir);
    s->commit({put(table::outgoing, "1", "x")});
    s->session().put("s-1", "y", true);

    CHECK(file_mode(tmp.path() + "/a") == 0700);
    CHECK(file_mode(dir) == 0700);
    int files = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
        INFO(e.path().string());
        if (e.is_directory()) {
            CHECK(file_mode(e.path().string()) == 0700);
        } else {
            CHECK(file_mode(e.path().string()) == 0600);
            ++files;
        }
    }
    CHECK(files >= 3);
}

TEMPLATE_TEST_CASE("an unusable path is a configuration_error", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    const std::string file = tmp.path() + "/plain";
    std::ofstream(file) << "not a directory";
    CHECK_THROWS_AS(open_store(TestType::kind, file + "/store"), configuration_error);
    CHECK_THROWS_AS(open_store(TestType::kind, file), configuration_error);
    try {
        open_store(TestType::kind, file + "/store");
    } catch (const configuration_error& e) {
        CHECK_THAT(e.what(), Catch::Contains(file) && Catch::Contains("Not a directory"));
    }
    CHECK_THROWS_AS(open_store(TestType::kind, ""), configuration_error);
}

TEMPLATE_TEST_CASE("concurrent writers and readers", "[store]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    auto s = open_store(TestType::kind, tmp.store_dir(), {durability::process});
    constexpr int threads = 4;
    constexpr int per_thread = 150;
    std::atomic<bool> failed{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            try {
                for (int i = 0; i < per_thread; ++i) {
                    const std::string id = std::to_string(t) + "-" + std::to_string(1000 + i);
                    s->commit({put(table::outgoing, id, id), put(table::calls, id, "c")});
                    if (s->get(table::outgoing, id) != std::optional<std::string>(id)) failed = true;
                    s->count(table::outgoing);
                    s->session().put("s-" + id, id, false);
                }
            } catch (...) {
                failed = true;
            }
        });
    }
    for (auto& w : workers) w.join();
    CHECK_FALSE(failed);
    CHECK(s->count(table::outgoing) == threads * per_thread);
    CHECK(s->count(table::calls) == threads * per_thread);
    CHECK(s->session().keys().size() == threads * per_thread);
    const auto all = all_of(*s, table::outgoing);
    CHECK(std::is_sorted(all.begin(), all.end()));
}
