// The outbox (runtime/src/outbox/outbox.h) on its own, over a real LMDB store and a real committer, with a
// small fake host in place of the client and its session: order, the window, connections coming and going,
// the broker's refusals (for good, for now, too large), recovery, and promises failed at close.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "outbox/committer.h"
#include "outbox/outbox.h"
#include "store_test_util.h"
#include "support/eventually.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace std::chrono_literals;
using xymqtt::detail::committer;
using xymqtt::detail::outbox;
using xymqtt::detail::outbox_host;
using xymqtt::detail::stored_publish;
using xymqtt::test::eventually;
using store_test::temp_dir;

namespace {

constexpr auto patience = std::chrono::seconds(10);
using refusal = outbox_host::refusal;

stored_publish pub(std::uint64_t seq, std::string payload = {}, std::string topic = {}) {
    auto m = std::make_shared<stored_message>();
    m->topic = topic.empty() ? "t/" + std::to_string(seq) : std::move(topic);
    m->payload = payload.empty() ? "payload " + std::to_string(seq) : std::move(payload);
    m->created_ms = 1000;
    return {seq, m, {table::outgoing, sequence_id(seq), encode_record(*m)}};
}

// The client and its session as the outbox sees them. publish() takes what it is handed (recording it, and
// whether the window or the connection was respected) unless a scripted refusal comes first; the test
// reports the outcomes (deliver, fail) and runs the scheduled functions itself.
class fake_outbox_host final : public outbox_host {
public:
    struct handed_item {
        std::uint64_t seq;
        std::string topic, payload;
    };
    struct refused_item {
        std::string topic;
        int reason_code;
        std::string why;
    };
    struct timer {
        std::chrono::steady_clock::time_point at;
        std::function<void()> fn;
    };

    refusal publish(std::vector<item>& batch, via v) override {
        std::lock_guard<std::mutex> lk(mu_);
        ++publish_calls_;
        if (!up_) ++while_down_;
        if (v != nullptr && v != current()) ++through_stale_;
        for (auto& it : batch) {
            if (!script_.empty()) {
                const auto r = script_.front();
                script_.pop_front();
                if (r != refusal::none) {
                    ++refusals_;
                    cv_.notify_all();
                    return r;
                }
            }
            if (!it.msg) {
                ++without_message_;
                continue;
            }
            if (outstanding_.size() >= window_) ++over_window_;
            outstanding_.insert(it.seq);
            most_outstanding_ = std::max(most_outstanding_, outstanding_.size());
            handed_.push_back({it.seq, it.msg->topic, it.msg->payload});
            it.sent = true;
        }
        cv_.notify_all();
        return refusal::none;
    }
    bool is_current(via v) const override { return v == nullptr || v == current(); }
    bool may_send() const override { return true; }
    void maybe_drained() override {}
    std::function<void()> refused(const stored_message& msg, int reason_code, const std::string& why,
                                  std::vector<write_op>& ops) override {
        std::lock_guard<std::mutex> lk(mu_);
        refused_.push_back({msg.topic, reason_code, why});
        // What goes with the dead letter is committed with it.
        ops.push_back({table::results, "refused " + msg.topic, why});
        return [this, topic = msg.topic] {
            std::lock_guard<std::mutex> lk(mu_);
            then_ran_.push_back(topic);
            cv_.notify_all();
        };
    }
    void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) override {
        std::lock_guard<std::mutex> lk(mu_);
        timers_.push_back({at, std::move(fn)});
        cv_.notify_all();
    }
    void storage_failed(const std::string& what) override {
        std::lock_guard<std::mutex> lk(mu_);
        storage_failures_.push_back(what);
    }

