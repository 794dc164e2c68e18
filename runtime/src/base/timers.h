// One thread that runs functions at given times: a client's call timeouts, resends of unanswered calls,
// refused publishes sent again, the purge of old command results.
//
//  - A function runs at its time or soon after, on the timers' thread, one at a time, in time order.
//  - stop() returns once the thread has ended; functions not yet due then never run, and later schedules
//    are dropped.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

namespace xymqtt::detail {

class timers {
public:
    timers();
    ~timers();
    timers(const timers&) = delete;
    timers& operator=(const timers&) = delete;

    /// Runs `fn` at `at` (at once if it is past).
    void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn);
    /// Ends the thread (waits for a function that runs); not from a function of these timers.
    void stop();

private:
    void loop();

    std::mutex mu_;
    std::condition_variable cv_;
    std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> due_;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace xymqtt::detail
