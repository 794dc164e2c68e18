#include "paho_persistence.h"

#include <mqtt/exception.h>

#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>

namespace xymqtt::detail {

paho_persistence::paho_persistence(paho_records& records, bool sync_inbound,
                                   std::function<void(const std::string&)> on_error)
    : records_(records), sync_inbound_(sync_inbound), on_error_(std::move(on_error)) {}

namespace {

// Paho's queued commands ("c-", "c5-"). They must be stored: Paho 1.3 frees a queued publish's payload
// once its command is persisted and reads it back (pget) just before sending it.
bool is_command(const std::string& key) { return key.rfind("c-", 0) == 0 || key.rfind("c5-", 0) == 0; }

// @return the packet id of an outbound publish record ("s-12", "s5-12", "sc-12", "sc5-12"), or -1.
int outbound_packet_id(const std::string& key, bool publish_only) {
    for (const char* p : {"s-", "s5-", "sc-", "sc5-"}) {
        const std::string prefix = p;
        if (publish_only && prefix.rfind("sc", 0) == 0) continue;
        if (key.rfind(prefix, 0) == 0) return std::atoi(key.c_str() + prefix.size());
    }
    return -1;
}

// The topic and payload of an MQTT 5 QoS 1/2 PUBLISH as Paho records it (fixed header, remaining length,
// topic, packet id, properties, payload), or nothing if it is not one.
std::optional<std::pair<std::string_view, std::string_view>> publish_content(std::string_view rec) {
    auto varint = [&](std::size_t& at) -> std::optional<std::size_t> {
        std::size_t v = 0;
        for (int shift = 0; shift < 28 && at < rec.size(); shift += 7) {
            const auto b = static_cast<unsigned char>(rec[at++]);
            v |= std::size_t(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        return std::nullopt;
    };
    std::size_t at = 1;
    if (!varint(at) || at + 2 > rec.size()) return std::nullopt;
    const std::size_t topic_len = (std::size_t(static_cast<unsigned char>(rec[at])) << 8) | static_cast<unsigned char>(rec[at + 1]);
    at += 2;
    if (at + topic_len + 2 > rec.size()) return std::nullopt;
    const auto topic = rec.substr(at, topic_len);
    at += topic_len + 2;  // and the packet id
    const auto props = varint(at);
    if (!props || at + *props > rec.size()) return std::nullopt;
    return std::make_pair(topic, rec.substr(at + *props));
}

// Whether a PUBLISH arriving under a packet id is a resend of the one recorded under it: DUP set, and the
// same topic and payload. Anything else is a new message, and the record is stale.
bool resend_of(const std::string& arriving, const std::string& recorded) {
    if (arriving.empty() || !(static_cast<unsigned char>(arriving[0]) & 0x08)) return false;
    const auto a = publish_content(arriving), r = publish_content(recorded);
    return a && r && *a == *r;
}

}  // namespace

void paho_persistence::purge_commands(paho_records& records) {
    for (const auto& k : records.keys())
        if (is_command(k)) records.remove(k);
}

void paho_persistence::release_inbound(int packet_id) {
    const std::string key = "r5-" + std::to_string(packet_id);
    std::string value;
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        auto it = held_.find(key);
        if (it == held_.end()) return;
        value = std::move(it->second);
        held_.erase(it);
    }
    guarded("put", key, [&] { records_.put(key, value, false); });
}

void paho_persistence::refuse_inbound(int packet_id) {
    const auto id = std::to_string(packet_id);
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        held_.erase("r5-" + id);
        kept_.insert("r-" + id);
    }
    // Paho delivered it, so it had no record of this id in memory: a stored one is stale.
    guarded("remove", "r5-" + id, [&] { records_.remove("r5-" + id); });
}

void paho_persistence::map_packet(int packet_id, std::uint64_t seq) {
    const std::string key = "x-" + std::to_string(packet_id);
    guarded("put", key, [&] { records_.put(key, std::to_string(seq), false); });
}

bool paho_persistence::has_outbound() const {
    for (const auto& k : records_.keys())
        if (outbound_packet_id(k, false) >= 0) return true;
    return false;
}

std::map<int, std::uint64_t> paho_persistence::resumable() const {
    std::map<int, std::uint64_t> out;
    for (const auto& k : records_.keys()) {
        const int id = outbound_packet_id(k, false);
        if (id < 0) continue;
        if (auto v = records_.get("x-" + std::to_string(id))) out[id] = std::strtoull(v->c_str(), nullptr, 10);
    }
    return out;
}

template <class F>
auto paho_persistence::guarded(const char* what, const std::string& key, F&& f) const -> decltype(f()) {
    try {
        return f();
    } catch (const std::exception& e) {
        if (on_error_) on_error_(std::string("Paho persistence ") + what + " " + key + ": " + e.what());
        throw mqtt::persistence_exception();
    }
}

void paho_persistence::open(const mqtt::string&, const mqtt::string&) {}
void paho_persistence::close() {}

void paho_persistence::clear() {
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        held_.clear();
        kept_.clear();
    }
    guarded("clear", "", [&] { records_.clear(); });
}