    // -- the test's side
    /// The connection is up (with room for `window`) or down, as the outbox is about to be told.
    void set_up(bool up, std::size_t window = 0) {
        std::lock_guard<std::mutex> lk(mu_);
        up_ = up;
        if (up) window_ = window;
    }
    /// The next publishes offered get these answers, one each (none: taken).
    void script(std::vector<refusal> rs) {
        std::lock_guard<std::mutex> lk(mu_);
        script_.insert(script_.end(), rs.begin(), rs.end());
    }
    /// The broker completed `seq` (reason code from 0x80: refused).
    void deliver(outbox& ob, std::uint64_t seq, int reason_code = 0) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            outstanding_.erase(seq);
        }
        ob.on_delivered(seq, reason_code, nullptr);
    }
    /// `seq` was lost with the current connection.
    void fail(outbox& ob, std::uint64_t seq) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            outstanding_.erase(seq);
        }
        ob.on_send_failed(seq, -3, 0, current());
    }
    /// Runs the scheduled functions, on this thread. @return how many ran.
    std::size_t run_timers() {
        std::vector<timer> due;
        {
            std::lock_guard<std::mutex> lk(mu_);
            due.swap(timers_);
        }
        for (auto& t : due) t.fn();
        return due.size();
    }
    template <class P>
    bool await(P p) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, patience, p);
    }
    static via current() { return &current_connection; }
    static via stale() { return &stale_connection; }

    // For await() predicates (mu_ held).
    std::size_t handed_count() const { return handed_.size(); }
    std::size_t refusal_count() const { return refusals_; }
    std::size_t timer_count() const { return timers_.size(); }

    std::vector<std::uint64_t> handed_seqs() const {
        std::lock_guard<std::mutex> lk(mu_);
        std::vector<std::uint64_t> out;
        for (const auto& h : handed_) out.push_back(h.seq);
        return out;
    }
    std::vector<handed_item> handed() const { return locked(handed_); }
    std::vector<refused_item> refused_items() const { return locked(refused_); }
    std::vector<std::string> then_ran() const { return locked(then_ran_); }
    std::vector<timer> timers() const { return locked(timers_); }
    std::vector<std::string> storage_failures() const { return locked(storage_failures_); }
    int while_down() const { return locked(while_down_); }
    int over_window() const { return locked(over_window_); }
    int through_stale() const { return locked(through_stale_); }
    int without_message() const { return locked(without_message_); }
    std::size_t most_outstanding() const { return locked(most_outstanding_); }

private:
    template <class T>
    T locked(const T& v) const {
        std::lock_guard<std::mutex> lk(mu_);
        return v;
    }
    static inline const int current_connection = 0;
    static inline const int stale_connection = 0;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool up_ = false;
    std::size_t window_ = 0;
    std::deque<refusal> script_;
    std::multiset<std::uint64_t> outstanding_;  // handed and not reported back by the test
    std::size_t most_outstanding_ = 0;
    std::vector<handed_item> handed_;
    std::vector<refused_item> refused_;
    std::vector<std::string> then_ran_;
    std::vector<timer> timers_;
    std::vector<std::string> storage_failures_;
    int publish_calls_ = 0, while_down_ = 0, over_window_ = 0, through_stale_ = 0, without_message_ = 0;
    std::size_t refusals_ = 0;
};

// A store in a temporary directory, a committer over it, the fake host and the outbox; stopped at the end as
// the client stops them (outbox, then the committer, whose last completions still reach the outbox).
struct outbox_rig {
    temp_dir tmp;
    std::unique_ptr<store> s;
    fake_outbox_host host;
    client_options opts;
    std::unique_ptr<committer> c;
    std::unique_ptr<outbox> ob;

    outbox_rig() : s(open_lmdb_store(tmp.store_dir(), {durability::process})) {
        opts.reconnect_min = 40ms;
        opts.reconnect_max = 5s;
    }
    ~outbox_rig() { stop(); }
    outbox& start() {
        c = std::make_unique<committer>(*s);
        ob = std::make_unique<outbox>(host, *s, *c, opts);
        return *ob;
    }
    void stop() {
        if (ob) ob->stop();
        if (c) c->stop();
        if (ob) ob->fail_pending();
        ob.reset();
        c.reset();
    }
    void up(std::size_t window) {
        host.set_up(true, window);
        ob->up(window);
    }
    void down() {
        host.set_up(false);
        ob->down();
    }
    bool outgoing(std::uint64_t seq) const { return s->get(table::outgoing, sequence_id(seq)).has_value(); }
    std::optional<stored_message> dead_letter(std::uint64_t seq) const {
        auto v = s->get(table::dead_letters, sequence_id(seq));
        if (!v) return std::nullopt;
        return decode_record(*v);
    }
    /// Awaits that `n` publishes have been handed to the host in all.
    bool handed(std::size_t n) {
        return host.await([&] { return host.handed_count() >= n; });
    }
    /// Checks that `ob` emptied and its records are gone from the store.
    void drained(outbox& ob) {
        REQUIRE(ob.wait_empty(patience));
        CHECK(s->count(table::outgoing) == 0);
    }
};

