// The outbox's send queue (runtime/src/outbox/send_queue.h): order, the window with resumed flows, a new
// Paho client's hand-over, and a random run checked against a model of where each publish is.
#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

#include "outbox/send_queue.h"

using xymqtt::stored_message;
using xymqtt::detail::send_queue;

namespace {

send_queue::record msg_of(std::uint64_t seq) {
    auto m = std::make_shared<stored_message>();
    m->payload = std::to_string(seq);
    return m;
}

std::vector<std::uint64_t> seqs(const std::vector<send_queue::item>& items) {
    std::vector<std::uint64_t> out;
    for (const auto& it : items) out.push_back(it.seq);
    return out;
}

}  // namespace

TEST_CASE("send queue: what failed goes first, then the outbox's order over memory and disk", "[send_queue]") {
    send_queue q;
    q.set_window(100);
    q.add(3, msg_of(3));
    q.add(1, nullptr);  // left on disk by an earlier run
    q.add(2, nullptr);
    q.add(5, msg_of(5));
    q.add(4, nullptr);  // stored while far behind
    q.again(9, msg_of(9));
    CHECK(q.waiting() == 6);
    CHECK(q.in_memory() == 2);
    const auto items = q.take(100);
    CHECK(seqs(items) == std::vector<std::uint64_t>{9, 1, 2, 3, 4, 5});
    CHECK(items[0].msg);
    CHECK_FALSE(items[1].msg);  // only the store has it
    CHECK(q.in_flight() == 6);
    CHECK(q.waiting() == 0);
}

TEST_CASE("send queue: the window holds publishes in flight and flows Paho resumes", "[send_queue]") {
    send_queue q;
    q.set_window(10);
    for (std::uint64_t s = 1; s <= 30; ++s) q.add(s, msg_of(s));
    CHECK(q.take(64).size() == 10);
    CHECK(q.take(64).empty());
    CHECK_FALSE(q.burst_ready());
    for (std::uint64_t s = 1; s <= 4; ++s) CHECK(q.finish(s));
    CHECK_FALSE(q.burst_ready());  // room for 4: less than half the window while 20 wait
    CHECK(q.finish(5));
    CHECK(q.burst_ready());
    CHECK(q.take(3).size() == 3);  // at most what was asked
    CHECK(q.take(64).size() == 2);

    // A new Paho client resumes 4 of the 10 in flight: they count against the window, and are never taken.
    std::map<int, std::uint64_t> resumable{{101, 6}, {102, 7}, {103, 8}, {104, 9}};
    q.new_client(resumable, [](int, std::uint64_t, send_queue::record) { return true; });
    CHECK(q.resumed() == 4);
    CHECK(q.in_flight() == 4);
    CHECK(q.to_send_again() == 6);
    const auto again = seqs(q.take(64));
    CHECK(again.size() == 6);  // 4 resumed + 6 = the window
    for (auto s : again) CHECK((s < 6 || s > 9));
    CHECK(q.in_flight() == 10);
}

TEST_CASE("send queue: a new Paho client resumes only the flows that are their publishes", "[send_queue]") {
    send_queue q;
    q.set_window(10);
    for (std::uint64_t s = 1; s <= 5; ++s) q.add(s, msg_of(s));
    q.take(64);
    CHECK(q.finish(1));
    // Packet 11 maps to publish 1, completed already (a stale mapping); 12 is not confirmed (another
    // publish's flow under that id); 13 is publish 3.
    std::set<int> asked;
    q.new_client({{11, 1}, {12, 2}, {13, 3}}, [&](int packet_id, std::uint64_t seq, send_queue::record msg) {
        asked.insert(packet_id);
        CHECK(msg);
        CHECK(msg->payload == std::to_string(seq));
        return packet_id == 13;
    });
    CHECK(asked == std::set<int>{12, 13});
    CHECK(q.resumes(13));
    CHECK_FALSE(q.resumes(12));
    CHECK(seqs(q.take(64)) == std::vector<std::uint64_t>{2, 4, 5});

    // The flow ends: its publish is in flight until finished.
    CHECK_FALSE(q.end_resumed(12));
    CHECK(q.end_resumed(13) == std::optional<std::uint64_t>(3));
    CHECK(q.in_flight() == 4);
    CHECK(q.finish(3));
    CHECK_FALSE(q.finish(3));  // completed already
}

TEST_CASE("send queue: flows of a client whose connect failed, or of a lost session, are sent again", "[send_queue]") {
    send_queue q;
    q.set_window(10);
    for (std::uint64_t s = 1; s <= 3; ++s) q.add(s, nullptr);
    auto all = [](int, std::uint64_t, send_queue::record) { return true; };
    q.new_client({{7, 1}, {8, 2}}, all);
    CHECK(q.resumed() == 2);
    // The next client restores only packet 8: publish 1 is sent again, not dropped.
    q.new_client({{8, 2}}, all);
    CHECK(q.resumed() == 1);
    CHECK(seqs(q.take(64)) == std::vector<std::uint64_t>{1, 3});
    // The broker had no session: Paho dropped flow 8.
    q.session_lost();
    CHECK(q.resumed() == 0);
    CHECK(seqs(q.take(64)) == std::vector<std::uint64_t>{2});
}

