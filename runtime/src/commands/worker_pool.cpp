#include "commands/worker_pool.h"

#include <algorithm>

namespace xymqtt::detail {

std::shared_ptr<worker_pool> worker_pool::start(std::size_t threads, std::function<void()> on_start) {
    std::shared_ptr<worker_pool> pool(new worker_pool());
    std::lock_guard<std::mutex> lk(pool->mu_);
    pool->live_ = threads;
    for (std::size_t i = 0; i < threads; ++i)
        // Each thread holds the pool: a thread left to end by itself (see stop) still finds it.
        pool->threads_.emplace_back([pool, on_start] { pool->run(on_start); });
    return pool;
}

bool worker_pool::submit(std::function<void()> job) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (stopping_) return false;
        jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
}

void worker_pool::run(const std::function<void()>& on_start) {
    if (on_start) on_start();
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
        cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
        if (stopping_) break;
        auto job = std::move(jobs_.front());
        jobs_.pop_front();
        lk.unlock();
        job();  // jobs catch their own exceptions (commands.cpp)
        job = nullptr;
        lk.lock();
    }
    --live_;
    ended_cv_.notify_all();
}

void worker_pool::stop() {
    std::vector<std::thread> threads;
    {
        std::lock_guard<std::mutex> lk(mu_);
        stopping_ = true;
        jobs_.clear();
        threads.swap(threads_);
    }
    cv_.notify_all();
    for (auto& t : threads) {
        if (t.get_id() == std::this_thread::get_id())
            t.detach();
        else if (t.joinable())
            t.join();
    }
}

void worker_pool::wait_ended() {
    std::unique_lock<std::mutex> lk(mu_);
    ended_cv_.wait(lk, [&] { return live_ == 0; });
}

bool worker_pool::ended() const {
    std::lock_guard<std::mutex> lk(mu_);
    return stopping_ && live_ == 0;
}

bool worker_pool::owns_this_thread() const {
    std::lock_guard<std::mutex> lk(mu_);
    return std::any_of(threads_.begin(), threads_.end(),
                       [](const std::thread& t) { return t.get_id() == std::this_thread::get_id(); });
}

}  // namespace xymqtt::detail
