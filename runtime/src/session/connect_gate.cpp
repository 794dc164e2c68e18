#include "session/connect_gate.h"

namespace xymqtt::detail {

connect_gate& connect_gate::process() {
    static auto* gate = new connect_gate;  // never destroyed: clients may outlive static destruction
    return *gate;
}

void connect_gate::join(member* m) {
    std::lock_guard<std::mutex> lk(mu_);
    members_.insert(m);
}

void connect_gate::leave(member* m) {
    open(m);
    std::lock_guard<std::mutex> lk(mu_);
    members_.erase(m);
    cv_.notify_all();
}

std::size_t connect_gate::close(member* self, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return holder_.load() == nullptr || holder_.load() == self; });
    holder_ = self;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t left = 0;
    auto others_drained = [&] {
        left = 0;
        for (auto* m : members_)
            if (m != self && !m->drained()) ++left;
        return left == 0;
    };
    cv_.wait_until(lk, deadline, others_drained);
    return left;
}

void connect_gate::open(member* self) {
    std::set<member*> others;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (holder_.load() != self) return;
        holder_ = nullptr;
        others = members_;
        cv_.notify_all();  // the next client waiting to connect
        // Resumed with the gate's mutex held, so that no member leaves meanwhile (lock order: gate, member).
        for (auto* m : others)
            if (m != self) m->resume();
    }
}

void connect_gate::notify() {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
}

}  // namespace xymqtt::detail
