// The inbox (runtime/src/inbox/inbox.h) on its own, over a real LMDB store, with a small fake host in place of
// the client: lanes, order, removal once handled, retries with stored attempts, dead letters, failed commits,
// effects, recovery, unsubscribing, halting. The host's commits go straight to the store; where the order of
// bookkeeping and commits matters, a host queues them to a real committer, as the client does.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "inbox/inbox.h"
#include "outbox/committer.h"
#include "store_test_util.h"
#include "support/eventually.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace std::chrono_literals;
using xymqtt::detail::inbox;
using xymqtt::detail::inbox_host;
using xymqtt::test::eventually;
using store_test::temp_dir;

namespace {

constexpr auto patience = std::chrono::seconds(10);

std::string id_of(std::uint64_t n) { return sequence_id(n); }

stored_message delivery(const std::string& topic, const std::string& lane, const std::string& payload = "p") {
    stored_message m;
    m.topic = topic;
    m.lane = lane;
    m.payload = payload;
    m.created_ms = 1000;
    return m;
}

// The client's side of the inbox: commits go to the store, and can be made to fail (storage_error) or be
// refused (client_closed); publishes handed over and storage failures are recorded.
class fake_inbox_host final : public inbox_host {
public:
    explicit fake_inbox_host(store& s) : s_(s) {}

    struct commit_entry {
        std::vector<write_op> ops;
        bool soon;
    };
    struct publish_entry {
        std::uint64_t seq;
        std::string topic;
        std::size_t incoming_left;  // records in the incoming table when it was handed over
        bool outgoing_stored;       // its record was in the outgoing table then
    };

    void commit(const std::vector<write_op>& ops, bool soon) override {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (closed_) throw client_closed("the client is closing");
            if (fail_ > 0) {
                --fail_;
                throw storage_error("disk on fire", 28);
            }
        }
        s_.commit(ops);
        std::lock_guard<std::mutex> lk(mu_);
        commits_.push_back({ops, soon});
        events_.push_back("commit");
        cv_.notify_all();
    }
    void record(std::vector<write_op> ops) override {
        s_.commit(ops);
        std::lock_guard<std::mutex> lk(mu_);
        records_.push_back(std::move(ops));
    }
    void publishes_stored(std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs) override {
        const auto left = s_.count(table::incoming);
        std::lock_guard<std::mutex> lk(mu_);
        for (const auto& [seq, msg] : pubs)
            publishes_.push_back({seq, msg->topic, left, s_.get(table::outgoing, sequence_id(seq)).has_value()});
        events_.push_back("publishes_stored");
        cv_.notify_all();
    }
    void storage_failed(const std::string& what) override {
        std::lock_guard<std::mutex> lk(mu_);
        storage_failures_.push_back(what);
        cv_.notify_all();
    }

    /// The next `n` commits throw storage_error.
    void fail_next(int n) {
        std::lock_guard<std::mutex> lk(mu_);
        fail_ = n;
    }
    /// Every commit from now on throws client_closed.
    void close() {
        std::lock_guard<std::mutex> lk(mu_);
        closed_ = true;
    }
    void note(const std::string& event) {
        std::lock_guard<std::mutex> lk(mu_);
        events_.push_back(event);
        cv_.notify_all();
    }
    template <class P>
    bool await(P p) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, patience, p);
    }

    std::vector<commit_entry> commits() const { return locked(commits_); }
    std::vector<std::vector<write_op>> records() const { return locked(records_); }
    std::vector<publish_entry> publishes() const { return locked(publishes_); }
    std::vector<std::string> storage_failures() const { return locked(storage_failures_); }
    std::vector<std::string> events() const { return locked(events_); }

    // For await() predicates (mu_ held).
    const std::vector<std::string>& storage_failures_locked() const { return storage_failures_; }

private:
    template <class T>
    T locked(const T& v) const {
        std::lock_guard<std::mutex> lk(mu_);
        return v;
    }
    store& s_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    int fail_ = 0;
    bool closed_ = false;
    std::vector<commit_entry> commits_;
    std::vector<std::vector<write_op>> records_;
    std::vector<publish_entry> publishes_;
    std::vector<std::string> storage_failures_;
    std::vector<std::string> events_;
};

// The client's side of the inbox as client.cpp's inbox_link has it: record() queues the bookkeeping to a
// committer and returns, commit() goes through the same committer (made on the calling thread when no commit
// runs, else queued behind the batches before it), which commits in queue order.
class queued_inbox_host final : public inbox_host {
public:
    explicit queued_inbox_host(store& s) : c_(s) {}

    /// How long record() takes before it queues: a recording thread preempted there. Not synchronisation;
    /// it only widens a window that scheduling opens now and then.
    std::chrono::milliseconds record_delay{0};