/// Checks that a publish's future completed without an error.
void completed(std::future<void>& f) {
    REQUIRE(f.wait_for(patience) == std::future_status::ready);
    CHECK_NOTHROW(f.get());
}

/// @return the broker_error reason code a future failed with, or -1.
int broker_reason(std::future<void>& f) {
    try {
        f.get();
    } catch (const broker_error& e) {
        return e.reason_code();
    } catch (...) {
    }
    return -1;
}

struct hook_log {
    std::mutex mu;
    std::vector<std::pair<std::string, std::string>> dead;  // id, reason
    std::vector<std::pair<std::string, std::string>> copy() {
        std::lock_guard<std::mutex> lk(mu);
        return dead;
    }
    /// Records the dead-letter hook of `o`.
    void watch(client_options& o) {
        o.hooks.on_dead_letter = [this](const message& m, const std::string& reason) {
            std::lock_guard<std::mutex> lk(mu);
            dead.emplace_back(m.id, reason);
        };
    }
};

}  // namespace

TEST_CASE("outbox: publishes go out in sequence order after up, within the window, a delivery frees it", "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    // 1..6 committed on this thread with other writes, 7..12 submitted with promises.
    std::vector<stored_publish> firsts;
    for (std::uint64_t s = 1; s <= 6; ++s) firsts.push_back(pub(s));
    ob.commit({{table::results, "with the publishes", std::string("x")}}, firsts);
    CHECK(r.s->get(table::results, "with the publishes"));
    for (std::uint64_t s = 1; s <= 6; ++s) CHECK(r.outgoing(s));
    std::vector<std::future<void>> futures;
    for (std::uint64_t s = 7; s <= 12; ++s) {
        auto p = std::make_shared<std::promise<void>>();
        futures.push_back(p->get_future());
        ob.submit(pub(s), p);
    }
    CHECK(ob.size() == 12);
    REQUIRE(eventually([&] { return r.s->count(table::outgoing) == 12; }));
    CHECK(r.host.handed_seqs().empty());

    r.up(4);
    // The test is the broker: it completes each publish in the order handed, one at a time.
    for (std::size_t done = 0; done < 12; ++done) {
        REQUIRE(r.handed(done + 1));
        r.host.deliver(ob, r.host.handed_seqs()[done]);
    }
    std::vector<std::uint64_t> expected;
    for (std::uint64_t s = 1; s <= 12; ++s) expected.push_back(s);
    CHECK(r.host.handed_seqs() == expected);
    CHECK(r.host.over_window() == 0);
    CHECK(r.host.most_outstanding() == 4);  // the window is used, never exceeded
    CHECK(r.host.without_message() == 0);
    for (const auto& h : r.host.handed()) {
        CHECK(h.topic == "t/" + std::to_string(h.seq));
        CHECK(h.payload == "payload " + std::to_string(h.seq));
    }
    for (auto& f : futures) {
        completed(f);
    }
    REQUIRE(ob.wait_empty(patience));
    CHECK(ob.size() == 0);
    CHECK(ob.published() == 12);
    CHECK(r.s->count(table::outgoing) == 0);
    CHECK(r.s->count(table::dead_letters) == 0);
    CHECK(r.host.storage_failures().empty());
}

TEST_CASE("outbox: nothing is handed over before up, nor after down until the next up", "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    ob.commit({}, {pub(1), pub(2)});
    CHECK(r.host.handed_seqs().empty());
    r.up(8);
    REQUIRE(r.handed(2));
    r.host.deliver(ob, 1);
    r.host.deliver(ob, 2);
    REQUIRE(ob.wait_empty(patience));

    r.down();
    ob.commit({}, {pub(3)});
    auto p = std::make_shared<std::promise<void>>();
    auto f = p->get_future();
    ob.submit(pub(4), p);
    REQUIRE(eventually([&] { return r.outgoing(3) && r.outgoing(4); }));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2});
    CHECK(ob.size() == 2);
    CHECK(ob.drained());

    r.up(8);
    REQUIRE(r.handed(4));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 3, 4});
    r.host.deliver(ob, 3);
    r.host.deliver(ob, 4);
    completed(f);
    r.drained(ob);
    CHECK(r.host.while_down() == 0);
}

