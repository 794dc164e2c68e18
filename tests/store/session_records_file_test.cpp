// Paho's records in a logged in-memory map (runtime/src/store/session_records_file.h): compaction, torn and
// corrupt logs, and records surviving a SIGKILL.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "store/session_records_file.h"
#include "store_test_util.h"

using xymqtt::detail::session_records_file;
using store_test::overwrite;
using store_test::reports_until_killed;
using store_test::temp_dir;

namespace {

constexpr std::size_t small = 4096;  // a log of one page: compactions come quickly
constexpr std::size_t header = 12;

std::string log_path(const temp_dir& tmp) { return tmp.store_dir() + "/records"; }

}  // namespace

TEST_CASE("paho records file: writes, removals and clear survive reopening", "[store][paho]") {
    temp_dir tmp;
    {
        session_records_file p(tmp.store_dir(), false, small);
        p.put("s5-2", "two", false);
        p.put("c5-1", std::string("\0bin", 4), false);
        p.put("s5-2", "TWO", false);
        p.put("sc5-3", "three", true);
        p.remove("c5-1");
        p.remove("missing");
        CHECK(p.keys() == std::vector<std::string>{"s5-2", "sc5-3"});
    }
    {
        session_records_file p(tmp.store_dir(), false, small);
        CHECK(p.keys() == std::vector<std::string>{"s5-2", "sc5-3"});
        CHECK(p.get("s5-2") == std::optional<std::string>("TWO"));
        CHECK_FALSE(p.get("c5-1").has_value());
        p.clear();
        p.put("x-1", "after clear", false);
    }
    session_records_file p(tmp.store_dir(), true, small);
    CHECK(p.keys() == std::vector<std::string>{"x-1"});
}

TEST_CASE("paho records file: compaction keeps the live records and grows for large ones", "[store][paho]") {
    temp_dir tmp;
    {
        session_records_file p(tmp.store_dir(), false, small);
        CHECK(p.capacity() == small);
        // Far more than one page of writes: many compactions, with a few records live throughout.
        for (int i = 0; i < 2000; ++i) {
            p.put("s5-" + std::to_string(i % 10), std::string(100, char('a' + i % 26)), false);
            if (i % 3 == 0) p.remove("s5-" + std::to_string((i + 5) % 10));
        }
        // Bounded by the live records (four times their size, in pages), not by what was written.
        CHECK(p.capacity() <= 2 * small);
        p.put("big", std::string(3 * small, 'B'), false);
        CHECK(p.capacity() >= 6 * small);
        CHECK(p.get("big") == std::optional<std::string>(std::string(3 * small, 'B')));
    }
    session_records_file reference(tmp.store_dir(), false, small);
    CHECK(reference.get("big")->size() == 3 * small);
    CHECK(reference.keys().size() > 1);
    for (const auto& k : reference.keys()) {
        if (k == "big") continue;
        // The last write of each key: its value is the letter of the last i with that key.
        const int key = std::stoi(k.substr(3));
        int last = -1;
        for (int i = 0; i < 2000; ++i) {
            if (i % 10 == key) last = i;
            if (i % 3 == 0 && (i + 5) % 10 == key) last = -1;
        }
        INFO(k);
        REQUIRE(last >= 0);
        CHECK(reference.get(k) == std::optional<std::string>(std::string(100, char('a' + last % 26))));
    }
}

TEST_CASE("paho records file: the log ends at a torn or corrupt record", "[store][paho]") {
    temp_dir tmp;
    {
        session_records_file p(tmp.store_dir(), false, small);
        p.put("s5-1", "one", false);
        p.put("s5-2", "two", false);
    }
    // Reopening compacted the log: two records of the same size from offset 0, in either order.
    const std::size_t first = header + 4 + 3;
    SECTION("torn") {
        overwrite(log_path(tmp), static_cast<off_t>(first + header + 2), "X");  // inside the second body
        session_records_file p(tmp.store_dir(), false, small);
        CHECK(p.keys().size() == 1);
    }
    SECTION("corrupt from the start") {
        overwrite(log_path(tmp), 0, std::string(64, 'g'));
        session_records_file p(tmp.store_dir(), false, small);
        CHECK(p.keys().empty());
        p.put("s5-3", "new", false);
        CHECK(p.get("s5-3") == std::optional<std::string>("new"));
    }
}

TEST_CASE("paho records file: records written before a SIGKILL survive it", "[store][paho][crash]") {
    temp_dir tmp;
    const auto reported = reports_until_killed([&](int fd) {
        try {
            session_records_file p(tmp.store_dir(), false, small);
            std::atomic<std::uint64_t> done{0};
            std::thread killer([&] {
                while (done.load() < 3000) std::this_thread::yield();
                ::kill(::getpid(), SIGKILL);
            });
            killer.detach();
            // Each step puts one record and removes the one two steps back, across many compactions.
            for (std::uint64_t i = 0;; ++i) {
                p.put("s5-" + std::to_string(i), "v" + std::to_string(i), false);
                if (i >= 2) p.remove("s5-" + std::to_string(i - 2));
                if (::write(fd, &i, sizeof i) != static_cast<ssize_t>(sizeof i)) ::_exit(3);
                done = i + 1;
            }
        } catch (...) {
            ::_exit(2);
        }
    });
    REQUIRE(reported.size() >= 3000);
    const int last = static_cast<int>(reported.back());

    // The step after the last reported one may be there in part (its put, or also its removal), never torn.
    session_records_file p(tmp.store_dir(), false, small);
    const auto keys = p.keys();
    INFO("last reported step " << last);
    const auto key = [](int k) { return "s5-" + std::to_string(k); };
    CHECK(p.get(key(last)).has_value());
    CHECK((p.get(key(last - 1)).has_value() || p.get(key(last + 1)).has_value()));
    CHECK(keys.size() >= 2);
    CHECK(keys.size() <= 3);
    for (const auto& k : keys) CHECK(p.get(k) == std::optional<std::string>("v" + k.substr(3)));
}