bool paho_persistence::contains_key(const mqtt::string& key) {
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        if (held_.count(key)) return true;
    }
    return guarded("contains", key, [&] { return records_.get(key).has_value(); });
}

mqtt::string_collection paho_persistence::keys() const {
    return guarded("keys", "", [&] {
        mqtt::string_collection out;
        for (const auto& k : records_.keys()) out.push_back(k);
        std::lock_guard<std::mutex> lk(held_mu_);
        for (const auto& [k, v] : held_) out.push_back(k);
        return out;
    });
}

void paho_persistence::put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) {
    std::string value;
    for (const auto& b : bufs) value.append(b.data(), b.size());
    if (key.rfind("r5-", 0) == 0) {
        // Held until the inbox commit (release_inbound), unless a record under this id is stale: then the
        // arriving message is new, and Paho, which holds the id, would drop it (see the class comment).
        std::optional<std::string> recorded;
        {
            std::lock_guard<std::mutex> lk(held_mu_);
            auto it = held_.find(key);
            if (it != held_.end()) recorded = it->second;
        }
        if (!recorded) recorded = guarded("get", key, [&] { return records_.get(key); });
        {
            std::lock_guard<std::mutex> lk(held_mu_);
            if (!recorded || resend_of(value, *recorded)) {
                held_[key] = std::move(value);
                return;
            }
            held_.erase(key);
        }
        guarded("remove", key, [&] { records_.remove(key); });
        if (on_stale_) on_stale_(std::atoi(key.c_str() + 3));
        return;
    }
    if (key.rfind("r-", 0) == 0) {
        std::lock_guard<std::mutex> lk(held_mu_);
        kept_.erase(key);  // a new flow under this packet id
    }
    const bool inbound = key.rfind("r-", 0) == 0 || key.rfind("r5-", 0) == 0;
    guarded("put", key, [&] { records_.put(key, value, sync_inbound_ && inbound); });
}

mqtt::string paho_persistence::get(const mqtt::string& key) const {
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        auto it = held_.find(key);
        if (it != held_.end()) return it->second;
    }
    // A missing key is Paho asking, not a storage failure: no error report for it.
    auto v = guarded("get", key, [&] { return records_.get(key); });
    if (!v) throw mqtt::persistence_exception();
    return *v;
}

void paho_persistence::remove(const mqtt::string& key) {
    {
        std::lock_guard<std::mutex> lk(held_mu_);
        held_.erase(key);  // and the stored copy too, if an earlier copy was released (a DUP resend)
        if (kept_.erase(key)) return;  // refused: the next client delivers it at the resent PUBREL
    }
    guarded("remove", key, [&] { records_.remove(key); });
    const int id = outbound_packet_id(key, true);
    if (id >= 0) {
        // Paho removes the publish record when the QoS 2 flow ends (PUBCOMP, or a refusing PUBREC),
        // and when the broker has no session (the client ignores removals during a connect).
        guarded("remove", key, [&] { records_.remove("x-" + std::to_string(id)); });
        if (on_complete_) on_complete_(id);
    }
}

}  // namespace xymqtt::detail
