#include "session/nagle_governor.h"

#include <algorithm>

namespace xymqtt::detail {

nagle_governor::nagle_governor(settings s) : settings_(s), thread_([this] { run(); }) {}

nagle_governor::~nagle_governor() {
    {
        std::lock_guard<std::mutex> g(mu_);
        stop_ = true;
        if (nagle_) socket_.set_nodelay(true);
    }
    cv_.notify_all();
    thread_.join();
}

void nagle_governor::attach(peer_socket s) {
    std::lock_guard<std::mutex> g(mu_);
    socket_ = std::move(s);
    socket_.set_nodelay(true);
    nagle_ = false;
    streaming_ = false;
}

void nagle_governor::detach() {
    std::lock_guard<std::mutex> g(mu_);
    if (nagle_) socket_.set_nodelay(true);  // a close still sends its DISCONNECT at once
    socket_ = peer_socket();
    nagle_ = false;
    streaming_ = false;
}

void nagle_governor::on_message() {
    if (streaming_.load(std::memory_order_relaxed)) {
        arrivals_.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - window_start_ >= settings_.tick) {
        window_start_ = now;
        window_count_ = 0;
    }
    if (++window_count_ >= settings_.on_at) {
        window_count_ = 0;
        start_stream();
    }
}

void nagle_governor::start_stream() {
    {
        std::lock_guard<std::mutex> g(mu_);
        if (!socket_ || nagle_ || stop_ || !socket_.set_nodelay(false)) return;
        nagle_ = true;
        ++streams_;
        arrivals_ = 0;
        streaming_ = true;
    }
    cv_.notify_all();  // the governor ticks while the stream lasts
}

bool nagle_governor::nagle() const {
    std::lock_guard<std::mutex> g(mu_);
    return nagle_;
}

std::uint64_t nagle_governor::streams() const {
    std::lock_guard<std::mutex> g(mu_);
    return streams_;
}

void nagle_governor::run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
        if (!nagle_) {
            cv_.wait(lk, [&] { return stop_ || nagle_; });  // no ticks outside a stream
            continue;
        }
        const auto start = std::chrono::steady_clock::now();
        cv_.wait_for(lk, settings_.tick, [&] { return stop_ || !nagle_; });
        if (stop_ || !nagle_) continue;
        const unsigned n = arrivals_.exchange(0);
        // A tick this thread was scheduled late for counts as the ticks it spans: a rate, not a count.
        const double ticks = std::max(1.0, std::chrono::duration<double>(std::chrono::steady_clock::now() - start) /
                                               settings_.tick);
        if (n < settings_.off_below * ticks) {
            socket_.set_nodelay(true);  // also sends what Nagle holds
            nagle_ = false;
            streaming_ = false;
        }
    }
}

}  // namespace xymqtt::detail
