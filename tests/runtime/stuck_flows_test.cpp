// The watch that finds a resumed publish the broker ends every connection at (runtime/src/session/
// stuck_flows.h): when it names a flow, and when it must not.
#include <catch2/catch.hpp>
#include <chrono>

#include "session/stuck_flows.h"

using namespace std::chrono_literals;
using xymqtt::detail::stuck_flows;

namespace {

constexpr stuck_flows::settings rules{5, 2000ms, 10000ms};

// One connection: reached its CONNACK at `at`, resuming `flows`, lost `lasted` later; `done` publishes
// completed before it and `during` while it was up.
void connection(stuck_flows& w, stuck_flows::clock::time_point at, std::map<int, std::size_t> flows,
                std::uint64_t& done, std::chrono::milliseconds lasted = 5ms, std::uint64_t during = 0) {
    w.connected(std::move(flows), done, at);
    done += during;
    w.lost(done, at + lasted);
}

}  // namespace

TEST_CASE("stuck flows: the largest flow every short connection resumed is named, after enough of them for long enough",
          "[stuck-flows]") {
    stuck_flows w(rules);
    std::uint64_t done = 0;
    auto t = stuck_flows::clock::now();
    const std::map<int, std::size_t> flows{{7, 40}, {8, 4035}, {9, 40}};
    // Five connections in 4 s: enough of them, not for long enough (a storm of cuts passes in seconds).
    for (int i = 0; i < 5; ++i, t += 1s) connection(w, t, flows, done);
    CHECK(w.strikes() == 5);
    CHECK_FALSE(w.take());
    // Past the patience: named once, then counted again from nothing.
    for (int i = 0; i < 7; ++i, t += 1s) connection(w, t, flows, done);
    const auto named = w.take();
    REQUIRE(named);
    CHECK(*named == 8);
    CHECK(w.strikes() == 0);
    CHECK_FALSE(w.take());
}

TEST_CASE("stuck flows: a completion, a connection that lived, or one resuming nothing starts the count again",
          "[stuck-flows]") {
    std::uint64_t done = 0;
    auto t = stuck_flows::clock::now();
    const std::map<int, std::size_t> flows{{3, 5000}};
    auto almost = [&](stuck_flows& w) {  // ten strikes over 9 s: one more, a second later, names flow 3
        for (int i = 0; i < 10; ++i, t += 1s) connection(w, t, flows, done);
        REQUIRE(w.strikes() == 10);
        REQUIRE_FALSE(w.take());
    };
    {
        stuck_flows w(rules);
        almost(w);
        connection(w, t, flows, done, 5ms, 1);  // something completed while it was up
        t += 1s;
        CHECK(w.strikes() == 0);
        CHECK_FALSE(w.take());
    }
    {
        stuck_flows w(rules);
        almost(w);
        connection(w, t, flows, done, 3s);  // up longer than `within`: not the broker refusing at once
        t += 4s;
        CHECK(w.strikes() == 0);
    }
    {
        stuck_flows w(rules);
        almost(w);
        connection(w, t, {}, done);  // nothing resumed: no flow to blame
        t += 1s;
        CHECK(w.strikes() == 0);
    }
    {
        stuck_flows w(rules);
        almost(w);
        ++done;  // completed between connections (a late report of the last one)
        connection(w, t, flows, done);
        t += 1s;
        CHECK(w.strikes() == 1);
        CHECK_FALSE(w.take());
    }
    {
        // Connects that fail before their CONNACK neither count nor start it again.
        stuck_flows w(rules);
        almost(w);
        connection(w, t, flows, done);
        CHECK(w.take() == std::optional<int>(3));
    }
}

TEST_CASE("stuck flows: only a flow resumed by every counted connection is named", "[stuck-flows]") {
    stuck_flows w(rules);
    std::uint64_t done = 0;
    auto t = stuck_flows::clock::now();
    // The big flow 1 goes after the first connection (it did not end them all); 2 stays in every one.
    connection(w, t, {{1, 9000}, {2, 100}}, done);
    for (int i = 0; i < 12; ++i) connection(w, t += 1s, {{2, 100}, {5, 50}}, done);
    CHECK(w.take() == std::optional<int>(2));
    // Nothing in common from one connection to the next: each starts the count again.
    for (int i = 0; i < 12; ++i) connection(w, t += 1s, {{100 + i, 100}}, done);
    CHECK(w.strikes() == 1);
    CHECK_FALSE(w.take());
}
