// The publishes the outbox holds: how many are stored and not yet completed (or dead-lettered), and the
// promises that wait for them.
//
//  - A promise is handed out once (take), to whichever thread decided its publish's outcome; fail_all
//    takes the rest.
//  - wait_empty returns as soon as the count reaches 0.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>

namespace xymqtt::detail {

class pending_publishes {
public:
    using promise = std::shared_ptr<std::promise<void>>;

    /// Counts `n` more publishes.
    void add(std::size_t n) {
        std::lock_guard<std::mutex> lk(mu_);
        count_ += n;
    }
    /// Counts publish `seq`, and `prom` (if set) waits for it.
    void add(std::uint64_t seq, promise prom) {
        std::lock_guard<std::mutex> lk(mu_);
        if (prom) promises_[seq] = std::move(prom);
        ++count_;
    }
    /// @return the promise that waits for `seq`, once; nullptr if none (or taken already).
    promise take(std::uint64_t seq) {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = promises_.find(seq);
        if (it == promises_.end()) return nullptr;
        auto p = std::move(it->second);
        promises_.erase(it);
        return p;
    }
    /// One publish less (completed, dead-lettered, or not stored).
    void done() {
        std::lock_guard<std::mutex> lk(mu_);
        --count_;
        cv_.notify_all();
    }
    std::size_t size() const {
        std::lock_guard<std::mutex> lk(mu_);
        return count_;
    }
    /// @return whether the count reached 0 within `timeout`.
    bool wait_empty(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return count_ == 0; });
    }
    /// @return every promise still waiting (taken).
    std::map<std::uint64_t, promise> take_all() {
        std::lock_guard<std::mutex> lk(mu_);
        std::map<std::uint64_t, promise> out;
        out.swap(promises_);
        return out;
    }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::uint64_t, promise> promises_;
    std::size_t count_ = 0;
};

}  // namespace xymqtt::detail