TEST_CASE("send queue: outcomes after a publish has moved on change nothing", "[send_queue]") {
    send_queue q;
    q.set_window(4);
    q.add(1, msg_of(1));
    q.add(2, msg_of(2));
    q.take(64);
    // Paho did not take 1; 2 failed in flight and waits to be sent again.
    q.not_taken(1, msg_of(1));
    auto m = q.take_back(2);
    REQUIRE(m);
    q.again(2, *m);
    // Late reports for them: ignored while they wait.
    q.keep(1, nullptr);
    q.not_taken(2, nullptr);
    q.drop(1);
    CHECK_FALSE(q.take_back(1));
    CHECK(q.waiting() == 2);
    CHECK(q.in_flight() == 0);
    // A completion that races the resend still ends it.
    CHECK(q.finish(2));
    CHECK(seqs(q.take(64)) == std::vector<std::uint64_t>{1});
    CHECK(q.count_refusal(1) == 0);
    CHECK(q.count_refusal(1) == 1);
    q.forget_refusals(1);
    CHECK(q.count_refusal(1) == 0);
}

TEST_CASE("send queue: every publish is in one place, and the window holds, under random operations", "[send_queue]") {
    std::mt19937_64 rng(GENERATE(1, 2, 3, 4, 5, 6, 7, 8));
    send_queue q;
    std::size_t window = 1 + rng() % 20;
    q.set_window(window);
    // The model: where each uncompleted publish is.
    enum where { waiting, in_flight, resumed };
    std::map<std::uint64_t, where> pending;
    std::map<int, std::uint64_t> flows;  // packet id -> publish, of the current Paho client's resumed flows
    std::uint64_t next = 1;
    int next_packet = 1;
    auto pick = [&](where w) -> std::optional<std::uint64_t> {
        std::vector<std::uint64_t> c;
        for (auto& [s, at] : pending)
            if (at == w) c.push_back(s);
        if (c.empty()) return std::nullopt;
        return c[rng() % c.size()];
    };
    for (int step = 0; step < 20000; ++step) {
        switch (rng() % 9) {
            case 0:
            case 1:
                q.add(next, rng() % 2 ? msg_of(next) : nullptr);
                pending[next++] = waiting;
                break;
            case 2: {
                const std::size_t before = q.in_flight();
                const auto got = q.take(1 + rng() % 64);
                REQUIRE((got.empty() || before + got.size() <= window));
                for (const auto& it : got) {
                    REQUIRE(pending.count(it.seq));
                    REQUIRE(pending[it.seq] == waiting);  // never one in flight or resumed
                    pending[it.seq] = in_flight;
                }
                break;
            }
            case 3:
                if (auto s = pick(in_flight)) {
                    REQUIRE(q.finish(*s));
                    pending.erase(*s);
                }
                break;
            case 4:
                if (auto s = pick(in_flight)) {
                    auto m = q.take_back(*s);
                    REQUIRE(m);
                    q.again(*s, *m);
                    pending[*s] = waiting;
                }
                break;
            case 5:
                if (rng() % 8 == 0) {
                    // A new Paho client resumes some of what was in flight or resumed, and some stale ids.
                    std::map<int, std::uint64_t> resumable;
                    for (auto& [s, at] : pending)
                        if (at != waiting && rng() % 2) resumable[next_packet++] = s;
                    resumable[next_packet++] = next + 1000;  // a mapping to nothing
                    q.new_client(resumable, [&](int, std::uint64_t, send_queue::record) { return rng() % 4 != 0; });
                    flows.clear();
                    for (auto& [s, at] : pending) at = waiting;
                    for (const auto& [p, s] : resumable)
                        if (q.resumes(p)) {
                            REQUIRE(pending.count(s));
                            pending[s] = resumed;
                            flows[p] = s;
                        }
                }
                break;
            case 6:
                if (!flows.empty()) {
                    auto f = flows.begin();
                    std::advance(f, long(rng() % flows.size()));
                    REQUIRE(q.end_resumed(f->first) == std::optional<std::uint64_t>(f->second));
                    pending[f->second] = in_flight;
                    flows.erase(f);
                }
                break;
            case 7:
                if (rng() % 16 == 0) {
                    q.session_lost();
                    for (const auto& [p, s] : flows) pending[s] = waiting;
                    flows.clear();
                }
                break;
            case 8:
                if (rng() % 32 == 0) {
                    window = 1 + rng() % 20;
                    q.set_window(window);
                }
                break;
        }
        std::size_t w = 0, f = 0;
        for (auto& [s, at] : pending) (at == waiting ? w : f)++;
        REQUIRE(q.waiting() == w);
        REQUIRE(q.in_flight() == f);
        REQUIRE(q.resumed() == flows.size());
    }
}
