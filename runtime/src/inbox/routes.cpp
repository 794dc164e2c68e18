#include "inbox/routes.h"

#include <algorithm>

#include "xymqtt/topic.h"

namespace xymqtt::detail {

std::uint32_t subscription_identifier(const std::string& filter) {
    std::uint32_t h = 2166136261u;  // FNV-1a
    for (unsigned char c : filter) h = (h ^ c) * 16777619u;
    return h % 268435455u + 1;
}

std::vector<std::string> routes::lanes_for(const std::string& topic, const std::vector<std::uint32_t>& sub_ids) const {
    std::vector<std::string> matching, named;
    for (const auto& [f, l] : lanes_) {
        if (l->stopping || !topic_matches(f, topic)) continue;
        matching.push_back(f);
        if (std::find(sub_ids.begin(), sub_ids.end(), subscription_identifier(f)) != sub_ids.end()) named.push_back(f);
    }
    // A copy that names none of ours was sent for a subscription made before identifiers, or since replaced.
    if (!named.empty()) return named;
    if (matching.empty()) matching.push_back("");
    return matching;
}

std::shared_ptr<lane> routes::route(const std::string& id, stored_message rec) {
    auto it = lanes_.find(rec.lane);
    if (it != lanes_.end() && !it->second->stopping) {
        it->second->queue.emplace(id, std::move(rec));
        return it->second;
    }
    parked_.emplace(id, std::move(rec));
    return nullptr;
}

lane* routes::find(const std::string& filter) const {
    auto it = lanes_.find(filter);
    return it == lanes_.end() || it->second->stopping ? nullptr : it->second.get();
}

std::pair<std::shared_ptr<lane>, std::vector<write_op>> routes::open(const std::string& filter, unsigned concurrency) {
    if (auto old = lanes_.find(filter); old != lanes_.end()) retired_.push_back(std::move(old->second));
    auto l = std::make_shared<lane>();
    l->filter = filter;
    l->concurrency = std::max(1u, concurrency);
    lanes_[filter] = l;
    std::vector<write_op> relabel;
    for (auto it = parked_.begin(); it != parked_.end();) {
        auto& rec = it->second;
        if (rec.lane == filter || (rec.lane.empty() && topic_matches(filter, rec.topic))) {
            if (rec.lane.empty()) {
                rec.lane = filter;
                relabel.push_back({table::incoming, it->first, encode_record(rec)});
            }
            l->queue.emplace(it->first, std::move(rec));
            it = parked_.erase(it);
        } else {
            ++it;
        }
    }
    return {std::move(l), std::move(relabel)};
}

void routes::add_handler(subscription_id id, lane& l, lane_handler handler) {
    l.handlers.emplace(id, std::move(handler));
    filter_of_[id] = l.filter;
}

std::optional<routes::removed> routes::remove_handler(subscription_id id) {
    auto it = filter_of_.find(id);
    if (it == filter_of_.end()) return std::nullopt;
    removed out{it->second};
    filter_of_.erase(it);
    lane* l = find(out.filter);
    if (!l) return out;
    l->handlers.erase(id);
    if (!l->handlers.empty()) return out;
    l->stopping = true;
    for (auto q = l->queue.begin(); q != l->queue.end();) {
        if (q->first == l->running || l->working.count(q->first)) {
            ++q;  // at work: stays until done or released
        } else {
            parked_.emplace(q->first, std::move(q->second));
            q = l->queue.erase(q);
        }
    }
    out.stopped = l;
    return out;
}

std::vector<subscription_id> routes::handlers_of(const std::string& filter) const {
    std::vector<subscription_id> out;
    for (const auto& [id, f] : filter_of_)
        if (f == filter) out.push_back(id);
    return out;
}

std::shared_ptr<lane> routes::release(lane& l, const std::string& id) {
    if (l.running == id) l.running.clear();
    if (!l.stopping) return nullptr;
    auto it = l.queue.find(id);
    if (it == l.queue.end() || l.working.count(id)) return nullptr;
    stored_message rec = std::move(it->second);
    l.queue.erase(it);
    return route(id, std::move(rec));
}

void routes::erase(const std::string& id) {
    for (auto& [f, l] : lanes_) l->queue.erase(id);
    for (auto& l : retired_) l->queue.erase(id);
    parked_.erase(id);
}

std::vector<std::string> routes::live_filters() const {
    std::vector<std::string> out;
    for (const auto& [f, l] : lanes_)
        if (!l->stopping) out.push_back(f);
    return out;
}

void routes::reap_retired() {
    for (auto it = retired_.begin(); it != retired_.end();) {
        if ((*it)->finished && (*it)->thread.joinable() && (*it)->thread.get_id() != std::this_thread::get_id()) {
            (*it)->thread.join();
            it = retired_.erase(it);
        } else {
            ++it;
        }
    }
}

void routes::for_each(const std::function<void(lane&)>& f) const {
    for (const auto& [filter, l] : lanes_) f(*l);
    for (const auto& l : retired_) f(*l);
}

}  // namespace xymqtt::detail