    void commit(const std::vector<write_op>& ops, bool) override { c_.commit(ops, xymqtt::detail::urgency::now); }
    void record(std::vector<write_op> ops) override {
        if (record_delay.count() > 0) std::this_thread::sleep_for(record_delay);
        {
            std::lock_guard<std::mutex> lk(mu_);
            records_.push_back(ops);
        }
        c_.submit(std::move(ops), nullptr);
    }
    void publishes_stored(std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>&) override {}
    void storage_failed(const std::string&) override {}

    /// Commits what is still queued and stops the committer.
    void stop() { c_.stop(); }
    std::vector<std::vector<write_op>> records() const {
        std::lock_guard<std::mutex> lk(mu_);
        return records_;
    }

private:
    xymqtt::detail::committer c_;
    mutable std::mutex mu_;
    std::vector<std::vector<write_op>> records_;
};

// What handlers and hooks saw, from the lane threads.
struct journal {
    struct run {
        std::string id;
        std::uint32_t attempt;
        int handler;
    };
    struct hook_call {
        std::string id;
        std::uint32_t attempt;
        std::string text;
        std::chrono::milliseconds delay{0};
    };
    std::mutex mu;
    std::condition_variable cv;
    std::vector<run> runs;
    std::vector<hook_call> retries, dead, parse_errors;
    std::vector<std::string> problems;  // a handler saw the store in a state the inbox promises it is not in

    void add(std::vector<run>& to, run r) {
        std::lock_guard<std::mutex> lk(mu);
        to.push_back(std::move(r));
        cv.notify_all();
    }
    void add(std::vector<hook_call>& to, hook_call h) {
        std::lock_guard<std::mutex> lk(mu);
        to.push_back(std::move(h));
        cv.notify_all();
    }
    /// Records the retry, dead-letter and parse-error hooks of `o`.
    void watch(xymqtt::client_options& o) {
        o.hooks.on_message_retry = [this](const message& m, const std::string& err, std::chrono::milliseconds d) {
            add(retries, {m.id, m.attempt, err, d});
        };
        o.hooks.on_dead_letter = [this](const message& m, const std::string& reason) {
            add(dead, {m.id, m.attempt, reason});
        };
        o.hooks.on_parse_error = [this](const message& m, const std::string& e) { add(parse_errors, {m.id, m.attempt, e}); };
    }
    void problem(std::string p) {
        std::lock_guard<std::mutex> lk(mu);
        problems.push_back(std::move(p));
    }
    template <class P>
    bool await(P p) {
        std::unique_lock<std::mutex> lk(mu);
        return cv.wait_for(lk, patience, p);
    }
    std::vector<std::string> ids(int handler = 0) {
        std::lock_guard<std::mutex> lk(mu);
        std::vector<std::string> out;
        for (const auto& r : runs)
            if (!handler || r.handler == handler) out.push_back(r.id);
        return out;
    }
    std::vector<std::uint32_t> attempts() {
        std::lock_guard<std::mutex> lk(mu);
        std::vector<std::uint32_t> out;
        for (const auto& r : runs) out.push_back(r.attempt);
        return out;
    }
    template <class T>
    T copy(const T& v) {
        std::lock_guard<std::mutex> lk(mu);
        return v;
    }
};

// A handler waits at it until it opens (or patience runs out, so that a failed test still ends).
class gate {
public:
    void pass() {
        std::unique_lock<std::mutex> lk(mu_);
        ++entered_;
        cv_.notify_all();
        cv_.wait_for(lk, patience, [&] { return open_; });
    }
    bool await_entered(int n) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, patience, [&] { return entered_ >= n; });
    }
    void open() {
        std::lock_guard<std::mutex> lk(mu_);
        open_ = true;
        cv_.notify_all();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int entered_ = 0;
    bool open_ = false;
};

// A store in a temporary directory, the fake host over it, and the inbox, halted and joined at the end.
// Hooks go in `opts` before start(). Whatever a handler or hook uses must be declared before the rig.
struct inbox_rig {
    temp_dir tmp;
    std::unique_ptr<store> s;
    fake_inbox_host host;
    client_options opts;
    std::unique_ptr<inbox> in;

    inbox_rig() : s(open_lmdb_store(tmp.store_dir(), {durability::process})), host(*s) {
        opts.retry.initial = 1ms;
        opts.retry.cap = 5ms;
    }
    ~inbox_rig() { stop(); }
    inbox& start() {
        in = std::make_unique<inbox>(host, opts);
        return *in;
    }
    void stop() {
        if (!in) return;
        in->halt();
        in->join();
        in.reset();
    }
    /// Commits deliveries to the incoming table, then hands them to the inbox, as the client does.
    void arrive(std::vector<std::pair<std::string, stored_message>> recs) {
        std::vector<write_op> ops;
        for (const auto& [id, rec] : recs) ops.push_back({table::incoming, id, encode_record(rec)});
        s->commit(ops);
        in->take(std::move(recs));
    }
    std::optional<stored_message> incoming(const std::string& id) const {
        auto v = s->get(table::incoming, id);
        if (!v) return std::nullopt;
        return decode_record(*v);
    }
    std::optional<stored_message> dead_letter(const std::string& id) const {
        auto v = s->get(table::dead_letters, id);
        if (!v) return std::nullopt;
        return decode_record(*v);
    }
};

