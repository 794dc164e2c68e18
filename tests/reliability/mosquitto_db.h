// What a Mosquitto 2.0 persistence file (format 5 or 6) holds of the messages on their way to clients:
// queued, or in flight (sent, their acknowledgements awaited). The history sessions read it after a
// graceful broker stop to measure the broker's own in-flight window: Mosquitto 2.0.11 keeps far more
// in flight than a client's Receive Maximum allows, and after a restart sends many of them again as new
// messages (docs/reliability.md, H12).
#pragma once

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace xymqtt::test {

struct mosquitto_db_summary {
    bool ok = false;
    std::string error;
    std::uint64_t queued = 0;     ///< outgoing client messages waiting to be sent
    std::uint64_t in_flight = 0;  ///< outgoing client messages sent and not completed
    /// The topic and payload of each outgoing client message in flight (one per client and subscription).
    std::vector<std::pair<std::string, std::string>> in_flight_messages;
};

inline mosquitto_db_summary read_mosquitto_db(const std::string& path) {
    mosquitto_db_summary s;
    std::ifstream f(path, std::ios::binary);
    const std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto u32 = [&](std::size_t at) {
        std::uint32_t v;
        std::memcpy(&v, b.data() + at, 4);
        return ntohl(v);
    };
    // Header: a 15-byte magic, a CRC (unused) and the format version; then chunks of (type, length, body),
    // both big-endian 32-bit.
    constexpr std::size_t magic = 15, header = magic + 8;
    if (b.size() < header || b.compare(3, 12, "mosquitto db") != 0) {
        s.error = "not a Mosquitto persistence file: " + path;
        return s;
    }
    if (const auto version = u32(magic + 4); version != 5 && version != 6) {
        s.error = "persistence format " + std::to_string(version) + " not read";
        return s;
    }
    constexpr std::uint32_t msg_store = 2, client_msg = 3;  // DB_CHUNK_MSG_STORE, DB_CHUNK_CLIENT_MSG
    constexpr std::uint8_t out = 1, queued_state = 11;      // mosq_md_out, mosq_ms_queued
    auto u16 = [&](std::size_t at) { return std::uint16_t(std::uint8_t(b[at]) << 8 | std::uint8_t(b[at + 1])); };
    std::map<std::string, std::pair<std::string, std::string>> stored;  // store id (raw) -> topic, payload
    std::vector<std::string> in_flight_ids;
    for (std::size_t at = header; at + 8 <= b.size();) {
        const auto type = u32(at), length = u32(at + 4);
        at += 8;
        if (at + length > b.size()) {
            s.error = "truncated chunk";
            return s;
        }
        if (type == msg_store && length >= 32) {
            // PF_msg_store: store id (8), expiry (8), payload length (4), source mid, source id length,
            // source username length, topic length, source port (2 each), qos, retain; then the strings.
            const std::size_t payload_len = u32(at + 16), topic_at = at + 32 + u16(at + 22) + u16(at + 24);
            const std::size_t topic_len = u16(at + 26);
            if (topic_at + topic_len + payload_len <= at + length)
                stored[b.substr(at, 8)] = {b.substr(topic_at, topic_len), b.substr(topic_at + topic_len, payload_len)};
        }
        // PF_client_msg: store id (8), mid (2), client id length (2), qos, state, retain/dup, direction.
        if (type == client_msg && length >= 16 && std::uint8_t(b[at + 15]) == out) {
            if (std::uint8_t(b[at + 13]) == queued_state) {
                ++s.queued;
            } else {
                ++s.in_flight;
                in_flight_ids.push_back(b.substr(at, 8));
            }
        }
        at += length;
    }
    for (const auto& id : in_flight_ids)
        if (auto it = stored.find(id); it != stored.end()) s.in_flight_messages.push_back(it->second);
    s.ok = true;
    return s;
}

}  // namespace xymqtt::test
