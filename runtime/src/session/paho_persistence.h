// Paho's own persistence (`mqtt::iclient_persistence`) kept in the store.
#pragma once

#include <mqtt/iclient_persistence.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xymqtt/store.h"

namespace xymqtt::detail {

/// Keeps Paho's records in the store's paho area, so that a restarted (or re-created) Paho client resumes
/// its outbound QoS 2 flows with the broker exactly where they stopped: publishes in flight (`s-`, `s5-`,
/// `sc-`, `sc5-`) are finished under their own packet ids. Dropping them would leave the broker waiting for
/// PUBRELs that never come, and those half-open flows count against its receive maximum until it refuses
/// the connection.
/// Queued commands (`c-`, `c5-`) are kept in memory only, and records of them that earlier versions wrote
/// are dropped before a client is created (purge_commands): those publishes never left, and the outbox
/// sends them again.
/// Each outbound flow is tied to its outbox record by a mapping record `x-<packet id>`, written by the
/// client after Paho accepted the publish (map_packet) and removed with the flow. keys() does not list
/// the mappings: Paho's restore deletes every record it cannot read as a packet. When Paho removes
/// `s-<id>`/`s5-<id>` the flow is over and `on_complete(id)` is called.
///
/// Inbound, MQTT 5 (`r5-`): the records are this adapter's own, and Paho never sees them again.
///  - Paho writes `r5-<id>` when it reads a QoS 2 PUBLISH, before the message reaches the inbox. The record
///    is stored only after the inbox commit (release_inbound), and holds a digest of the topic and payload,
///    not the packet: a crash or a failed commit in between must not make the next client acknowledge the
///    broker's resend without delivering it.
///  - keys() does not list them, so a new Paho client restores no inbound state. Restored, every open
///    inbound flow would sit in Paho's process-wide list of publications, which Paho searches linearly for
///    each packet of every client: a broker that exceeds the client's receive maximum (Mosquitto 2.0.11
///    does, after reconnects) left tens of thousands of them, and each packet then cost milliseconds.
///    Restored state is also what made Paho take a new message under a reused packet id for a resend of a
///    forgotten flow, and drop it.
///  - Instead, a resend of a committed message is recognised here: DUP set, and a stored record under its
///    packet id with the same digest (of topic, payload and subscription identifiers: overlapping
///    subscriptions bring one copy per subscription, which differ only in their identifiers). take_resend() then tells the client to drop the copy that Paho
///    delivers. A stored record that does not match is from an older flow (one the broker finished after a
///    reconnect, whose PUBREL this client's Paho did not know, or one a broker restarted from an older state
///    forgot) and is replaced by the new message's.
///  - Within one connection Paho holds the packet ids of its open flows and delivers nothing under them:
///    a new message under such an id (a broker error) calls `on_stale`, whose caller cuts the connection
///    before Paho's acknowledgement can leave.
/// Inbound, MQTT 3.1.1 (`r-`): Paho delivers at PUBREL from its record, and removes the record after the
/// callback whatever happened in it. refuse_inbound() makes that removal a no-op, so that the next client
/// restores the record and delivers the message when the broker resends PUBREL.
///
/// Paho ignores many persistence errors (a full store silently makes it non-persistent), so every
/// failure is also reported through `on_error` before it is returned to Paho.
class paho_persistence : public mqtt::iclient_persistence {
public:
    /// @param sync_inbound sync each inbound record to disk: needed under MQTT 3.1.1 with fsync
    ///        durability, where Paho delivers at PUBREL and the broker does not resend the PUBLISH.
    paho_persistence(session_records& records, bool sync_inbound, std::function<void(const std::string&)> on_error);

    void open(const mqtt::string& client_id, const mqtt::string& server_uri) override;
    void close() override;
    void clear() override;
    bool contains_key(const mqtt::string& key) override;
    mqtt::string_collection keys() const override;
    void put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) override;
    mqtt::string get(const mqtt::string& key) const override;
    void remove(const mqtt::string& key) override;

    /// Removes Paho's queued commands; call before a Paho client restores its state.
    static void purge_commands(session_records& records);
    /// Stores the `r5-<packet_id>` record: call once the message is committed to the inbox.
    void release_inbound(int packet_id);
    /// @return true (once per resend) if the message Paho is delivering under `packet_id`, with this topic,
    ///         payload and subscription identifiers, is the broker's resend of one committed in an earlier
    ///         connection: the client drops it, and Paho acknowledges it.
    bool take_resend(int packet_id, std::string_view topic, std::string_view payload,
                     const std::vector<std::uint32_t>& sub_ids = {});
    /// Call before a new Paho client connects: it holds no flows of the previous connection.
    void new_connection();
    /// The message of `packet_id` could not be committed (its acknowledgement must not leave, and the
    /// connection is being cut): forgets the `r5-` flow, so that the next Paho client delivers the broker's
    /// resend, and makes Paho's coming removal of the `r-` record (MQTT 3.1.1) a no-op, so that the next
    /// client delivers the message at the broker's resent PUBREL.
    void refuse_inbound(int packet_id);
    /// Records that outbox record `seq` is in flight under `packet_id`.
    void map_packet(int packet_id, std::uint64_t seq);
    /// @return the outbox records whose flows Paho will resume, by packet id, as the mappings say.
    std::map<int, std::uint64_t> resumable() const;
    /// @return true if Paho's record of the outbound flow under `packet_id` is a publish of this topic and
    ///         payload. A mapping is trusted only then: one left stale (written after its flow had already
    ///         ended) must not make another message's completion count for its record.
    bool carries(int packet_id, std::string_view topic, std::string_view payload) const;
    /// Called (on Paho's threads) when the outbound flow of a packet id has ended.
    void on_complete(std::function<void(int packet_id)> fn) { on_complete_ = std::move(fn); }
    /// Called (on Paho's receive thread, before Paho handles the PUBLISH) when the broker sent a new
    /// message under the packet id of an open flow of this connection: the connection must be cut now.
    void on_stale(std::function<void(int packet_id)> fn) { on_stale_ = std::move(fn); }
    /// @return the outbound flows whose PUBLISH Paho will re-send (`s-`, `s5-` records): packet id -> size of
    ///         the record (about the packet's).
    std::map<int, std::size_t> outbound_publishes() const;
    /// Forgets the outbound flow under `packet_id` (Paho's records and the mapping), so that the next Paho
    /// client does not resume it. Call between Paho clients only.
    void drop_outbound(int packet_id);
    /// @return true if Paho has outbound flows (`s-`, `s5-`, `sc-`, `sc5-` records) to resume.
    bool has_outbound() const;

private:
    template <class F>
    auto guarded(const char* what, const std::string& key, F&& f) const -> decltype(f());

    session_records& records_;
    bool sync_inbound_;
    std::function<void(const std::string&)> on_error_;
    std::function<void(int)> on_complete_;
    std::function<void(int)> on_stale_;
    void put_inbound(const std::string& key, const std::string& packet);

    struct flow {
        std::string digest;
        bool committed = false;  // stored (released, or a resend of a message committed before)
    };
    mutable std::mutex flows_mu_;  // guards flows_, resent_ and kept_
    std::map<int, flow> flows_;  // MQTT 5 inbound flows of this connection, by packet id
    std::multiset<std::pair<int, std::string>> resent_;  // (packet id, digest) of resends still to be delivered
    std::set<std::string> kept_;               // MQTT 3.1.1 inbound records whose next removal is refused
    mutable std::mutex commands_mu_;
    std::unordered_map<std::string, std::string> commands_;  // Paho's queued commands, by key
};

}  // namespace xymqtt::detail