// A store and the queued host over it, and an inbox, halted and joined at the end, then the committer stopped.
/// Checks that delivery `id` was given up after `attempts` attempts, the last failing with `error`: the
/// dead-letter hook saw it once, and it moved from the incoming table to the dead letters.
void check_gave_up(journal& j, const inbox_rig& r, const std::string& id, std::uint32_t attempts,
                   const std::string& error) {
    const std::string why = "gave up after " + std::to_string(attempts) + " attempts: " + error;
    const auto dead = j.copy(j.dead);
    REQUIRE(dead.size() == 1);
    CHECK(dead[0].id == id);
    CHECK(dead[0].attempt == attempts);
    CHECK(dead[0].text == why);
    CHECK_FALSE(r.incoming(id));
    const auto dl = r.dead_letter(id);
    REQUIRE(dl);
    CHECK(dl->attempts == attempts);
    CHECK(dl->error == why);
}

struct queued_rig {
    temp_dir tmp;
    std::unique_ptr<store> s;
    queued_inbox_host host;
    client_options opts;
    std::unique_ptr<inbox> in;

    queued_rig() : s(open_lmdb_store(tmp.store_dir(), {durability::process})), host(*s) {}
    ~queued_rig() {
        stop();
        host.stop();
    }
    inbox& start() {
        in = std::make_unique<inbox>(host, opts);
        return *in;
    }
    void stop() {
        if (!in) return;
        in->halt();
        in->join();
    }
};

// The largest of the values noted (from any thread).
struct running_max {
    std::atomic<std::size_t> most{0};
    void note(std::size_t n) {
        std::size_t seen = most.load();
        while (n > seen && !most.compare_exchange_weak(seen, n)) {
        }
    }
};

// Notes a sampled value into a running_max from a thread of its own until it is destroyed (declare it after
// what it samples).
class sampler {
public:
    sampler(running_max& into, std::function<std::size_t()> sample)
        : thread_([this, &into, sample = std::move(sample)] {
              while (!done_) {
                  into.note(sample());
                  std::this_thread::sleep_for(std::chrono::microseconds(100));  // a sampling period, not a wait
              }
          }) {}
    ~sampler() { stop(); }
    void stop() {
        done_ = true;
        if (thread_.joinable()) thread_.join();
    }

private:
    std::atomic<bool> done_{false};
    std::thread thread_;
};

// Which deliveries a handler is at work on, across lanes: one run while another is at work is a problem.
struct at_work {
    explicit at_work(journal& jl) : j(jl) {}
    journal& j;
    std::mutex mu;
    std::vector<std::string> ids;

    void enter(const std::string& id, int handler) {
        std::lock_guard<std::mutex> lk(mu);
        if (std::find(ids.begin(), ids.end(), id) != ids.end())
            j.problem(id + " run by handler " + std::to_string(handler) + " while another runs it");
        ids.push_back(id);
    }
    void leave(const std::string& id) {
        std::lock_guard<std::mutex> lk(mu);
        ids.erase(std::find(ids.begin(), ids.end(), id));
    }
};

}  // namespace

TEST_CASE("inbox: a lane runs its deliveries in arrival order, one at a time, each removed once handled", "[inbox]") {
    journal j;
    std::atomic<int> active{0}, most{0};
    inbox_rig r;
    auto& in = r.start();
    CHECK(in.add_handler(1, "a/#", [&](const message& m, effects&) {
        const int now = ++active;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        // Its own record is stored until it is handled; every one before it is gone already.
        if (!r.incoming(m.id)) j.problem(m.id + " is not in the incoming table while handled");
        for (const auto& before : j.ids())
            if (r.incoming(before)) j.problem(before + " is still stored when " + m.id + " runs");
        std::this_thread::yield();
        j.add(j.runs, {m.id, m.attempt, 1});
        --active;
    }, 1));
    CHECK(in.has_lane("a/#"));
    CHECK(in.lanes_for("a/x", {}) == std::vector<std::string>{"a/#"});

    std::vector<std::string> expected;
    for (std::uint64_t n = 1; n <= 20; n += 5) {  // in four arrivals of five
        std::vector<std::pair<std::string, stored_message>> recs;
        for (std::uint64_t k = n; k < n + 5; ++k) {
            recs.emplace_back(id_of(k), delivery("a/" + std::to_string(k), "a/#"));
            expected.push_back(id_of(k));
        }
        r.arrive(std::move(recs));
    }
    REQUIRE(in.wait_empty(patience));
    CHECK(j.ids() == expected);
    CHECK(most.load() == 1);
    CHECK(j.copy(j.problems).empty());
    CHECK(in.handled() == 20);
    CHECK(in.size() == 0);
    CHECK(in.retries() == 0);
    CHECK(r.s->count(table::incoming) == 0);
    for (auto a : j.attempts()) CHECK(a == 1);
}

