// Paho's own persistence (`mqtt::iclient_persistence`) kept in the store.
#pragma once

#include <mqtt/iclient_persistence.h>

#include <functional>
#include <string>

#include "xymqtt/store.h"

namespace xymqtt::detail {

/// Keeps Paho's records in the store's paho area, so that after a crash Paho knows which QoS 2 messages
/// it already received (`r-`, `r5-`) and answers the broker's resends without delivering them twice.
/// Outbound records (`s-`, `sc-`, `c-` and their v5 forms) are dropped when the client starts
/// (purge_outbound): the outbox is the source of truth for outgoing messages and re-sends them after a
/// restart; letting Paho resend its copy too would send them twice.
///
/// Paho ignores many persistence errors (a full store silently makes it non-persistent), so every
/// failure is also reported through `on_error` before it is returned to Paho.
class paho_persistence : public mqtt::iclient_persistence {
public:
    /// @param sync_inbound sync each inbound record to disk: needed under MQTT 3.1.1 with fsync
    ///        durability, where Paho delivers at PUBREL and the broker does not resend the PUBLISH.
    paho_persistence(paho_records& records, bool sync_inbound, std::function<void(const std::string&)> on_error);

    void open(const mqtt::string& client_id, const mqtt::string& server_uri) override;
    void close() override;
    void clear() override;
    bool contains_key(const mqtt::string& key) override;
    mqtt::string_collection keys() const override;
    void put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) override;
    mqtt::string get(const mqtt::string& key) const override;
    void remove(const mqtt::string& key) override;

    /// @return true for the records of outgoing messages and commands.
    static bool is_outbound(const std::string& key);
    /// Removes Paho's outbound records; call before Paho restores its state.
    static void purge_outbound(paho_records& records);

private:
    template <class F>
    auto guarded(const char* what, const std::string& key, F&& f) const -> decltype(f());

    paho_records& records_;
    bool sync_inbound_;
    std::function<void(const std::string&)> on_error_;
};

}  // namespace xymqtt::detail
