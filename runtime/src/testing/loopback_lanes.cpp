#include "testing/loopback_lanes.h"

#include <algorithm>
#include <cstdio>

#include "xymqtt/topic.h"

namespace xymqtt::detail {

namespace {

bool is_shared_filter(const std::string& f) { return f.rfind("$share/", 0) == 0; }

}  // namespace

bool loopback_lanes::accept(const testing::published_message& pm, time_point now, std::int64_t wall_ms) {
    bool matched = false;
    ++stats_.published;
    published_.push_back(pm);
    if (pm.retain) {
        if (pm.payload.empty())
            retained_.erase(pm.topic);
        else
            retained_[pm.topic] = pm;
    }
    std::map<std::string, std::vector<std::shared_ptr<lane>>> groups;
    for (const auto& l : lanes_) {
        if (!topic_matches(l->filter, pm.topic)) continue;
        if (l->shared) {
            groups[l->filter].push_back(l);
        } else {
            enqueue(*l, pm, now, wall_ms);
            matched = true;
        }
    }
    for (auto& g : groups) {
        auto& next = round_robin_[g.first];
        enqueue(*g.second[next % g.second.size()], pm, now, wall_ms);
        next = (next + 1) % g.second.size();
        matched = true;
    }
    return matched;
}

void loopback_lanes::enqueue(lane& l, const testing::published_message& pm, time_point now, std::int64_t wall_ms) {
    delivery d;
    d.seq = next_seq_++;
    d.due = now;
    d.msg.topic = pm.topic;
    d.msg.payload = pm.payload;
    d.msg.props = pm.props;
    char id[24];
    std::snprintf(id, sizeof id, "%020llu", static_cast<unsigned long long>(++next_message_id_));
    d.msg.id = id;
    d.msg.attempt = 1;
    d.msg.received_at_ms = wall_ms;
    l.queue.push_back(std::move(d));
}

void loopback_lanes::add_handler(const std::string& filter, subscription_id id, handler_kind kind,
                                 std::shared_ptr<message_handler> fn, time_point now, std::int64_t wall_ms) {
    std::shared_ptr<lane> target;
    const bool shared = is_shared_filter(filter);
    if (!shared) {
        for (const auto& l : lanes_)
            if (!l->shared && l->filter == filter) target = l;
    }
    if (!target) {
        target = std::make_shared<lane>();
        target->filter = filter;
        target->shared = shared;
        lanes_.push_back(target);
        auto park = parked_.find(filter);
        if (park != parked_.end()) {
            target->queue = std::move(park->second);
            parked_.erase(park);
        }
        if (!shared)  // a new SUBSCRIBE: the broker sends the matching retained messages
            for (const auto& kv : retained_)
                if (topic_matches(filter, kv.first)) enqueue(*target, kv.second, now, wall_ms);
    }
    target->handlers.push_back(handler_entry{id, kind, std::move(fn)});
    regs_[id].push_back(target);
}

void loopback_lanes::remove_handler(subscription_id id) {
    auto it = regs_.find(id);
    if (it == regs_.end()) return;
    for (const auto& l : it->second) {
        auto& hs = l->handlers;
        hs.erase(std::remove_if(hs.begin(), hs.end(), [&](const handler_entry& h) { return h.id == id; }), hs.end());
        if (hs.empty() && !l->removed) {
            // The last handler: its deliveries wait (parked) for a new subscription of the filter.
            l->removed = true;
            auto& park = parked_[l->filter];
            for (auto& d : l->queue) park.push_back(std::move(d));
            l->queue.clear();
            lanes_.erase(std::remove(lanes_.begin(), lanes_.end(), l), lanes_.end());
        }
    }
    regs_.erase(it);
}

std::set<subscription_id> loopback_lanes::user_handlers_of(const std::string& filter) const {
    std::set<subscription_id> ids;
    for (const auto& l : lanes_)
        if (l->filter == filter)
            for (const auto& h : l->handlers)
                if (h.kind == handler_kind::user) ids.insert(h.id);
    return ids;
}

std::optional<subscription_id> loopback_lanes::sole_handler(const std::string& filter) const {
    for (const auto& l : lanes_)
        if (!l->shared && l->filter == filter && l->handlers.size() == 1) return l->handlers.front().id;
    return std::nullopt;
}

std::vector<std::pair<subscription_id, std::string>> loopback_lanes::handler_filters() const {
    std::vector<std::pair<subscription_id, std::string>> out;
    for (const auto& l : lanes_)
        for (const auto& h : l->handlers) out.emplace_back(h.id, l->filter);
    return out;
}

std::shared_ptr<loopback_lanes::lane> loopback_lanes::pick(time_point now, bool ignore_time,
                                                           const std::string* filter) const {
    std::shared_ptr<lane> best;
    for (const auto& l : lanes_) {
        if (l->busy || l->queue.empty()) continue;
        if (filter && l->filter != *filter) continue;
        if (!ignore_time && l->queue.front().due > now) continue;
        if (!best || l->queue.front().seq < best->queue.front().seq) best = l;
    }
    return best;
}

loopback_lanes::job loopback_lanes::claim(const std::shared_ptr<lane>& l) {
    job j{l, std::move(l->queue.front()), l->handlers};
    l->queue.pop_front();
    l->busy = true;
    ++running_;
    ++stats_.deliveries;
    return j;
}

loopback_lanes::verdict loopback_lanes::conclude(const job& j, const std::optional<std::string>& failure,
                                                 const std::optional<std::string>& undecodable,
                                                 const retry_policy& retry, time_point now) {
    verdict v;
    if (!undecodable && !failure) {
        ++stats_.handled;
        return v;
    }
    const bool out_of_attempts = retry.max_attempts != 0 && j.d.msg.attempt >= retry.max_attempts;
    if (undecodable || out_of_attempts) {
        v.what = verdict::dead;
        v.letter.msg = j.d.msg;
        v.letter.filter = j.l->filter;
        v.letter.reason = undecodable ? *undecodable
                                    : "gave up after " + std::to_string(j.d.msg.attempt) + " attempts: " + *failure;
        v.letter.undecodable = undecodable.has_value();
        dead_letters_.push_back(v.letter);
        ++stats_.dead_letters;
        return v;
    }
    v.what = verdict::retry;
    v.delay = retry.delay_after(j.d.msg.attempt);
    ++stats_.retries;
    delivery again = j.d;
    again.msg.attempt += 1;
    again.seq = next_seq_++;
    again.due = now + v.delay;
    if (!j.l->removed)
        j.l->queue.push_front(std::move(again));
    else
        parked_[j.l->filter].push_front(std::move(again));
    return v;
}

void loopback_lanes::release(const job& j) {
    j.l->busy = false;
    --running_;
}

bool loopback_lanes::idle() const {
    if (running_ != 0) return false;
    for (const auto& l : lanes_)
        if (!l->queue.empty()) return false;
    return true;
}

std::optional<loopback_lanes::time_point> loopback_lanes::next_ready() const {
    std::optional<time_point> at;
    for (const auto& l : lanes_)
        if (!l->busy && !l->queue.empty() && (!at || l->queue.front().due < *at)) at = l->queue.front().due;
    return at;
}

std::vector<testing::published_message> loopback_lanes::published(const std::string* topic) const {
    if (!topic) return published_;
    std::vector<testing::published_message> out;
    for (const auto& p : published_)
        if (p.topic == *topic) out.push_back(p);
    return out;
}

bool loopback_lanes::replay_dead_letter(const std::string& id, time_point now) {
    auto it = std::find_if(dead_letters_.begin(), dead_letters_.end(),
                           [&](const testing::dead_letter_record& d) { return d.msg.id == id; });
    if (it == dead_letters_.end()) return false;
    delivery d;
    d.msg = it->msg;
    d.msg.attempt = 1;
    d.seq = next_seq_++;
    d.due = now;
    auto l = std::find_if(lanes_.begin(), lanes_.end(), [&](const std::shared_ptr<lane>& x) { return x->filter == it->filter; });
    if (l != lanes_.end())
        (*l)->queue.push_back(std::move(d));
    else
        parked_[it->filter].push_back(std::move(d));
    dead_letters_.erase(it);
    return true;
}

bool loopback_lanes::purge_dead_letter(const std::string& id) {
    auto it = std::find_if(dead_letters_.begin(), dead_letters_.end(),
                           [&](const testing::dead_letter_record& d) { return d.msg.id == id; });
    if (it == dead_letters_.end()) return false;
    dead_letters_.erase(it);
    return true;
}

std::vector<std::string> loopback_lanes::filters() const {
    std::vector<std::string> out;
    for (const auto& l : lanes_)
        if (std::find(out.begin(), out.end(), l->filter) == out.end()) out.push_back(l->filter);
    return out;
}

testing::loopback_stats loopback_lanes::stats() const {
    testing::loopback_stats s = stats_;
    s.pending = running_;
    for (const auto& l : lanes_) s.pending += l->queue.size();
    return s;
}

}  // namespace xymqtt::detail
