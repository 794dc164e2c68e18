#include "session/paho_persistence.h"

#include <mqtt/exception.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace xymqtt::detail {

paho_persistence::paho_persistence(session_records& records, bool sync_inbound,
                                   std::function<void(const std::string&)> on_error)
    : records_(records), sync_inbound_(sync_inbound), on_error_(std::move(on_error)) {}

namespace {

// Paho's queued commands ("c-", "c5-"). They must be kept: Paho 1.3 frees a queued publish's payload once
// its command is persisted and reads it back (pget) just before sending it. Kept in memory only: the next
// Paho client restores none of them (purge_commands), as the outbox sends those publishes again.
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

// What identifies an MQTT 5 QoS 1/2 PUBLISH as Paho records it (fixed header, remaining length, topic,
// packet id, properties, payload): topic, payload and subscription identifiers.
struct publish_view {
    std::string_view topic;
    std::string_view payload;
    std::vector<std::uint32_t> sub_ids;
};

// @return the content of the packet, or nothing if it is not a PUBLISH this can read.
// @param v5 the packet is MQTT 5's (it has properties)
std::optional<publish_view> publish_content(std::string_view rec, bool v5 = true) {
    auto varint = [&](std::size_t& at) -> std::optional<std::size_t> {
        std::size_t v = 0;
        for (int shift = 0; shift < 28 && at < rec.size(); shift += 7) {
            const auto b = static_cast<unsigned char>(rec[at++]);
            v |= std::size_t(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        return std::nullopt;
    };
    auto u16 = [&](std::size_t at) {
        return (std::size_t(static_cast<unsigned char>(rec[at])) << 8) | static_cast<unsigned char>(rec[at + 1]);
    };
    publish_view out;
    std::size_t at = 1;
    if (!varint(at) || at + 2 > rec.size()) return std::nullopt;
    const std::size_t topic_len = u16(at);
    at += 2;
    if (at + topic_len + 2 > rec.size()) return std::nullopt;
    out.topic = rec.substr(at, topic_len);
    at += topic_len + 2;  // and the packet id
    if (!v5) {
        out.payload = rec.substr(at);
        return out;
    }
    const auto props = varint(at);
    if (!props || at + *props > rec.size()) return std::nullopt;
    const std::size_t end = at + *props;
    // The properties, for the subscription identifiers: with overlapping subscriptions the broker sends one
    // copy of a message per subscription, each with its own identifier and the same topic and payload.
    while (at < end) {
        const auto id = static_cast<unsigned char>(rec[at++]);
        std::size_t len = 0;
        switch (id) {
            case 0x01: len = 1; break;                 // payload format indicator
            case 0x02: len = 4; break;                 // message expiry interval
            case 0x23: len = 2; break;                 // topic alias
            case 0x03: case 0x08: case 0x09:           // content type, response topic, correlation data
                if (at + 2 > end) return std::nullopt;
                len = 2 + u16(at);
                break;
            case 0x26:                                 // user property: two strings
                if (at + 2 > end) return std::nullopt;
                len = 2 + u16(at);
                if (at + len + 2 > end) return std::nullopt;
                len += 2 + u16(at + len);
                break;
            case 0x0B: {                               // subscription identifier
                const auto v = varint(at);
                if (!v || at > end) return std::nullopt;
                out.sub_ids.push_back(static_cast<std::uint32_t>(*v));
                continue;
            }
            default: return std::nullopt;              // not a PUBLISH property
        }
        if (at + len > end) return std::nullopt;
        at += len;
    }
    out.payload = rec.substr(end);
    return out;
}

bool is_dup(const std::string& packet) { return !packet.empty() && (static_cast<unsigned char>(packet[0]) & 0x08); }

void append_u64(std::string& out, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

// What an inbound record keeps of a message: enough to recognise the broker's resend (same topic and
// payload) in 36 bytes, whatever the payload's size. A 128-bit hash of the payload (xxHash's XXH3, which
// reads a 64 KiB payload in a few microseconds) and its length make a false match (same packet id, DUP
// set, same topic, same hash and length) practically impossible.
// The subscription identifiers are part of it: the copies of one message that overlapping subscriptions
// bring differ only in them, and one copy's record must not make another copy pass for a resend.
// Earlier forms ("xd1:", "xd2:") match nothing: their messages are delivered again (at least once).
constexpr std::string_view digest_tag = "xd3:";

std::string digest(std::string_view topic, std::string_view payload, std::vector<std::uint32_t> sub_ids) {
    std::sort(sub_ids.begin(), sub_ids.end());
    std::string ids;
    for (auto v : sub_ids) append_u64(ids, v);
    const auto head = XXH3_64bits_withSeed(ids.data(), ids.size(), XXH3_64bits(topic.data(), topic.size()));
    const auto body = XXH3_128bits(payload.data(), payload.size());
    std::string d(digest_tag);
    d.reserve(36);
    append_u64(d, head);
    append_u64(d, body.low64);
    append_u64(d, body.high64);
    append_u64(d, payload.size());
    return d;
}

std::string digest_of_packet(const std::string& packet) {
    const auto c = publish_content(packet);
    return c ? digest(c->topic, c->payload, c->sub_ids) : std::string();
}

// A stored record: a digest, or a whole packet (stores written by earlier versions). A digest of an earlier
// form ("xd1:", without the subscription identifiers) matches nothing: its message is delivered again.
std::string digest_of_record(const std::string& rec) {
    if (rec.compare(0, 2, "xd") == 0) return rec;
    return digest_of_packet(rec);
}

int inbound_packet_id(const std::string& key) { return std::atoi(key.c_str() + 3); }  // "r5-<id>"

}  // namespace

void paho_persistence::purge_commands(session_records& records) {
    for (const auto& k : records.keys())
        if (is_command(k)) records.remove(k);
}

void paho_persistence::release_inbound(int packet_id) {
    std::string d;
    {
        std::lock_guard<std::mutex> lk(flows_mu_);
        auto it = flows_.find(packet_id);
        if (it == flows_.end() || it->second.committed) return;
        it->second.committed = true;
        d = it->second.digest;
    }
    const std::string key = "r5-" + std::to_string(packet_id);
    guarded("put", key, [&] { records_.put(key, d, false); });
}

void paho_persistence::refuse_inbound(int packet_id) {
    const auto id = std::to_string(packet_id);
    {
        std::lock_guard<std::mutex> lk(flows_mu_);
        flows_.erase(packet_id);
        kept_.insert("r-" + id);
    }
    // Not committed: a stored record under this id is from an older flow, and would make the broker's
    // resend of this message pass for a resend of a committed one.
    guarded("remove", "r5-" + id, [&] { records_.remove("r5-" + id); });
}

bool paho_persistence::take_resend(int packet_id, std::string_view topic, std::string_view payload,
                                   const std::vector<std::uint32_t>& sub_ids) {
    {
        // Resends of committed messages come only after a reconnect: most deliveries need no digest.
        std::lock_guard<std::mutex> lk(flows_mu_);
        const auto first = resent_.lower_bound({packet_id, std::string()});
        if (first == resent_.end() || first->first != packet_id) return false;
    }
    const std::string d = digest(topic, payload, sub_ids);
    std::lock_guard<std::mutex> lk(flows_mu_);
    auto it = resent_.find({packet_id, d});
    if (it == resent_.end()) return false;
    resent_.erase(it);
    return true;
}

void paho_persistence::new_connection() {
    {
        std::lock_guard<std::mutex> lk(flows_mu_);
        flows_.clear();
        resent_.clear();
    }
    // Commands queued by earlier Paho clients: those are disconnected for good and send nothing more.
    std::lock_guard<std::mutex> lk(commands_mu_);
    commands_.clear();
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

bool paho_persistence::carries(int packet_id, std::string_view topic, std::string_view payload) const {
    for (bool v5 : {true, false}) {
        const auto rec = guarded("get", "", [&] { return records_.get((v5 ? "s5-" : "s-") + std::to_string(packet_id)); });
        if (!rec) continue;
        const auto c = publish_content(*rec, v5);
        return c && c->topic == topic && c->payload == payload;
    }
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

std::map<int, std::size_t> paho_persistence::outbound_publishes() const {
    std::map<int, std::size_t> out;
    for (const auto& k : records_.keys()) {
        const int id = outbound_packet_id(k, true);
        if (id < 0) continue;
        if (auto v = records_.get(k)) out[id] = v->size();
    }
    return out;
}

void paho_persistence::drop_outbound(int packet_id) {
    const auto id = std::to_string(packet_id);
    for (const char* p : {"s-", "s5-", "sc-", "sc5-", "x-"})
        guarded("remove", p + id, [&] { records_.remove(p + id); });
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
        std::lock_guard<std::mutex> lk(flows_mu_);
        flows_.clear();
        resent_.clear();
        kept_.clear();
    }
    {
        std::lock_guard<std::mutex> lk(commands_mu_);
        commands_.clear();
    }
    guarded("clear", "", [&] { records_.clear(); });
}

bool paho_persistence::contains_key(const mqtt::string& key) {
    if (is_command(key)) {
        std::lock_guard<std::mutex> lk(commands_mu_);
        return commands_.count(key) > 0;
    }
    return guarded("contains", key, [&] { return records_.get(key).has_value(); });
}

mqtt::string_collection paho_persistence::keys() const {
    return guarded("keys", "", [&] {
        // The adapter's own records are not Paho's to see: MQTT 5 inbound records (see the class comment),
        // and the `x-` mappings. Paho's restore deletes every record it cannot read as a packet, so listed,
        // each new Paho client would delete them all.
        mqtt::string_collection out;
        for (const auto& k : records_.keys())
            if (k.rfind("r5-", 0) != 0 && k.rfind("x-", 0) != 0) out.push_back(k);
        return out;
    });
}

void paho_persistence::put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) {
    std::string value;
    std::size_t n = 0;
    for (const auto& b : bufs) n += b.size();
    value.reserve(n);
    for (const auto& b : bufs) value.append(b.data(), b.size());
    if (is_command(key)) {
        // A whole publish (a 64 KiB payload included) that needs no disk: see is_command.
        std::lock_guard<std::mutex> lk(commands_mu_);
        commands_[key] = std::move(value);
        return;
    }
    if (key.rfind("r5-", 0) == 0) return put_inbound(key, value);
    if (key.rfind("r-", 0) == 0) {
        std::lock_guard<std::mutex> lk(flows_mu_);
        kept_.erase(key);  // a new flow under this packet id
    }
    const bool inbound = key.rfind("r-", 0) == 0 || key.rfind("r5-", 0) == 0;
    guarded("put", key, [&] { records_.put(key, value, sync_inbound_ && inbound); });
}

void paho_persistence::put_inbound(const std::string& key, const std::string& packet) {
    // Paho writes the record of an MQTT 5 QoS 2 PUBLISH as it reads it, before it delivers the message.
    const int packet_id = inbound_packet_id(key);
    const std::string d = digest_of_packet(packet);
    const bool dup = is_dup(packet);
    bool stale = false;
    {
        std::lock_guard<std::mutex> lk(flows_mu_);
        auto it = flows_.find(packet_id);
        if (it != flows_.end()) {
            // Paho holds this packet id (a flow of this connection) and delivers nothing that comes under it.
            if (dup && !d.empty() && it->second.digest == d) return;  // the broker's resend: right so
            flows_.erase(it);  // a new message, which Paho would take for a resend and drop
            stale = true;
        }
    }
    if (stale) {
        if (on_stale_) on_stale_(packet_id);
        return;
    }
    const auto stored = guarded("get", key, [&] { return records_.get(key); });
    std::lock_guard<std::mutex> lk(flows_mu_);
    // Committed in an earlier connection: Paho, which restored nothing, delivers it again, and the client
    // drops that copy (take_resend). Otherwise a stored record is from an older flow that the broker has
    // finished or forgotten, and this message's commit replaces it.
    // DUP is required: a stored record may be stale (Paho answers the broker's PUBREL of a flow it does not
    // know without removing the record), and a new message with the same content under a reused packet id
    // must be delivered.
    const bool committed = stored && dup && !d.empty() && digest_of_record(*stored) == d;
    if (committed) resent_.insert({packet_id, d});
    flows_[packet_id] = flow{d, committed};
}

mqtt::string paho_persistence::get(const mqtt::string& key) const {
    if (is_command(key)) {
        std::lock_guard<std::mutex> lk(commands_mu_);
        auto it = commands_.find(key);
        if (it == commands_.end()) throw mqtt::persistence_exception();
        return it->second;
    }
    // A missing key is Paho asking, not a storage failure: no error report for it.
    auto v = guarded("get", key, [&] { return records_.get(key); });
    if (!v) throw mqtt::persistence_exception();
    return *v;
}

void paho_persistence::remove(const mqtt::string& key) {
    if (is_command(key)) {
        std::lock_guard<std::mutex> lk(commands_mu_);
        commands_.erase(key);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(flows_mu_);
        if (key.rfind("r5-", 0) == 0) {
            // PUBREL: the flow is over. A resend mark stays until its delivery takes it: Paho may hand a
            // message over after its PUBREC and PUBREL (from its queue of undelivered messages).
            flows_.erase(inbound_packet_id(key));
        }
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