TEST_CASE("outbox: a publish lost with the current connection is sent again first, a stale connection's loss is not",
          "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    r.up(2);
    ob.commit({}, {pub(1), pub(2), pub(3), pub(4)});
    REQUIRE(r.handed(2));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2});

    r.host.fail(ob, 2);  // lost with the current connection: sent again, before 3
    REQUIRE(r.handed(3));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 2});

    // A failure reported by a connection replaced since: 1 may be in flight on this one already, so it is
    // not sent again. Were it queued again, it would go before 3 once 2 completes.
    ob.on_send_failed(1, -3, 0, fake_outbox_host::stale());
    r.host.deliver(ob, 2);
    REQUIRE(r.handed(4));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 2, 3});

    r.host.deliver(ob, 1);
    r.host.deliver(ob, 3);
    REQUIRE(r.handed(5));
    r.host.deliver(ob, 4);
    REQUIRE(ob.wait_empty(patience));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 2, 3, 4});
    CHECK(r.host.over_window() == 0);
    CHECK(r.host.through_stale() == 0);
    CHECK(ob.published() == 4);
    CHECK(r.s->count(table::outgoing) == 0);
}

TEST_CASE("outbox: a refusal for good makes a dead letter, fails the promise and tells the host", "[outbox]") {
    hook_log hooks;
    outbox_rig r;
    hooks.watch(r.opts);
    auto& ob = r.start();
    r.up(4);
    auto p = std::make_shared<std::promise<void>>();
    auto f = p->get_future();
    ob.submit(pub(1, "secret", "forbidden/topic"), p);
    REQUIRE(r.handed(1));
    ob.commit({}, {pub(2)});
    REQUIRE(r.handed(2));

    r.host.deliver(ob, 1, 0x87);
    REQUIRE(f.wait_for(patience) == std::future_status::ready);
    CHECK(broker_reason(f) == 0x87);
    CHECK_FALSE(r.outgoing(1));
    const auto dl = r.dead_letter(1);
    REQUIRE(dl);
    CHECK(dl->outgoing);
    CHECK(dl->topic == "forbidden/topic");
    CHECK(dl->payload == "secret");
    CHECK_THAT(dl->error, Catch::Contains("135") && Catch::Contains("not authorized"));
    const auto refused = r.host.refused_items();
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].topic == "forbidden/topic");
    CHECK(refused[0].reason_code == 0x87);
    CHECK(refused[0].why == dl->error);
    CHECK(r.s->get(table::results, "refused forbidden/topic") == dl->error);  // committed with the dead letter
    CHECK(r.host.then_ran() == std::vector<std::string>{"forbidden/topic"});
    const auto dead = hooks.copy();
    REQUIRE(dead.size() == 1);
    CHECK(dead[0].first == sequence_id(1));
    CHECK(dead[0].second == dl->error);

    r.host.deliver(ob, 2);
    REQUIRE(ob.wait_empty(patience));
    CHECK(ob.published() == 1);
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2});

    // Replayed (as the client replays an outgoing dead letter): sent again under its own sequence number.
    auto rec = *dl;
    rec.error.clear();
    rec.outgoing = false;
    r.s->commit({{table::dead_letters, sequence_id(1), std::nullopt}, {table::outgoing, sequence_id(1), encode_record(rec)}});
    ob.replay(1, rec);
    CHECK(ob.size() == 1);
    REQUIRE(r.handed(3));
    CHECK(r.host.handed().back().seq == 1);
    CHECK(r.host.handed().back().payload == "secret");
    r.host.deliver(ob, 1);
    r.drained(ob);
    CHECK(r.s->count(table::dead_letters) == 0);
}

