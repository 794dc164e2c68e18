// Nagle's algorithm for the broker connection while messages stream in, TCP_NODELAY otherwise.
//
// Why: Paho writes every acknowledgement (PUBREC, PUBCOMP) with its own system call. With TCP_NODELAY each
// one becomes a segment and a wake-up of the broker; during a stream, Nagle's algorithm coalesces them
// (docs/benchmarks.md, F18). Outside a stream Nagle would hold a packet until the broker's delayed ACK,
// ~40 ms (a reply sent right after acknowledging the call), so it is turned on only when `on_at` messages
// arrive within one tick, and TCP_NODELAY, which sends whatever Nagle holds, is set again at the first
// tick with fewer than `off_below`.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "session/tcp_nodelay.h"

namespace xymqtt::detail {

class nagle_governor {
public:
    struct settings {
        std::chrono::microseconds tick{1000};
        unsigned on_at = 8;      ///< Arrivals within a tick that turn Nagle on.
        unsigned off_below = 4;  ///< Fewer arrivals in a tick turn it off again.
    };

    explicit nagle_governor(settings s);
    ~nagle_governor();  ///< Sets TCP_NODELAY again if the socket is still attached.
    nagle_governor(const nagle_governor&) = delete;
    nagle_governor& operator=(const nagle_governor&) = delete;

    /// Governs a new connection's socket, which starts with TCP_NODELAY set (replaces the previous one).
    void attach(peer_socket s);
    /// The connection is closing or gone: TCP_NODELAY again, and the socket is no longer touched.
    void detach();
    /// A message arrived. Called from one thread at a time (Paho's receive thread). Outside a stream it
    /// costs a clock read and wakes nothing, so sparse traffic pays no thread hand-off for it.
    void on_message();

    /// For tests: whether Nagle is on now, and how often it was turned on.
    bool nagle() const;
    std::uint64_t streams() const;

private:
    void start_stream();
    void run();

    const settings settings_;
    // Outside a stream, used by the arrival thread only.
    std::chrono::steady_clock::time_point window_start_{};
    unsigned window_count_ = 0;
    // In a stream: arrivals since the last tick.
    std::atomic<bool> streaming_{false};
    std::atomic<unsigned> arrivals_{0};

    mutable std::mutex mu_;
    std::condition_variable cv_;
    peer_socket socket_;
    bool nagle_ = false;  // what the socket has (guarded by mu_; streaming_ mirrors it for on_message)
    bool stop_ = false;
    std::uint64_t streams_ = 0;
    std::thread thread_;
};

}  // namespace xymqtt::detail
