// The group committer (runtime/src/outbox/committer.h) over a real LMDB store: which thread commits, what goes
// into one transaction, FIFO order while a leading caller commits, and wake-ups after a lead.
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "outbox/committer.h"
#include "support/forwarding_store.h"
#include "xymqtt/exception.h"
#include "store_test_util.h"

using xymqtt::table;
using xymqtt::write_op;
using xymqtt::detail::committer;
using xymqtt::detail::urgency;
using store_test::temp_dir;

namespace {

constexpr auto patience = std::chrono::seconds(10);

// Forwards to a real store and records each commit: its thread and its ids. Can hold a commit whose first
// id is `hold_id` until released, to see what the committer does meanwhile.
class recording_store final : public xymqtt::test::forwarding_store {
public:
    explicit recording_store(const std::string& dir)
        : forwarding_store(std::shared_ptr<xymqtt::store>(xymqtt::open_lmdb_store(dir, {xymqtt::durability::process}))) {}

    struct entry {
        std::thread::id thread;
        std::vector<std::string> ids;
    };

    void commit(const std::vector<write_op>& batch) override {
        std::unique_lock<std::mutex> lk(mu_);
        entry e{std::this_thread::get_id(), {}};
        for (const auto& op : batch) e.ids.push_back(op.id);
        if (!batch.empty() && batch.front().id == hold_id_) {
            holding_ = true;
            cv_.notify_all();
            cv_.wait(lk, [&] { return !holding_; });
        }
        forwarding_store::commit(batch);
        log_.push_back(std::move(e));
        cv_.notify_all();
    }
    void hold(const std::string& id) {
        std::lock_guard<std::mutex> lk(mu_);
        hold_id_ = id;
    }
    void await_holding() {
        std::unique_lock<std::mutex> lk(mu_);
        REQUIRE(cv_.wait_for(lk, patience, [&] { return holding_; }));
    }
    void release() {
        std::lock_guard<std::mutex> lk(mu_);
        holding_ = false;
        hold_id_.clear();
        cv_.notify_all();
    }
    std::vector<entry> log() const {
        std::lock_guard<std::mutex> lk(mu_);
        return log_;
    }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::string hold_id_;
    bool holding_ = false;
    std::vector<entry> log_;
};

std::vector<write_op> put(const std::string& id) { return {{table::incoming, id, std::string("v")}}; }

// A `done` that fulfils a promise, to await a submitted batch.
std::function<void(std::exception_ptr)> fulfil(std::promise<void>& p) {
    return [&p](std::exception_ptr e) {
        if (e)
            p.set_exception(e);
        else
            p.set_value();
    };
}

// Starts a commit of "lead" on another thread and returns once the store holds it mid-commit.
std::future<void> start_held_lead(recording_store& s, committer& c) {
    s.hold("lead");
    auto leader = std::async(std::launch::async, [&c] { c.commit(put("lead")); });
    s.await_holding();
    return leader;
}

}  // namespace

TEST_CASE("committer: a commit with nothing running is made on the caller's thread, with the lingering batches", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s);
    std::promise<void> lingering;
    c.submit(put("a"), fulfil(lingering), urgency::linger);
    c.commit(put("b"));
    // "a" may have gone alone if the writer's linger ran out first; then "b" still runs here.
    REQUIRE(lingering.get_future().wait_for(patience) == std::future_status::ready);
    const auto log = s.log();
    REQUIRE(!log.empty());
    CHECK(log.back().thread == std::this_thread::get_id());
    CHECK(log.back().ids.back() == "b");
    CHECK(s.get(table::incoming, "a"));
    CHECK(s.get(table::incoming, "b"));
}

TEST_CASE("committer: while a caller commits, later batches wait and keep their order", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s);
    auto leader = start_held_lead(s, c);
    std::promise<void> first, second;
    c.submit(put("first"), fulfil(first));
    auto other = std::async(std::launch::async, [&] {
        // Queued behind "first": it must not lead a commit of its own while "lead" runs.
        c.commit(put("second"));
        second.set_value();
    });
    // Nothing may commit while "lead" is held.
    CHECK(other.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout);
    CHECK(s.log().empty());
    s.release();
    leader.get();
    other.get();
    REQUIRE(first.get_future().wait_for(patience) == std::future_status::ready);
    std::vector<std::string> order;
    for (const auto& e : s.log())
        for (const auto& id : e.ids) order.push_back(id);
    CHECK(order == std::vector<std::string>{"lead", "first", "second"});
}

