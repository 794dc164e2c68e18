// Helpers shared by the loopback tests.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "xymqtt/testing/loopback.h"

namespace loopback_test {

using namespace std::chrono_literals;
using xymqtt::testing::delivery_mode;
using xymqtt::testing::loopback;

/// Options for tests: short retry delays so threaded-mode retries are quick.
inline loopback::options options_for(delivery_mode m) {
    loopback::options o;
    o.mode = m;
    o.retry.initial = std::chrono::milliseconds(1);
    o.retry.cap = std::chrono::milliseconds(4);
    return o;
}

inline const char* mode_name(delivery_mode m) { return m == delivery_mode::manual ? "manual" : "threaded"; }

/// Runs (manual) or waits for (threaded) every queued delivery.
inline void settle(loopback& lb) { REQUIRE(lb.wait_idle(std::chrono::seconds(10))); }

/// A thread-safe list of what handlers saw, with a wait for a count.
template <class T>
class recorder {
public:
    void add(T v) {
        {
            std::lock_guard<std::mutex> lk(m_);
            items_.push_back(std::move(v));
        }
        cv_.notify_all();
    }
    std::vector<T> items() const {
        std::lock_guard<std::mutex> lk(m_);
        return items_;
    }
    std::size_t size() const {
        std::lock_guard<std::mutex> lk(m_);
        return items_.size();
    }
    /// @return true once at least `n` items were added (false after 10 s).
    bool wait_for_count(std::size_t n) const {
        std::unique_lock<std::mutex> lk(m_);
        return cv_.wait_for(lk, std::chrono::seconds(10), [&] { return items_.size() >= n; });
    }

private:
    mutable std::mutex m_;
    mutable std::condition_variable cv_;
    std::vector<T> items_;
};

/// A one-shot signal between threads.
class latch {
public:
    void open() {
        {
            std::lock_guard<std::mutex> lk(m_);
            open_ = true;
        }
        cv_.notify_all();
    }
    bool is_open() const {
        std::lock_guard<std::mutex> lk(m_);
        return open_;
    }
    /// @return true once opened (false after 10 s).
    bool wait() const {
        std::unique_lock<std::mutex> lk(m_);
        return cv_.wait_for(lk, std::chrono::seconds(10), [&] { return open_; });
    }

private:
    mutable std::mutex m_;
    mutable std::condition_variable cv_;
    bool open_ = false;
};

}  // namespace loopback_test
