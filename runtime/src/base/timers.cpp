#include "base/timers.h"

#include <vector>

namespace xymqtt::detail {

timers::timers() : thread_([this] { loop(); }) {}

timers::~timers() { stop(); }

void timers::schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;
    due_.emplace(at, std::move(fn));
    cv_.notify_one();
}

void timers::stop() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stopping_ = true;
        due_.clear();
        cv_.notify_all();
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void timers::loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stopping_) {
        if (due_.empty())
            cv_.wait(lk);
        else
            cv_.wait_until(lk, due_.begin()->first);
        if (stopping_) break;
        const auto now = std::chrono::steady_clock::now();
        std::vector<std::function<void()>> run;
        while (!due_.empty() && due_.begin()->first <= now) {
            run.push_back(std::move(due_.begin()->second));
            due_.erase(due_.begin());
        }
        lk.unlock();
        for (auto& f : run) f();
        lk.lock();
    }
}

}  // namespace xymqtt::detail
