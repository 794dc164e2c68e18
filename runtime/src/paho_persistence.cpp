#include "paho_persistence.h"

#include <mqtt/exception.h>

#include <cstdlib>

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

void paho_persistence::map_packet(int packet_id, std::uint64_t seq) {
    const std::string key = "x-" + std::to_string(packet_id);
    guarded("put", key, [&] { records_.put(key, std::to_string(seq), false); });
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
        std::lock_guard<std::mutex> lk(held_mu_);
        held_[key] = std::move(value);
        return;
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
        if (held_.erase(key)) return;  // never written
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
