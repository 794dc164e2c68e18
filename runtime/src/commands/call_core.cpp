#include "commands/call_core.h"

#include <cstdio>
#include <random>

#include "xymqtt/transport.h"

namespace xymqtt::detail {

void running_call::on_cancel(std::function<void()> fn) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!cancelled_) {
            callbacks_.push_back(std::move(fn));
            return;
        }
    }
    if (fn) fn();
}

bool running_call::cancelled() const {
    std::lock_guard<std::mutex> lk(mu_);
    return cancelled_;
}

bool running_call::cancel() {
    std::vector<std::function<void()>> cbs;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (cancelled_ || finished_) return false;
        cancelled_ = true;
        cbs.swap(callbacks_);
    }
    for (auto& f : cbs) {
        if (!f) continue;
        try {
            f();
        } catch (...) {
            // A throwing on_cancel callback must not stop the others or the cancel itself.
        }
    }
    return true;
}

bool running_call::finish() {
    std::lock_guard<std::mutex> lk(mu_);
    finished_ = true;
    return !cancelled_;
}

bool invoke_expired(const message& invoke, std::int64_t now_ms) {
    return invoke.props.expiry_seconds &&
           invoke.received_at_ms + static_cast<std::int64_t>(*invoke.props.expiry_seconds) * 1000 < now_ms;
}

wire::outgoing expired_reject(wire_format format, const std::string& message_id) {
    return wire::encode_reject(format, message_id, 408, "request expired before it ran", "");
}

wire::outgoing undecodable_reject(const wire::undecodable_invoke& e) {
    return wire::encode_reject(e.format, e.message_id, 400, e.what(), "");
}

std::string format_message_id(std::uint64_t hi, std::uint64_t lo) {
    char buf[33];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(hi), static_cast<unsigned long long>(lo));
    return buf;
}

}  // namespace xymqtt::detail

namespace xymqtt {

std::string make_message_id() {
    thread_local std::mt19937_64 rng([] {
        std::random_device rd;
        std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd()};
        return std::mt19937_64(seq);
    }());
    const auto hi = rng();
    return detail::format_message_id(hi, rng());
}

}  // namespace xymqtt