TEST_CASE("inbox: a handler that throws is retried after the policy's delay, its attempts stored", "[inbox]") {
    journal j;
    inbox_rig r;
    r.opts.hooks.on_message_retry = [&](const message& m, const std::string& err, std::chrono::milliseconds delay) {
        // Fired once the attempt count is committed.
        const auto rec = r.incoming(m.id);
        if (!rec || rec->attempts != m.attempt) j.problem("retry hook before the attempt count was stored");
        j.add(j.retries, {m.id, m.attempt, err, delay});
    };
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        const auto rec = r.incoming(m.id);
        if (!rec) {
            j.problem(m.id + " is not stored while handled");
        } else if (rec->attempts != m.attempt - 1) {
            j.problem(m.id + " attempt " + std::to_string(m.attempt) + " with " + std::to_string(rec->attempts) +
                      " stored");
        } else if (m.attempt > 1 && rec->next_attempt_ms == 0) {
            j.problem("no next attempt stored");
        }
        if (m.id == id_of(1) && m.attempt <= 3) throw std::runtime_error("attempt " + std::to_string(m.attempt) + " failed");
    }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(in.wait_empty(patience));

    // The failing delivery holds the lane: the one behind it waits until it succeeds.
    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(1), id_of(1), id_of(1), id_of(2)});
    CHECK(j.attempts() == std::vector<std::uint32_t>{1, 2, 3, 4, 1});
    const auto retries = j.copy(j.retries);
    REQUIRE(retries.size() == 3);
    for (std::uint32_t k = 0; k < 3; ++k) {
        CHECK(retries[k].id == id_of(1));
        CHECK(retries[k].attempt == k + 1);
        CHECK(retries[k].text == "attempt " + std::to_string(k + 1) + " failed");
        CHECK(retries[k].delay == r.opts.retry.delay_after(k + 1));
    }
    CHECK(retries[0].delay == 1ms);
    CHECK(retries[1].delay == 2ms);
    CHECK(retries[2].delay == 4ms);
    CHECK(j.copy(j.problems).empty());
    CHECK(in.retries() == 3);
    CHECK(in.handled() == 2);
    CHECK(in.dead() == 0);
    CHECK(r.s->count(table::incoming) == 0);
}

TEST_CASE("inbox: a delivery that uses up max_attempts becomes a dead letter, and the lane goes on", "[inbox]") {
    journal j;
    std::atomic<bool> failing{true};
    inbox_rig r;
    r.opts.retry.max_attempts = 3;
    j.watch(r.opts);
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        if (m.id == id_of(1) && failing) throw std::runtime_error("boom");
    }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#", "poisoned")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(in.wait_empty(patience));

    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(1), id_of(1), id_of(2)});
    CHECK(j.copy(j.retries).size() == 2);
    CHECK(j.copy(j.parse_errors).empty());
    CHECK(in.dead() == 1);
    CHECK(in.retries() == 3);
    CHECK(in.handled() == 1);

    check_gave_up(j, r, id_of(1), 3, "boom");
    const auto dl = r.dead_letter(id_of(1));
    REQUIRE(dl);
    CHECK(dl->topic == "a/1");
    CHECK(dl->payload == "poisoned");
    CHECK_FALSE(dl->outgoing);
    const auto listed = inbox::dead_letters(*r.s);
    REQUIRE(listed.size() == 1);
    CHECK(listed[0].id == id_of(1));
    CHECK(listed[0].record.error == dl->error);

    // Replayed (as the client replays a dead letter: cleared of its error and attempts), it goes back to
    // its lane and is handled from attempt 1.
    failing = false;
    auto rec = *dl;
    rec.error.clear();
    rec.attempts = 0;
    rec.next_attempt_ms = 0;
    in.replay(id_of(1), rec);
    CHECK(in.dead() == 0);
    REQUIRE(in.wait_empty(patience));
    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(1), id_of(1), id_of(2), id_of(1)});
    CHECK(j.attempts().back() == 1);
    CHECK(in.handled() == 2);
    CHECK(r.s->count(table::dead_letters) == 0);
    CHECK(r.s->count(table::incoming) == 0);
}

