// Paho's own persistence (`mqtt::iclient_persistence`) kept in the store.
#pragma once

#include <mqtt/iclient_persistence.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
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
/// Inbound records are held back where Paho would otherwise make a promise the inbox cannot keep:
///  - MQTT 5 (`r5-`): Paho writes the record when it reads a QoS 2 PUBLISH, before the message reaches the
///    inbox, and restores it in a new client to recognise the broker's DUP resend. Written at once, a crash
///    (or a failed commit) in between would make that client acknowledge the resend without delivering it.
///    So the record is held in memory until release_inbound(), after the inbox commit.
///  - MQTT 3.1.1 (`r-`): Paho delivers at PUBREL and removes the record after the callback, whatever
///    happened in it. keep_inbound() makes that removal a no-op, so the record is restored by the next
///    client, which delivers the message when the broker resends PUBREL.
/// A record can outlive its flow at the broker: a broker restarted from an older snapshot (after a hard
/// kill) has forgotten flows the client finished or still holds, and reuses their packet ids for new
/// messages. Paho takes any PUBLISH whose packet id it holds a record for as a resend: it acknowledges it
/// without delivering it (a loss). So a PUBLISH that is not a resend of the record under its id (DUP
/// clear, or another topic or payload) removes that stale record and calls `on_stale`, whose caller cuts
/// the connection before Paho's acknowledgement can leave; the broker sends the message again on the next
/// connection, to a Paho client that no longer holds the id. (A new message identical to the forgotten
/// one, whose first copy was lost in a cut, still passes for a resend.)
/// Otherwise this is a faithful store: held records are visible to get/keys/contains_key; a put
/// overwrites; a remove removes the record wherever it is (held and stored); clear empties both. Paho
/// writes a QoS 2 PUBLISH's record again for each DUP resend, after the first copy was released: a remove
/// that only dropped the held copy would leave the stored one behind, and once the broker's 16-bit packet
/// ids wrap that stale record would make Paho take a new message for a resend and drop it.
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
    void release_inbound(int packet_id);
    /// The message of `packet_id` could not be committed (its acknowledgement must not leave, and the
    /// connection is being cut): forgets the held `r5-` record, so that the next Paho client delivers the
    /// broker's resend, and makes Paho's coming removal of the `r-` record (MQTT 3.1.1) a no-op, so that
    /// the next client delivers the message at the broker's resent PUBREL.
    void refuse_inbound(int packet_id);
    /// Records that outbox record `seq` is in flight under `packet_id`.
    void map_packet(int packet_id, std::uint64_t seq);
    /// @return the outbox records whose flows Paho will resume, by packet id.
    std::map<int, std::uint64_t> resumable() const;
    /// Called (on Paho's threads) when the outbound flow of a packet id has ended.
    void on_complete(std::function<void(int packet_id)> fn) { on_complete_ = std::move(fn); }
    /// Called (on Paho's receive thread, before Paho handles the PUBLISH) when the broker sent a new
    /// message under a packet id that a stale inbound record holds: the connection must be cut now.
    void on_stale(std::function<void(int packet_id)> fn) { on_stale_ = std::move(fn); }
    /// @return true if Paho has outbound flows (`s-`, `s5-`, `sc-`, `sc5-` records) to resume.
    bool has_outbound() const;

private:
    template <class F>
    auto guarded(const char* what, const std::string& key, F&& f) const -> decltype(f());

    paho_records& records_;
    bool sync_inbound_;
    std::function<void(const std::string&)> on_error_;
    std::function<void(int)> on_complete_;
    std::function<void(int)> on_stale_;
    mutable std::mutex held_mu_;
    std::map<std::string, std::string> held_;  // MQTT 5 inbound records not yet released
    std::set<std::string> kept_;               // MQTT 3.1.1 inbound records whose next removal is refused
};

}  // namespace xymqtt::detail
