// A fixed set of threads that run jobs in the order they were submitted: the threads of a command served
// with a concurrency above 1 (commands.cpp). The inbox lane bounds what is submitted, so the queue holds
// at most one job per thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace xymqtt::detail {

class worker_pool : public std::enable_shared_from_this<worker_pool> {
public:
    /// Starts `threads` threads, each running `on_start` first (a thread-local mark, for instance).
    static std::shared_ptr<worker_pool> start(std::size_t threads, std::function<void()> on_start);

    /// Queues `job`. @return false once the pool is stopping: the job will not run.
    bool submit(std::function<void()> job);

    /// Stops taking jobs, drops those not started, and joins the threads once their running jobs end.
    /// From one of the pool's own threads (a job that closes its client) that thread is left to end by
    /// itself; wait_ended() waits for it.
    void stop();

    /// Waits until every thread of the pool has ended.
    void wait_ended();

    /// @return whether every thread of the pool has ended (after stop()).
    bool ended() const;

    /// @return whether the calling thread is one of this pool's.
    bool owns_this_thread() const;

private:
    worker_pool() = default;
    void run(const std::function<void()>& on_start);

    mutable std::mutex mu_;
    std::condition_variable cv_, ended_cv_;
    std::deque<std::function<void()>> jobs_;
    std::vector<std::thread> threads_;
    std::size_t live_ = 0;
    bool stopping_ = false;
};

}  // namespace xymqtt::detail