TEST_CASE("inbox: a parse_error from a handler dead-letters the delivery at once", "[inbox]") {
    journal j;
    inbox_rig r;
    r.opts.retry.max_attempts = 5;
    j.watch(r.opts);
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        if (m.id == id_of(1)) throw parse_error("undecodable payload");
    }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#", "{nope")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(in.wait_empty(patience));

    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(2)});
    CHECK(j.copy(j.retries).empty());
    const auto parse = j.copy(j.parse_errors);
    REQUIRE(parse.size() == 1);
    CHECK(parse[0].id == id_of(1));
    CHECK(parse[0].attempt == 1);
    CHECK(parse[0].text == "undecodable payload");
    const auto dead = j.copy(j.dead);
    REQUIRE(dead.size() == 1);
    CHECK(dead[0].id == id_of(1));
    CHECK(dead[0].text == "undecodable payload");
    CHECK(in.dead() == 1);
    CHECK(in.retries() == 0);
    CHECK(in.handled() == 1);
    CHECK_FALSE(r.incoming(id_of(1)));
    const auto dl = r.dead_letter(id_of(1));
    REQUIRE(dl);
    CHECK(dl->error == "undecodable payload");
    CHECK(dl->attempts == 0);
    CHECK(dl->payload == "{nope");
}

TEST_CASE("inbox: a commit the store refuses is made again until it is stored, nothing lost or run twice", "[inbox]") {
    journal j;
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) {
        for (const auto& before : j.ids())
            if (r.incoming(before)) j.problem(before + " is still stored when " + m.id + " runs");
        j.add(j.runs, {m.id, m.attempt, 1});
    }, 1);
    r.host.fail_next(3);  // the removal of the first delivery fails three times
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(in.wait_empty(patience));

    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(2)});
    CHECK(j.copy(j.problems).empty());
    const auto failures = r.host.storage_failures();
    CHECK(failures == std::vector<std::string>(3, "disk on fire"));
    CHECK(in.handled() == 2);
    CHECK(in.retries() == 0);
    CHECK(in.dead() == 0);
    CHECK(r.s->count(table::incoming) == 0);
    CHECK(r.s->count(table::dead_letters) == 0);
}

TEST_CASE("inbox: a commit that keeps failing leaves the delivery stored once the inbox halts, for the next run",
          "[inbox]") {
    journal j;
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 1}); }, 1);
    r.host.fail_next(1 << 30);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}});
    REQUIRE(r.host.await([&] { return r.host.storage_failures_locked().size() >= 2; }));
    in.halt();
    auto joined = std::async(std::launch::async, [&] { in.join(); });
    REQUIRE(joined.wait_for(patience) == std::future_status::ready);
    CHECK(j.ids() == std::vector<std::string>{id_of(1)});
    CHECK(in.handled() == 0);
    CHECK(in.size() == 1);
    CHECK(r.incoming(id_of(1)));
    r.in.reset();

    // The next run hands it to the handlers again.
    r.host.fail_next(0);
    auto& next = r.start();
    CHECK(next.recover(*r.s) == 1);
    next.add_handler(1, "a/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 2}); }, 1);
    REQUIRE(next.wait_empty(patience));
    CHECK(j.ids(2) == std::vector<std::string>{id_of(1)});
    CHECK_FALSE(r.incoming(id_of(1)));
}

TEST_CASE("inbox: effects are committed with the removal, publishes are handed over and after_commit runs after it",
          "[inbox]") {
    journal j;
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects& fx) {
        j.add(j.runs, {m.id, m.attempt, 1});
        if (m.id != id_of(1)) return;
        auto out = std::make_shared<stored_message>();
        out->topic = "replies/1";
        out->payload = "answer";
        fx.ops.push_back({table::results, "r1", std::string("outcome")});
        fx.publishes.emplace_back(100, out);
        fx.after_commit.push_back([&] {
            // Runs once the commit is made: the delivery is gone, the outcome stored.
            if (r.incoming(id_of(1))) j.problem("after_commit before the delivery was removed");
            if (!r.s->get(table::results, "r1")) j.problem("after_commit before the effects were stored");
            r.host.note("after_commit");
        });
    }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(in.wait_empty(patience));
    CHECK(j.copy(j.problems).empty());

    // One commit carries the removal, the handler's writes and the publish's record.
    const auto commits = r.host.commits();
    REQUIRE(commits.size() == 2);
    const auto& first = commits[0];
    CHECK_FALSE(first.soon);  // its publish is sent next: not one to wait for a later commit
    auto has = [&](table t, const std::string& id, bool put) {
        return std::any_of(first.ops.begin(), first.ops.end(),
                           [&](const write_op& op) { return op.tbl == t && op.id == id && op.value.has_value() == put; });
    };
    CHECK(has(table::incoming, id_of(1), false));
    CHECK(has(table::results, "r1", true));
    CHECK(has(table::outgoing, sequence_id(100), true));
    const auto stored_pub = r.s->get(table::outgoing, sequence_id(100));
    REQUIRE(stored_pub);
    CHECK(decode_record(*stored_pub).topic == "replies/1");
    CHECK(decode_record(*stored_pub).payload == "answer");

    const auto pubs = r.host.publishes();
    REQUIRE(pubs.size() == 1);
    CHECK(pubs[0].seq == 100);
    CHECK(pubs[0].topic == "replies/1");
    CHECK(pubs[0].outgoing_stored);
    CHECK(pubs[0].incoming_left == 1);  // delivery 1 removed, delivery 2 not yet handled
    const auto events = r.host.events();
    REQUIRE(events.size() >= 3);
    CHECK(events[0] == "commit");
    CHECK(events[1] == "publishes_stored");
    CHECK(events[2] == "after_commit");
    CHECK(in.handled() == 2);
}

