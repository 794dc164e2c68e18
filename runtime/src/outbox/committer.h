// Group commit: every batch queued while the previous commit was syncing goes into a single transaction,
// so N concurrent writers pay for one fsync instead of N. A writer thread commits queued batches; a caller
// of `commit` that finds no commit running commits on its own thread instead, taking the queued batches
// along (leader/follower, as LevelDB's writers do), which saves two thread hand-offs per synced commit.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "xymqtt/store.h"

namespace xymqtt::detail {

/// How soon a batch must be committed.
enum class urgency : std::uint8_t {
    now,      ///< Starts a commit at once (with whatever else is queued).
    /// While `now` batches keep coming, joins the next one (waiting at most `linger`); otherwise commits at
    /// once. For writes whose only cost of delay is latency, with a caller waiting for them.
    linger,
    /// Joins the next commit, or commits `linger` after it was queued. For writes nobody waits for (a lost
    /// one only costs a duplicate after a crash): the writer wakes once per `linger`, not once per write.
    background,
};

class committer {
public:
    /// Called once the batch is durable (nullptr) or has failed: on the writer thread, or on a caller of
    /// `commit` that made the commit itself (see commit).
    using done_fn = std::function<void(std::exception_ptr)>;

    /// Most batches queued before `submit` blocks.
    static constexpr std::size_t max_queued = 4096;
    /// Most bytes queued before `submit` blocks: ids and records, plus `op_overhead` per write for what
    /// holds them. A sync takes ~0.1 ms; 2 MiB is far more than a producer fills meanwhile.
    static constexpr std::size_t max_queued_bytes = std::size_t(2) << 20;
    static constexpr std::size_t op_overhead = 256;

    /// @param linger how long lingering and background batches may wait for an urgent one to carry them
    explicit committer(store& s, std::chrono::microseconds linger = std::chrono::milliseconds(2));
    ~committer();
    committer(const committer&) = delete;
    committer& operator=(const committer&) = delete;

    /// Queues `ops`; `done` runs after the commit (see done_fn). Batches commit in FIFO order.
    /// Blocks while `max_queued` batches or `max_queued_bytes` of records wait (a batch is always taken when
    /// nothing waits), so a fast producer cannot pile up memory: the queue only has to cover one sync.
    void submit(std::vector<write_op> ops, done_fn done, urgency u = urgency::now);
    /// Commits `ops` and waits until they are durable. With urgency::now and no commit running, commits on
    /// the calling thread, together with the queued batches, whose `done` then run on this thread too: so
    /// the caller must hold no lock that a `done` takes. @throw what the store threw.
    void commit(std::vector<write_op> ops, urgency u = urgency::now);
    /// Commits what is queued, then stops the writer thread. Later submissions fail with client_closed.
    void stop();
    /// @return whether the writer thread sleeps until a deadline (lingering or background batches wait).
    bool waiting_for_deadline() const {
        std::lock_guard<std::mutex> lk(mu_);
        return wake_at_ != std::chrono::steady_clock::time_point::max();
    }

private:
    struct job {
        std::vector<write_op> ops;
        done_fn done;
    };
    const std::chrono::microseconds linger_;
    std::size_t urgent_queued_ = 0, lingering_queued_ = 0, background_queued_ = 0;
    std::chrono::steady_clock::time_point oldest_background_{};  // when the first queued background batch came
    // When urgent writes flow (arrivals), lingering writes wait for the next one; when they do not
    // (a backlog being worked off), waiting would only add latency.
    std::chrono::steady_clock::time_point last_urgent_{};
    void run();
    /// Takes every queued batch for a commit about to start (`urgent`: it includes an urgent one) and
    /// marks a commit running. Called with mu_ held.
    std::vector<job> take_queue(bool urgent);
    /// Commits the batches together, or one by one if that fails, and reports each to its `done`.
    void commit_jobs(std::vector<job>& jobs, std::vector<write_op>& scratch);

    store& store_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<job> queue_;
    std::condition_variable room_cv_;
    bool idle_ = false;  // the writer sleeps until woken (no linger running): every submit wakes it
    // When the writer sleeps until a deadline, that deadline: a lingering batch due earlier wakes it.
    std::chrono::steady_clock::time_point wake_at_ = std::chrono::steady_clock::time_point::max();
    // A commit is running (on the writer thread or a leading caller): no other may start, so batches keep
    // their FIFO order. idle_cv_ tells stop() when a leading caller is done with the store.
    bool committing_ = false;
    bool lead_waiter_ = false;  // the writer waits for a leading caller's commit to end
    std::condition_variable idle_cv_;
    std::size_t queued_bytes_ = 0;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace xymqtt::detail
