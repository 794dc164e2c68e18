// The outbox backlog (runtime/src/outbox/seq_runs.h): a FIFO of sequence numbers kept as runs, checked
// against std::deque on random operations, and its size for a long backlog.
#include <catch2/catch.hpp>
#include <algorithm>
#include <deque>
#include <random>

#include "outbox/seq_runs.h"

using xymqtt::detail::seq_runs;

TEST_CASE("seq_runs: behaves as a deque under random pushes, pops and erases", "[seq_runs]") {
    std::mt19937_64 rng(GENERATE(1, 2, 3, 4, 5));
    seq_runs runs;
    std::deque<std::uint64_t> model;
    std::uint64_t next = 1;
    for (int step = 0; step < 20000; ++step) {
        const auto what = rng() % 10;
        if (what < 5) {
            // Mostly the next number; sometimes a jump, sometimes an older one (out of order).
            const auto r = rng() % 20;
            const std::uint64_t seq = r == 0 ? (next += 1 + rng() % 50) : r == 1 && next > 10 ? next - 1 - rng() % 10 : next++;
            runs.push_back(seq);
            model.push_back(seq);
        } else if (what < 8) {
            if (!model.empty()) {
                REQUIRE(runs.front() == model.front());
                runs.pop_front();
                model.pop_front();
            }
        } else {
            const std::uint64_t seq = next > 0 ? rng() % (next + 5) : 0;
            const auto it = std::find(model.begin(), model.end(), seq);
            REQUIRE(runs.contains(seq) == (it != model.end()));
            REQUIRE(runs.erase(seq) == (it != model.end()));
            if (it != model.end()) model.erase(it);
        }
        REQUIRE(runs.size() == model.size());
        REQUIRE(runs.empty() == model.empty());
    }
    while (!model.empty()) {
        REQUIRE(runs.front() == model.front());
        runs.pop_front();
        model.pop_front();
    }
    REQUIRE(runs.empty());
}

TEST_CASE("seq_runs: a million consecutive publishes are one run", "[seq_runs]") {
    seq_runs runs;
    for (std::uint64_t s = 100; s < 1000100; ++s) runs.push_back(s);
    REQUIRE(runs.size() == 1000000);
    REQUIRE(runs.runs() == 1);
    REQUIRE(runs.erase(500000));  // a resumed flow taken out of the middle
    REQUIRE(runs.runs() == 2);
    REQUIRE_FALSE(runs.contains(500000));
    REQUIRE(runs.contains(500001));
    REQUIRE(runs.front() == 100);
}