TEST_CASE("inbox: recover parks what a previous run left, a lane opened later takes its deliveries in order",
          "[inbox]") {
    journal j;
    inbox_rig r;
    {
        auto retried = delivery("a/2", "a/#");
        retried.attempts = 2;  // failed twice in the previous run
        std::vector<write_op> ops{
            {table::incoming, id_of(1), encode_record(delivery("a/1", "a/#"))},
            {table::incoming, id_of(2), encode_record(retried)},
            {table::incoming, id_of(3), encode_record(delivery("a/3", "a/#"))},
            {table::incoming, id_of(4), encode_record(delivery("b/1", "b/#"))},
            {table::incoming, id_of(5), std::string("not a record")},
            {table::incoming, id_of(6), encode_record(delivery("a/4", "a/#"))},
        };
        r.s->commit(ops);
    }
    auto& in = r.start();
    CHECK(in.recover(*r.s) == 5);
    CHECK(in.size() == 5);
    // The unreadable record became a dead letter, kept with the reason.
    CHECK(in.dead() == 1);
    CHECK_FALSE(r.incoming(id_of(5)));
    const auto dl = r.dead_letter(id_of(5));
    REQUIRE(dl);
    CHECK_FALSE(dl->error.empty());
    CHECK(dl->payload == "not a record");

    CHECK(in.add_handler(1, "a/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 1}); }, 1));
    REQUIRE(eventually([&] { return in.size() == 1; }));
    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(2), id_of(3), id_of(6)});
    CHECK(j.attempts() == std::vector<std::uint32_t>{1, 3, 1, 1});  // the stored count holds across runs
    CHECK(in.handled() == 4);
    // b/1 waits for its own lane.
    CHECK(r.incoming(id_of(4)));
    CHECK(r.s->count(table::incoming) == 1);

    CHECK(in.add_handler(2, "b/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 2}); }, 1));
    REQUIRE(in.wait_empty(patience));
    CHECK(j.ids(2) == std::vector<std::string>{id_of(4)});
    CHECK(r.s->count(table::incoming) == 0);
}

TEST_CASE("inbox: the relabelling of a recovered delivery stored for no lane never lands after its removal",
          "[inbox]") {
    journal j;
    queued_rig r;
    // A previous run stored it when no lane matched it.
    r.s->commit({{table::incoming, id_of(1), encode_record(delivery("a/1", ""))}});
    SECTION("recorded at once") {}
    SECTION("the recording thread preempted before it queues") { r.host.record_delay = 20ms; }
    auto& in = r.start();
    REQUIRE(in.recover(*r.s) == 1);
    // Opening the lane relabels the delivery (queued to the committer) and starts the lane's thread, which
    // handles it and commits its removal: the relabelling must be queued first, or it lands after the
    // removal and puts the handled delivery back.
    CHECK(in.add_handler(1, "a/#", [&](const message& m, effects&) {
        if (!r.s->get(table::incoming, m.id)) j.problem(m.id + " is not stored while handled");
        j.add(j.runs, {m.id, m.attempt, 1});
    }, 1));
    REQUIRE(in.wait_empty(patience));
    r.stop();
    r.host.stop();  // whatever is still queued is committed now
    CHECK(j.ids() == std::vector<std::string>{id_of(1)});
    CHECK(j.copy(j.problems).empty());
    CHECK(in.handled() == 1);
    REQUIRE(r.host.records().size() == 1);  // the relabelling was recorded
    CHECK(r.s->count(table::incoming) == 0);
    CHECK_FALSE(r.s->get(table::incoming, id_of(1)));

    // The next run finds nothing to hand over again.
    queued_inbox_host next_host(*r.s);
    inbox next(next_host, r.opts);
    CHECK(next.recover(*r.s) == 0);
    CHECK(next.size() == 0);
    next.halt();
    next.join();
    next_host.stop();
}

TEST_CASE("inbox: removing a lane's last handler stops it, its deliveries wait parked for the next lane", "[inbox]") {
    journal j;
    gate first;
    inbox_rig r;
    auto& in = r.start();
    CHECK(in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        if (m.id == id_of(1)) first.pass();
    }, 1));
    CHECK_FALSE(in.add_handler(2, "a/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 2}); }, 1));
    auto hs = in.handlers_of("a/#");
    std::sort(hs.begin(), hs.end());
    CHECK(hs == std::vector<subscription_id>{1, 2});
    // Not the last handler: the lane stays.
    CHECK_FALSE(in.remove_handler(2));
    CHECK(in.has_lane("a/#"));
    CHECK(in.sole_handler("a/#") == subscription_id(1));

    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}, {id_of(3), delivery("a/3", "a/#")}});
    REQUIRE(first.await_entered(1));
    CHECK(in.remove_handler(1) == std::optional<std::string>("a/#"));
    CHECK_FALSE(in.has_lane("a/#"));
    CHECK(in.live_filters().empty());
    CHECK(in.lanes_for("a/1", {}) == std::vector<std::string>{""});  // a new arrival would be parked
    first.open();
    // The delivery at work finishes; the others wait, stored.
    REQUIRE(eventually([&] { return in.size() == 2; }));
    CHECK(in.handled() == 1);
    CHECK_FALSE(r.incoming(id_of(1)));
    CHECK(r.incoming(id_of(2)));
    CHECK(r.incoming(id_of(3)));

    CHECK(in.add_handler(3, "a/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 3}); }, 1));
    REQUIRE(in.wait_empty(patience));
    CHECK(j.ids(1) == std::vector<std::string>{id_of(1)});
    CHECK(j.ids(2).empty());
    CHECK(j.ids(3) == std::vector<std::string>{id_of(2), id_of(3)});
    CHECK(in.handled() == 3);
    CHECK(r.s->count(table::incoming) == 0);
}

TEST_CASE("inbox: resubscribing while a delivery is handled never runs it twice, the count never wraps", "[inbox]") {
    journal j;
    at_work work(j);
    gate first;
    running_max most;  // of the inbox's count: never above the two deliveries taken (a wrap shows as huge)
    inbox_rig r;
    auto& in = r.start();
    sampler watch(most, [&] { return in.size(); });
    auto handler = [&](int n) {
        return [&, n](const message& m, effects&) {
            work.enter(m.id, n);
            j.add(j.runs, {m.id, m.attempt, n});
            most.note(in.size());
            if (n == 1 && m.id == id_of(1)) first.pass();
            work.leave(m.id);
        };
    };
    CHECK(in.add_handler(1, "a/#", handler(1), 1));
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(first.await_entered(1));
    // Unsubscribed and subscribed again with handler 1 still inside delivery 1, not waiting for anything.
    CHECK(in.remove_handler(1) == std::optional<std::string>("a/#"));
    CHECK(in.add_handler(2, "a/#", handler(2), 1));
    // The new lane takes delivery 2; delivery 1 stays with the stopped lane, whose handler is at work on it.
    REQUIRE(j.await([&] {
        return std::any_of(j.runs.begin(), j.runs.end(), [](const journal::run& x) { return x.handler == 2; });
    }));
    CHECK(j.ids(2) == std::vector<std::string>{id_of(2)});
    CHECK(r.incoming(id_of(1)));
    most.note(in.size());
    first.open();
    CHECK(in.wait_empty(patience));
    // Halted and joined (the stopped lane too): nothing changes the counts any more.
    in.halt();
    in.join();
    watch.stop();
    most.note(in.size());
    CHECK(j.ids(1) == std::vector<std::string>{id_of(1)});
    CHECK(j.ids(2) == std::vector<std::string>{id_of(2)});
    CHECK(j.copy(j.problems).empty());
    CHECK(in.handled() == 2);
    CHECK(in.size() == 0);
    CHECK(most.most.load() <= 2);
    CHECK(r.s->count(table::incoming) == 0);
}

TEST_CASE("inbox: a retry on a lane unsubscribed meanwhile keeps its attempt count", "[inbox]") {
    journal j;
    gate first;
    inbox_rig r;
    r.opts.retry.max_attempts = 2;
    j.watch(r.opts);
    auto& in = r.start();
    CHECK(in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        first.pass();
        throw std::runtime_error("first failed");
    }, 1));
    r.arrive({{id_of(1), delivery("a/1", "a/#")}});
    REQUIRE(first.await_entered(1));
    CHECK(in.remove_handler(1) == std::optional<std::string>("a/#"));
    first.open();
    // Attempt 1 failed on the stopped lane: its count is committed, then the hook fires.
    REQUIRE(j.await([&] { return j.retries.size() == 1; }));
    const auto stored = r.incoming(id_of(1));
    REQUIRE(stored);
    CHECK(stored->attempts == 1);
    CHECK(in.add_handler(2, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 2});
        throw std::runtime_error("second failed");
    }, 1));
    REQUIRE(in.wait_empty(patience));

    // The new lane runs attempt 2, the last one allowed: two runs in all.
    CHECK(j.ids(1) == std::vector<std::string>{id_of(1)});
    CHECK(j.ids(2) == std::vector<std::string>{id_of(1)});
    CHECK(j.attempts() == std::vector<std::uint32_t>{1, 2});
    const auto retries = j.copy(j.retries);
    REQUIRE(retries.size() == 1);
    CHECK(retries[0].attempt == 1);
    CHECK(retries[0].text == "first failed");
    CHECK(in.retries() == 2);
    CHECK(in.dead() == 1);
    CHECK(in.handled() == 0);
    check_gave_up(j, r, id_of(1), 2, "second failed");
}