TEST_CASE("committer: a batch queued after a lead is committed without another write", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s);
    // The lingering submit wakes the idle writer thread, and the lead usually starts before it runs: the
    // writer must then still see the batch queued after the lead.
    for (int i = 0; i < 200; ++i) {
        for (const auto u : {urgency::linger, urgency::background}) {
            std::promise<void> before, after;
            c.submit(put("before"), fulfil(before), u);
            c.commit(put("lead"));
            c.submit(put("after"), fulfil(after), u);
            REQUIRE(before.get_future().wait_for(patience) == std::future_status::ready);
            REQUIRE(after.get_future().wait_for(patience) == std::future_status::ready);
        }
    }
}

TEST_CASE("committer: a lingering batch rides with the next urgent one while urgent ones flow", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s, std::chrono::seconds(60));  // no deadline passes during the test
    c.commit(put("urgent 1"));
    std::promise<void> lingering;
    c.submit(put("lingering"), fulfil(lingering), urgency::linger);
    c.commit(put("urgent 2"));
    REQUIRE(lingering.get_future().wait_for(patience) == std::future_status::ready);
    const auto log = s.log();
    REQUIRE(log.size() == 2);
    CHECK(log.back().ids == std::vector<std::string>{"lingering", "urgent 2"});
    CHECK(log.back().thread == std::this_thread::get_id());
}

TEST_CASE("committer: a lingering batch does not wait for a background batch's deadline", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s, std::chrono::seconds(60));
    std::promise<void> background, lingering;
    // The writer sleeps until the background batch's deadline, 60 s away. No urgent writes flow, so the
    // lingering batch is due at once and must wake it (taking the background batch along).
    c.submit(put("background"), fulfil(background), urgency::background);
    const auto give_up = std::chrono::steady_clock::now() + patience;
    while (!c.waiting_for_deadline() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    REQUIRE(c.waiting_for_deadline());
    c.submit(put("lingering"), fulfil(lingering), urgency::linger);
    REQUIRE(lingering.get_future().wait_for(patience) == std::future_status::ready);
    REQUIRE(background.get_future().wait_for(patience) == std::future_status::ready);
    CHECK(s.log().size() == 1);
}

TEST_CASE("committer: stop waits for a leading caller's commit", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s);
    auto leader = start_held_lead(s, c);
    auto stopper = std::async(std::launch::async, [&] { c.stop(); });
    CHECK(stopper.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout);
    s.release();
    leader.get();
    REQUIRE(stopper.wait_for(patience) == std::future_status::ready);
    CHECK(s.log().size() == 1);
    // Stopped: a later commit is refused and not written.
    CHECK_THROWS_AS(c.commit(put("late")), xymqtt::client_closed);
    CHECK(!s.get(table::incoming, "late"));
}

TEST_CASE("committer: a producer blocks once the queued records reach the byte bound", "[committer]") {
    temp_dir tmp;
    recording_store s(tmp.store_dir());
    committer c(s);
    auto leader = start_held_lead(s, c);
    // While the lead commit is held, 64 KiB records queue up to max_queued_bytes; the next submit waits.
    const std::string big(64 * 1024, 'b');
    const std::size_t fit = committer::max_queued_bytes / (big.size() + committer::op_overhead + 8);
    std::vector<std::promise<void>> done(fit + 2);
    for (std::size_t i = 0; i < fit; ++i)
        c.submit({{table::incoming, "big" + std::to_string(100 + i), big}}, fulfil(done[i]));
    auto blocked = std::async(std::launch::async, [&] {
        c.submit({{table::incoming, "over1", big}}, fulfil(done[fit]));
        c.submit({{table::incoming, "over2", big}}, fulfil(done[fit + 1]));
    });
    CHECK(blocked.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout);
    s.release();
    leader.get();
    REQUIRE(blocked.wait_for(patience) == std::future_status::ready);
    for (auto& d : done) REQUIRE(d.get_future().wait_for(patience) == std::future_status::ready);
    CHECK(s.get(table::incoming, "over2") == big);
}
