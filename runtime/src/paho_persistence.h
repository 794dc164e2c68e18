// Paho's own persistence (`mqtt::iclient_persistence`) kept in the store.
#pragma once

#include <mqtt/iclient_persistence.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "xymqtt/store.h"

namespace xymqtt::detail {

/// Keeps Paho's records in the store's paho area, so that a restarted (or re-created) Paho client resumes
/// its QoS 2 flows with the broker exactly where they stopped:
///  - inbound (`r-`, `r5-`): messages already received are not delivered twice;
///  - outbound (`s-`, `sc-`): publishes in flight are finished under their own packet ids. Dropping them
///    would leave the broker waiting for PUBRELs that never come, and those half-open flows count against
///    its receive maximum until it refuses the connection.
/// Queued commands (`c-`, `c5-`) are dropped before a client is created (purge_commands): those
/// publishes never left, and the outbox sends them again.
/// Each outbound flow is tied to its outbox record by a mapping record `x-<packet id>`, written by the
/// client after Paho accepted the publish (map_packet) and removed with the flow. When Paho removes
/// `s-<id>`/`s5-<id>` the flow is over and `on_complete(id)` is called.
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

    /// Removes Paho's queued commands; call before a Paho client restores its state.
    static void purge_commands(paho_records& records);
    /// Writes the held `r5-<packet_id>` record: call once the message is committed to the inbox.
    /// Paho writes that record when it reads the PUBLISH, before the message reaches the inbox; kept at
    /// once, a crash in between would make the restarted Paho acknowledge the broker's resend without
    /// delivering it (a loss). Held until the commit, the same crash only costs a redelivery.
    void release_inbound(int packet_id);
    /// Records that outbox record `seq` is in flight under `packet_id`.
    void map_packet(int packet_id, std::uint64_t seq);
    /// @return the outbox records whose flows Paho will resume, by packet id.
    std::map<int, std::uint64_t> resumable() const;
    /// Called (on Paho's threads) when the outbound flow of a packet id has ended.
    void on_complete(std::function<void(int packet_id)> fn) { on_complete_ = std::move(fn); }

private:
    template <class F>
    auto guarded(const char* what, const std::string& key, F&& f) const -> decltype(f());

    paho_records& records_;
    bool sync_inbound_;
    std::function<void(const std::string&)> on_error_;
    std::function<void(int)> on_complete_;
    mutable std::mutex held_mu_;
    std::map<std::string, std::string> held_;  // MQTT 5 inbound records not yet released
};

}  // namespace xymqtt::detail