TEST_CASE("inbox: halt lets the delivery at work finish and starts no other, join ends the lanes", "[inbox]") {
    journal j;
    gate first;
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects&) {
        j.add(j.runs, {m.id, m.attempt, 1});
        if (m.id == id_of(1)) first.pass();
    }, 1);
    in.add_handler(2, "b/#", [&](const message& m, effects&) { j.add(j.runs, {m.id, m.attempt, 2}); }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}});
    REQUIRE(first.await_entered(1));
    in.halt();
    first.open();
    r.arrive({{id_of(3), delivery("b/1", "b/#")}});  // after halt: not taken
    auto joined = std::async(std::launch::async, [&] { in.join(); });
    REQUIRE(joined.wait_for(patience) == std::future_status::ready);
    // Joined: nothing runs any more.
    CHECK(j.ids() == std::vector<std::string>{id_of(1)});
    CHECK(in.handled() == 1);
    CHECK(in.size() == 2);
    CHECK_FALSE(r.incoming(id_of(1)));
    CHECK(r.incoming(id_of(2)));
    CHECK(r.incoming(id_of(3)));
}

TEST_CASE("inbox: a delivery whose removal is refused as the client closes stays stored", "[inbox]") {
    journal j;
    gate first;
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects& fx) {
        j.add(j.runs, {m.id, m.attempt, 1});
        fx.after_commit.push_back([&] { j.problem("after_commit of a commit that was refused"); });
        first.pass();
    }, 1);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}});
    REQUIRE(first.await_entered(1));
    in.halt();
    r.host.close();
    first.open();
    auto joined = std::async(std::launch::async, [&] { in.join(); });
    REQUIRE(joined.wait_for(patience) == std::future_status::ready);
    CHECK(j.ids() == std::vector<std::string>{id_of(1)});
    CHECK(j.copy(j.problems).empty());
    CHECK(in.handled() == 0);
    CHECK(in.size() == 1);
    CHECK(r.incoming(id_of(1)));
    CHECK(r.host.storage_failures().empty());  // closing is no storage failure
}