TEST_CASE("outbox: a refusal for now sends the publish again after a growing backoff", "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    r.up(4);
    auto p = std::make_shared<std::promise<void>>();
    auto f = p->get_future();
    ob.submit(pub(1), p);
    REQUIRE(r.handed(1));

    for (int refusal_no = 0; refusal_no < 2; ++refusal_no) {
        const auto delay = r.opts.reconnect_min * (1 << refusal_no);
        const auto before = std::chrono::steady_clock::now();
        r.host.deliver(ob, 1, 0x97);  // quota exceeded
        const auto after = std::chrono::steady_clock::now();
        REQUIRE(r.host.await([&] { return r.host.timer_count() == 1; }));
        const auto at = r.host.timers().front().at;
        CHECK(at >= before + delay);
        CHECK(at <= after + delay);
        // Not a dead letter, still stored, the promise still waits.
        CHECK(r.outgoing(1));
        CHECK_FALSE(r.dead_letter(1));
        CHECK(r.host.refused_items().empty());
        CHECK(f.wait_for(0ms) == std::future_status::timeout);
        CHECK(ob.size() == 1);
        CHECK(r.host.handed_seqs().size() == std::size_t(refusal_no + 1));
        CHECK(r.host.run_timers() == 1);
        REQUIRE(r.handed(std::size_t(refusal_no + 2)));
        CHECK(r.host.handed_seqs().back() == 1);
    }
    r.host.deliver(ob, 1);
    completed(f);
    r.drained(ob);
    CHECK(r.s->count(table::dead_letters) == 0);
}

TEST_CASE("outbox: a message over the broker's maximum packet size is refused before it reaches the host",
          "[outbox]") {
    hook_log hooks;
    outbox_rig r;
    hooks.watch(r.opts);
    auto& ob = r.start();
    const auto big = pub(1, std::string(300, 'x'));
    const auto small = pub(2, "small");
    CHECK_NOTHROW(ob.check_size(*big.msg));  // no limit known yet
    // Stored before the broker's limit was known (offline).
    auto p = std::make_shared<std::promise<void>>();
    auto f = p->get_future();
    ob.submit(big, p);
    ob.commit({}, {small});
    REQUIRE(eventually([&] { return r.outgoing(1) && r.outgoing(2); }));

    ob.set_max_packet_size(100);
    const auto size = xymqtt::detail::publish_packet_size(*big.msg, true);
    REQUIRE(size > 100);
    CHECK_THROWS_AS(ob.check_size(*big.msg), message_too_large);
    CHECK_THROWS_WITH(ob.check_size(*big.msg), Catch::Contains(std::to_string(size)) && Catch::Contains("100 bytes"));
    CHECK_NOTHROW(ob.check_size(*small.msg));

    r.up(4);
    REQUIRE(f.wait_for(patience) == std::future_status::ready);
    CHECK(broker_reason(f) == 0x95);
    REQUIRE(r.handed(1));
    r.host.deliver(ob, 2);
    REQUIRE(ob.wait_empty(patience));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{2});
    const auto dl = r.dead_letter(1);
    REQUIRE(dl);
    CHECK(dl->outgoing);
    CHECK(dl->payload == big.msg->payload);
    CHECK_THAT(dl->error, Catch::Contains(std::to_string(size) + " bytes") && Catch::Contains("100 bytes"));
    const auto refused = r.host.refused_items();
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].reason_code == 0x95);
    CHECK(hooks.copy().size() == 1);
    CHECK_FALSE(r.outgoing(1));
    CHECK(r.s->count(table::outgoing) == 0);
}

TEST_CASE("outbox: the publishes a previous run left are recovered and sent first after up", "[outbox]") {
    outbox_rig r;
    {
        std::vector<write_op> left;
        for (std::uint64_t s = 5; s <= 7; ++s) left.push_back(pub(s, "", "old/" + std::to_string(s)).op);
        r.s->commit(left);
    }
    auto& ob = r.start();
    CHECK(ob.size() == 3);
    ob.commit({}, {pub(8)});
    CHECK(ob.size() == 4);
    CHECK(r.host.handed_seqs().empty());
    r.up(16);
    REQUIRE(r.handed(4));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{5, 6, 7, 8});
    const auto handed = r.host.handed();
    for (std::size_t k = 0; k < 3; ++k) CHECK(handed[k].topic == "old/" + std::to_string(handed[k].seq));  // read from disk
    for (auto s : {5, 6, 7, 8}) r.host.deliver(ob, std::uint64_t(s));
    REQUIRE(ob.wait_empty(patience));
    CHECK(ob.published() == 4);
    CHECK(r.s->count(table::outgoing) == 0);
}

