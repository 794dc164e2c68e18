#include "paho_persistence.h"

#include <mqtt/exception.h>

namespace xymqtt::detail {

paho_persistence::paho_persistence(paho_records& records, bool sync_inbound,
                                   std::function<void(const std::string&)> on_error)
    : records_(records), sync_inbound_(sync_inbound), on_error_(std::move(on_error)) {}

bool paho_persistence::is_outbound(const std::string& key) {
    for (const char* p : {"s-", "sc-", "c-", "s5-", "sc5-", "c5-"})
        if (key.rfind(p, 0) == 0) return true;
    return false;
}

void paho_persistence::purge_outbound(paho_records& records) {
    for (const auto& k : records.keys())
        if (is_outbound(k)) records.remove(k);
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
    return guarded("contains", key, [&] { return records_.get(key).has_value(); });
}

mqtt::string_collection paho_persistence::keys() const {
    return guarded("keys", "", [&] {
        mqtt::string_collection out;
        for (const auto& k : records_.keys()) out.push_back(k);
        return out;
    });
}

void paho_persistence::put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) {
    std::string value;
    for (const auto& b : bufs) value.append(b.data(), b.size());
    const bool inbound = key.rfind("r-", 0) == 0 || key.rfind("r5-", 0) == 0;
    guarded("put", key, [&] { records_.put(key, value, sync_inbound_ && inbound); });
}

mqtt::string paho_persistence::get(const mqtt::string& key) const {
    // A missing key is Paho asking, not a storage failure: no error report for it.
    auto v = guarded("get", key, [&] { return records_.get(key); });
    if (!v) throw mqtt::persistence_exception();
    return *v;
}

void paho_persistence::remove(const mqtt::string& key) {
    guarded("remove", key, [&] { records_.remove(key); });
}

}  // namespace xymqtt::detail