TEST_CASE("inbox: with effects::later a lane runs up to its concurrency, the delivery stays stored until it finishes",
          "[inbox]") {
    journal j;
    std::mutex fmu;
    std::vector<std::pair<std::string, std::function<void(effects)>>> finishes;  // guarded by fmu
    std::atomic<int> finished{0};
    inbox_rig r;
    auto& in = r.start();
    in.add_handler(1, "a/#", [&](const message& m, effects& fx) {
        // A third may start only once one of the two at work has finished.
        if (j.ids().size() >= 2 && finished.load() == 0) j.problem(m.id + " started with two at work");
        j.add(j.runs, {m.id, m.attempt, 1});
        fx.later = [&, id = m.id](std::function<void(effects)> finish) {
            std::lock_guard<std::mutex> lk(fmu);
            finishes.emplace_back(id, std::move(finish));
        };
    }, 2);
    r.arrive({{id_of(1), delivery("a/1", "a/#")}, {id_of(2), delivery("a/2", "a/#")}, {id_of(3), delivery("a/3", "a/#")}});
    REQUIRE(eventually([&] {
        std::lock_guard<std::mutex> lk(fmu);
        return finishes.size() == 2;
    }));
    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(2)});
    CHECK(in.size() == 3);
    CHECK(r.incoming(id_of(1)));
    CHECK(r.incoming(id_of(2)));

    // The second finishes first: it is removed, and the third starts.
    std::function<void(effects)> f2;
    {
        std::lock_guard<std::mutex> lk(fmu);
        f2 = finishes[1].second;
    }
    ++finished;
    effects rest;
    rest.ops.push_back({table::results, "r2", std::string("done")});
    f2(std::move(rest));
    CHECK_FALSE(r.incoming(id_of(2)));
    CHECK(r.s->get(table::results, "r2"));
    REQUIRE(eventually([&] {
        std::lock_guard<std::mutex> lk(fmu);
        return finishes.size() == 3;
    }));
    CHECK(r.incoming(id_of(1)));
    std::vector<std::function<void(effects)>> rest_fs;
    {
        std::lock_guard<std::mutex> lk(fmu);
        rest_fs = {finishes[0].second, finishes[2].second};
    }
    for (auto& f : rest_fs) f(effects{});
    REQUIRE(in.wait_empty(patience));
    CHECK(j.ids() == std::vector<std::string>{id_of(1), id_of(2), id_of(3)});
    CHECK(j.copy(j.problems).empty());
    CHECK(in.handled() == 3);
    CHECK(r.s->count(table::incoming) == 0);
}
