#include "session/stuck_flows.h"

#include <utility>

namespace xymqtt::detail {

void stuck_flows::restart() {
    strikes_ = 0;
    suspects_.clear();
}

void stuck_flows::connected(std::map<int, std::size_t> flows, std::uint64_t completed, clock::time_point now) {
    if (flows.empty() || completed != completed_at_) restart();
    up_ = !flows.empty();
    flows_ = std::move(flows);
    connected_at_ = now;
    completed_at_ = completed;
}

void stuck_flows::lost(std::uint64_t completed, clock::time_point now) {
    if (!up_) return;
    up_ = false;
    if (completed != completed_at_ || now - connected_at_ > settings_.within) {
        completed_at_ = completed;
        return restart();
    }
    if (strikes_ == 0) {
        suspects_ = flows_;
        first_strike_ = now;
    } else {
        for (auto it = suspects_.begin(); it != suspects_.end();)
            it = flows_.count(it->first) ? std::next(it) : suspects_.erase(it);
        if (suspects_.empty()) {  // a different set of flows each time: nothing in common to blame
            suspects_ = flows_;
            first_strike_ = now;
            strikes_ = 0;
        }
    }
    ++strikes_;
    last_strike_ = now;
}

std::optional<int> stuck_flows::take() {
    if (strikes_ < settings_.strikes || suspects_.empty() || last_strike_ - first_strike_ < settings_.patience)
        return std::nullopt;
    auto largest = suspects_.begin();
    for (auto it = suspects_.begin(); it != suspects_.end(); ++it)
        if (it->second > largest->second) largest = it;
    const int id = largest->first;
    restart();
    return id;
}

}  // namespace xymqtt::detail
