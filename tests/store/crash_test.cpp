// Crash safety: a child process commits, reports each commit through a pipe,
// and is killed with SIGKILL midway (from another of its threads, mid-commit); every reported commit must be there after reopening.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <thread>
#include <vector>

#include "store_test_util.h"
#include "xymqtt/store.h"

using namespace xymqtt;
using store_test::lmdb_kind;
using store_test::reports_until_killed;
using store_test::sqlite_kind;
using store_test::temp_dir;

namespace {

std::string value_of(std::uint64_t i) { return "record-" + std::to_string(i) + std::string(100, 'r'); }

// Runs in the child: never returns. A second thread sends SIGKILL once `kill_after` commits were
// reported, while the main thread keeps committing, so the kill lands at an arbitrary point,
// usually inside a commit.
[[noreturn]] void commit_until_killed(store_kind kind, const std::string& dir, int fd, std::uint64_t n,
                                      std::uint64_t kill_after, const store_options& opts = {}) {
    try {
        auto s = open_store(kind, dir, opts);
        std::atomic<std::uint64_t> done{0};
        std::thread killer([&] {
            while (done.load() < kill_after) std::this_thread::yield();
            ::kill(::getpid(), SIGKILL);
        });
        killer.detach();
        for (std::uint64_t i = 0; i < n; ++i) {
            // Paho records too, as the runtime writes them between commits.
            s->session().put("s-" + std::to_string(i), "x", false);
            // The inbox keeps the last two: deletes too must survive the crash and the journal's replay.
            std::vector<write_op> batch{write_op{table::incoming, sequence_id(i), value_of(i)},
                                        write_op{table::results, std::to_string(i), "result"}};
            if (opts.journal_bytes < 16384 && i >= 2) batch.push_back(write_op{table::incoming, sequence_id(i - 2), {}});
            s->commit(batch);
            if (::write(fd, &i, sizeof i) != static_cast<ssize_t>(sizeof i)) ::_exit(3);
            done = i + 1;
        }
        for (;;) std::this_thread::yield();  // the killer always wins
    } catch (...) {
        ::_exit(2);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("commits reported before a SIGKILL survive it", "[store][crash]", lmdb_kind, sqlite_kind) {
    temp_dir tmp;
    const std::string dir = tmp.store_dir();
    constexpr std::uint64_t n = 100000;
    constexpr std::uint64_t kill_after = 250;

    const auto reported =
        reports_until_killed([&](int fd) { commit_until_killed(TestType::kind, dir, fd, n, kill_after); });
    REQUIRE(reported.size() >= kill_after);

    // The lock died with the child; the store opens and holds every reported commit, whole. The
    // commit in progress at the kill may be there or not, but never in part.
    auto s = open_store(TestType::kind, dir, {durability::fsync});
    for (auto r : reported) {
        INFO("record " << r);
        CHECK(s->get(table::incoming, sequence_id(r)) == std::optional<std::string>(value_of(r)));
        CHECK(s->get(table::results, std::to_string(r)) == std::optional<std::string>("result"));
    }
    const auto present = s->count(table::incoming);
    CHECK(present >= reported.size());
    CHECK(present <= reported.size() + 1);
    CHECK(s->count(table::results) == present);
    CHECK(s->last_id(table::incoming) == std::optional<std::string>(sequence_id(present - 1)));
    // The store keeps working after the crash.
    s->commit({write_op{table::incoming, sequence_id(n), "after"}});
    CHECK(s->get(table::incoming, sequence_id(n)) == std::optional<std::string>("after"));
    CHECK(s->session().get("s-0") == std::optional<std::string>("x"));
}

TEST_CASE("lmdb: commits survive a SIGKILL across journal checkpoints in either durability, and replay in any",
          "[store][crash][journal]") {
    temp_dir tmp;
    const std::string dir = tmp.store_dir();
    constexpr std::uint64_t n = 100000;
    constexpr std::uint64_t kill_after = 1500;
    store_options opts;
    opts.journal_bytes = 8192;  // a checkpoint about every 25 commits
    // fsync appends with pwrite and fdatasync; process copies into a shared mapping of the journal.
    opts.durability = GENERATE(durability::fsync, durability::process);

    const auto reported =
        reports_until_killed([&](int fd) { commit_until_killed(store_kind::lmdb, dir, fd, n, kill_after, opts); });
    REQUIRE(reported.size() >= kill_after);
    const std::uint64_t last = reported.back();

    // Reopened with process durability: the journal is replayed all the same.
    store_options reopen;
    reopen.durability = GENERATE(durability::fsync, durability::process);
    auto s = open_store(store_kind::lmdb, dir, reopen);
    for (std::uint64_t r = 0; r <= last; ++r) {
        INFO("record " << r);
        REQUIRE(s->get(table::results, std::to_string(r)) == std::optional<std::string>("result"));
    }
    // The inbox holds the last two reported, or the last two and the one in progress minus its delete.
    const auto results = s->count(table::results);
    CHECK((results == last + 1 || results == last + 2));
    const std::uint64_t top = results - 1;
    CHECK(s->count(table::incoming) == 2);
    CHECK(s->get(table::incoming, sequence_id(top)) == std::optional<std::string>(value_of(top)));
    CHECK(s->get(table::incoming, sequence_id(top - 1)) == std::optional<std::string>(value_of(top - 1)));
    CHECK(s->last_id(table::incoming) == std::optional<std::string>(sequence_id(top)));
}
