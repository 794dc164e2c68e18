#include "nagle_governor.h"

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
    {
        std::lock_guard<std::mutex> g(mu_);
        socket_ = std::move(s);
        socket_.set_nodelay(true);
        nagle_ = false;
        arrivals_ = 0;
    }
    cv_.notify_all();
}

void nagle_governor::detach() {
    std::lock_guard<std::mutex> g(mu_);
    if (nagle_) socket_.set_nodelay(true);  // a close still sends its DISCONNECT at once
    socket_ = peer_socket();
    nagle_ = false;
}

void nagle_governor::wake() {
    std::lock_guard<std::mutex> g(mu_);  // orders this wake-up after the check in run() or before its wait
    cv_.notify_all();
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
        if (!socket_ || (!nagle_ && arrivals_.load() == 0)) {
            // Nothing to govern until a message arrives: no ticks while the connection is quiet.
            idle_ = true;
            cv_.wait(lk, [&] { return stop_ || (socket_ && arrivals_.load() > 0); });
            idle_ = false;
            continue;
        }
        const auto start = std::chrono::steady_clock::now();
        cv_.wait_for(lk, settings_.tick, [&] { return stop_; });
        if (stop_ || !socket_) continue;
        const unsigned n = arrivals_.exchange(0);
        // A tick this thread was scheduled late for counts as the ticks it spans: a rate, not a count.
        const double ticks = std::max(1.0, std::chrono::duration<double>(std::chrono::steady_clock::now() - start) /
                                               settings_.tick);
        if (!nagle_ && n >= settings_.on_at * ticks) {
            nagle_ = socket_.set_nodelay(false);
            streams_ += nagle_;
        } else if (nagle_ && n < settings_.off_below * ticks) {
            socket_.set_nodelay(true);  // also sends what Nagle holds
            nagle_ = false;
        }
    }
}

}  // namespace xymqtt::detail
