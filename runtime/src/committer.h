// Group commit: one writer thread turns every batch queued while the previous commit was syncing into
// a single transaction, so N concurrent writers pay for one fsync instead of N.
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
    /// Called on the writer thread once the batch is durable (nullptr) or has failed.
    using done_fn = std::function<void(std::exception_ptr)>;

    explicit committer(store& s);
    ~committer();
    committer(const committer&) = delete;
    committer& operator=(const committer&) = delete;

    /// Queues `ops`; `done` runs on the writer thread after the commit. Batches commit in FIFO order.
    /// Blocks while `max_queued` batches wait, so a fast producer cannot pile up memory.
    void submit(std::vector<write_op> ops, done_fn done, urgency u = urgency::now);
    /// Queues `ops` and waits until they are durable. @throw what the store threw.
    void commit(std::vector<write_op> ops, urgency u = urgency::now);
    /// Commits what is queued, then stops the writer thread. Later submissions fail with client_closed.
    void stop();

private:
    struct job {
        std::vector<write_op> ops;
        done_fn done;
    };
    static constexpr std::chrono::microseconds linger{2000};
    std::size_t urgent_queued_ = 0, lingering_queued_ = 0, background_queued_ = 0;
    std::chrono::steady_clock::time_point oldest_background_{};  // when the first queued background batch came
    // When urgent writes flow (arrivals), lingering writes wait for the next one; when they do not
    // (a backlog being worked off), waiting would only add latency.
    std::chrono::steady_clock::time_point last_urgent_{};
    void run();
    /// Commits the batches together, or one by one if that fails, and reports each to its `done`.
    void commit_jobs(std::vector<job>& jobs, std::vector<write_op>& scratch);

    store& store_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<job> queue_;
    std::condition_variable room_cv_;
    bool idle_ = false;  // the writer sleeps until woken (no linger running): every submit wakes it
    static constexpr std::size_t max_queued = 16384;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace xymqtt::detail