TEST_CASE("outbox: fail_pending fails waiting promises with client_closed, their publishes stay stored", "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    auto p1 = std::make_shared<std::promise<void>>();
    auto p2 = std::make_shared<std::promise<void>>();
    auto f1 = p1->get_future();
    auto f2 = p2->get_future();
    ob.submit(pub(1), p1);
    ob.submit(pub(2), p2);
    REQUIRE(eventually([&] { return r.outgoing(1) && r.outgoing(2); }));

    ob.fail_pending();
    REQUIRE(f1.wait_for(patience) == std::future_status::ready);
    REQUIRE(f2.wait_for(patience) == std::future_status::ready);
    CHECK_THROWS_AS(f1.get(), client_closed);
    CHECK_THROWS_AS(f2.get(), client_closed);
    CHECK(r.outgoing(1));
    CHECK(r.outgoing(2));
    CHECK(ob.size() == 2);

    // A completion after that does not satisfy the promise a second time.
    r.up(1);
    REQUIRE(r.handed(1));
    CHECK_NOTHROW(r.host.deliver(ob, 1));
    REQUIRE(eventually([&] { return !r.outgoing(1); }));
    REQUIRE(r.handed(2));  // 2 goes out next, and is not completed in this run

    // Stopped with 2 uncompleted: the next run sends it again.
    r.stop();
    CHECK(r.outgoing(2));
    auto& next = r.start();
    CHECK(next.size() == 1);
    r.up(1);
    REQUIRE(r.handed(3));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 2});
    r.host.deliver(next, 2);
    r.drained(next);
}

TEST_CASE("outbox: what the session does not take waits: for the next connection, a completion, or a pause",
          "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    r.up(4);

    // Not connected after all: held until the next up, then sent in order.
    r.host.script({refusal::disconnected});
    ob.commit({}, {pub(1), pub(2)});
    REQUIRE(r.host.await([&] { return r.host.refusal_count() == 1; }));
    CHECK(r.host.handed_seqs().empty());
    CHECK(r.outgoing(1));
    r.up(4);
    REQUIRE(r.handed(2));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2});
    r.host.deliver(ob, 1);
    r.host.deliver(ob, 2);

    // The session's queue is full after 3: 4 waits for a completion.
    r.host.script({refusal::none, refusal::buffer_full});
    ob.commit({}, {pub(3), pub(4)});
    REQUIRE(r.host.await([&] { return r.host.refusal_count() == 2; }));
    REQUIRE(r.handed(3));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 3});  // 4 waits for a completion
    r.host.deliver(ob, 3);
    REQUIRE(r.handed(4));
    CHECK(r.host.handed_seqs().back() == 4);
    r.host.deliver(ob, 4);

    // Anything else (the session could not store its record): tried again after a pause, by itself.
    r.host.script({refusal::other});
    ob.commit({}, {pub(5)});
    REQUIRE(r.handed(5));
    CHECK(r.host.refusal_count() == 3);
    r.host.deliver(ob, 5);

    REQUIRE(ob.wait_empty(patience));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
    CHECK(ob.published() == 5);
    CHECK(r.s->count(table::outgoing) == 0);
}

TEST_CASE("outbox: a publish the broker refuses makes room in the session's queue, as a completion does",
          "[outbox]") {
    outbox_rig r;
    auto& ob = r.start();
    r.up(4);

    // The session's queue is full after 1: 2 waits. The broker refuses 1 for good (a dead letter): the
    // slot it held is free, and 2 goes without waiting for another completion or a reconnect.
    r.host.script({refusal::none, refusal::buffer_full});
    ob.commit({}, {pub(1), pub(2)});
    REQUIRE(r.host.await([&] { return r.host.refusal_count() == 1; }));
    REQUIRE(r.handed(1));
    r.host.deliver(ob, 1, 0x87);
    REQUIRE(r.handed(2));
    CHECK(r.host.refused_items().size() == 1);
    CHECK(r.dead_letter(1).has_value());

    // Full again after 2; 2 is refused for now (quota exceeded): its slot is free too, and 3 goes.
    r.host.script({refusal::buffer_full});
    ob.commit({}, {pub(3)});
    REQUIRE(r.host.await([&] { return r.host.refusal_count() == 2; }));
    r.host.deliver(ob, 2, 0x97);
    REQUIRE(r.handed(3));
    r.host.deliver(ob, 3);
    CHECK(r.host.run_timers() == 1);  // 2, sent again after its pause
    REQUIRE(r.handed(4));
    CHECK(r.host.handed_seqs() == std::vector<std::uint64_t>{1, 2, 3, 2});
    r.host.deliver(ob, 2);
    REQUIRE(ob.wait_empty(patience));
}
