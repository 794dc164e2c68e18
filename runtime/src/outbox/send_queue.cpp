#include "outbox/send_queue.h"

#include <algorithm>

namespace xymqtt::detail {

void send_queue::add(std::uint64_t seq, record msg) {
    if (msg)
        in_memory_.emplace(seq, std::move(msg));
    else
        on_disk_.push_back(seq);
}

void send_queue::again(std::uint64_t seq, record msg) { again_[seq] = std::move(msg); }

bool send_queue::burst_ready() const {
    const std::size_t pending = waiting();
    if (pending == 0 || in_flight() >= window_) return false;
    const std::size_t burst = std::min(pending, std::max<std::size_t>(1, window_ / 2));
    return window_ - in_flight() >= burst;
}

std::vector<send_queue::item> send_queue::take(std::size_t max) {
    std::vector<item> out;
    while (out.size() < max && in_flight() < window_ && waiting() > 0) {
        item it;
        if (!again_.empty()) {
            it.seq = again_.begin()->first;
            it.msg = std::move(again_.begin()->second);
            again_.erase(again_.begin());
        } else if (!on_disk_.empty() && (in_memory_.empty() || on_disk_.front() < in_memory_.begin()->first)) {
            it.seq = on_disk_.front();
            on_disk_.pop_front();
        } else {
            it.seq = in_memory_.begin()->first;
            it.msg = std::move(in_memory_.begin()->second);
            in_memory_.erase(in_memory_.begin());
        }
        if (resumed_seqs_.count(it.seq)) continue;  // Paho is finishing it under its old packet id
        in_flight_[it.seq] = it.msg;
        out.push_back(std::move(it));
    }
    return out;
}

void send_queue::keep(std::uint64_t seq, record msg) {
    if (auto f = in_flight_.find(seq); f != in_flight_.end()) f->second = std::move(msg);
}

void send_queue::not_taken(std::uint64_t seq, record msg) {
    if (in_flight_.erase(seq)) again_[seq] = std::move(msg);
}

bool send_queue::finish(std::uint64_t seq) {
    if (!in_flight_.erase(seq) && !again_.erase(seq)) return false;
    refusals_.erase(seq);
    return true;
}

std::optional<send_queue::record> send_queue::take_back(std::uint64_t seq) {
    auto it = in_flight_.find(seq);
    if (it == in_flight_.end()) return std::nullopt;
    auto msg = std::move(it->second);
    in_flight_.erase(it);
    return msg;
}

void send_queue::new_client(const std::map<int, std::uint64_t>& resumable,
                            const std::function<bool(int, std::uint64_t, record)>& resumes) {
    for (auto& [seq, msg] : in_flight_) again_[seq] = std::move(msg);
    in_flight_.clear();
    // Flows the last client was resuming and did not finish (its connect failed or was cut) are in no
    // queue: sent again, unless the new client resumes them too. Dropped, they would never complete.
    for (const auto& [packet_id, seq] : resumed_) again_[seq] = nullptr;
    resumed_.clear();
    resumed_seqs_.clear();
    for (const auto& [packet_id, seq] : resumable) {
        // A resumed publish is in resumed_ only, so that it is never sent twice.
        auto a = again_.find(seq);
        auto m = in_memory_.find(seq);
        const bool d = on_disk_.contains(seq);
        if (a == again_.end() && m == in_memory_.end() && !d) continue;  // completed: a stale mapping
        if (!resumes(packet_id, seq, a != again_.end() ? a->second : m != in_memory_.end() ? m->second : nullptr))
            continue;  // sent again under a new packet id instead: at worst a duplicate
        if (a != again_.end()) again_.erase(a);
        if (m != in_memory_.end()) in_memory_.erase(m);
        if (d) on_disk_.erase(seq);
        resumed_[packet_id] = seq;
        resumed_seqs_.insert(seq);
    }
}

void send_queue::session_lost() {
    for (const auto& [packet_id, seq] : resumed_) again_[seq] = nullptr;
    resumed_.clear();
    resumed_seqs_.clear();
}

std::optional<std::uint64_t> send_queue::end_resumed(int packet_id) {
    auto it = resumed_.find(packet_id);
    if (it == resumed_.end()) return std::nullopt;
    const auto seq = it->second;
    resumed_.erase(it);
    resumed_seqs_.erase(seq);
    in_flight_[seq] = nullptr;
    return seq;
}

}  // namespace xymqtt::detail
