// Table names, sequence ids and the binary record format of stored messages.
//
// Record format, version 1 (all integers are LEB128 varints, signed ones zigzag-encoded; "bytes"
// is a varint length followed by that many bytes):
//   u8 version = 1
//   bytes topic, bytes payload, bytes content_type, bytes correlation_data, bytes response_topic
//   u8 flags (bit 0 retain, bit 1 expiry present, bit 2 outgoing; other bits must be 0)
//   [varint expiry_seconds if bit 1]
//   varint user count, then count x (bytes key, bytes value)
//   bytes lane, varint attempts, svarint next_attempt_ms, svarint created_ms, bytes error, bytes kind
// Nothing may follow. decode_record validates every length against what remains, so arbitrary
// input can only produce a storage_error.
#include <cstdio>
#include <cstring>
#include <limits>

#include "store/store_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"

namespace xymqtt {

const char* table_name(table t) {
    switch (t) {
        case table::outgoing:
            return "outgoing";
        case table::incoming:
            return "incoming";
        case table::dead_letters:
            return "dead_letters";
        case table::results:
            return "results";
        case table::calls:
            return "calls";
    }
    return "unknown";
}

std::string sequence_id(std::uint64_t seq) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%020llu", static_cast<unsigned long long>(seq));
    return std::string(buf, 20);
}

std::optional<std::uint64_t> parse_sequence_id(const std::string& id) {
    if (id.size() != 20) return std::nullopt;
    std::uint64_t v = 0;
    constexpr auto max = std::numeric_limits<std::uint64_t>::max();
    for (char c : id) {
        if (c < '0' || c > '9') return std::nullopt;
        const auto d = static_cast<std::uint64_t>(c - '0');
        if (v > (max - d) / 10) return std::nullopt;  // 20 digits can exceed 2^64-1
        v = v * 10 + d;
    }
    return v;
}

namespace {

constexpr unsigned char record_version = 1;
constexpr unsigned char flag_retain = 1;
constexpr unsigned char flag_expiry = 2;
constexpr unsigned char flag_outgoing = 4;

std::size_t varint_size(std::uint64_t v) {
    std::size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        ++n;
    }
    return n;
}

std::uint64_t zigzag(std::int64_t v) {
    return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}

std::int64_t unzigzag(std::uint64_t v) {
    return static_cast<std::int64_t>(v >> 1) ^ -static_cast<std::int64_t>(v & 1);
}

void put_varint(std::string& out, std::uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7f) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}

void put_bytes(std::string& out, const std::string& s) {
    put_varint(out, s.size());
    out.append(s);
}

std::size_t bytes_size(const std::string& s) { return varint_size(s.size()) + s.size(); }

// Bounds-checked reader over the record.
class reader {
public:
    explicit reader(const std::string& s)
        : p_(reinterpret_cast<const unsigned char*>(s.data())), end_(p_ + s.size()) {}

    [[noreturn]] static void fail(const char* why) { throw storage_error(std::string("malformed record: ") + why); }

    std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }

    unsigned char byte(const char* field) {
        if (p_ == end_) fail(field);
        return *p_++;
    }

    std::uint64_t varint(const char* field) {
        std::uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            const unsigned char b = byte(field);
            // The 10th byte may only carry the top bit of a 64-bit value.
            if (shift == 63 && b > 1) fail("varint overflow");
            v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        fail("varint overflow");
    }

    std::string bytes(const char* field) {
        const std::uint64_t n = varint(field);
        if (n > remaining()) fail("length exceeds record");
        std::string s(reinterpret_cast<const char*>(p_), static_cast<std::size_t>(n));
        p_ += n;
        return s;
    }

private:
    const unsigned char* p_;
    const unsigned char* end_;
};

}  // namespace

std::string encode_record(const stored_message& m) {
    const auto& pr = m.props;
    // Size exactly once so encoding is a single allocation.
    std::size_t size = 1 + bytes_size(m.topic) + bytes_size(m.payload) + bytes_size(pr.content_type) +
                       bytes_size(pr.correlation_data) + bytes_size(pr.response_topic) + 1 +
                       (pr.expiry_seconds ? varint_size(*pr.expiry_seconds) : 0) + varint_size(pr.user.size());
    for (const auto& kv : pr.user) size += bytes_size(kv.first) + bytes_size(kv.second);
    size += bytes_size(m.lane) + varint_size(m.attempts) + varint_size(zigzag(m.next_attempt_ms)) +
            varint_size(zigzag(m.created_ms)) + bytes_size(m.error) + bytes_size(m.kind);

    std::string out;
    out.reserve(size);
    out.push_back(static_cast<char>(record_version));
    put_bytes(out, m.topic);
    put_bytes(out, m.payload);
    put_bytes(out, pr.content_type);
    put_bytes(out, pr.correlation_data);
    put_bytes(out, pr.response_topic);
    unsigned char flags = 0;
    if (m.retain) flags |= flag_retain;
    if (pr.expiry_seconds) flags |= flag_expiry;
    if (m.outgoing) flags |= flag_outgoing;
    out.push_back(static_cast<char>(flags));
    if (pr.expiry_seconds) put_varint(out, *pr.expiry_seconds);
    put_varint(out, pr.user.size());
    for (const auto& kv : pr.user) {
        put_bytes(out, kv.first);
        put_bytes(out, kv.second);
    }
    put_bytes(out, m.lane);
    put_varint(out, m.attempts);
    put_varint(out, zigzag(m.next_attempt_ms));
    put_varint(out, zigzag(m.created_ms));
    put_bytes(out, m.error);
    put_bytes(out, m.kind);
    return out;
}

stored_message decode_record(const std::string& bytes) {
    reader r(bytes);
    const unsigned char version = r.byte("empty");
    if (version != record_version) reader::fail("unsupported version");
    stored_message m;
    m.topic = r.bytes("topic");
    m.payload = r.bytes("payload");
    m.props.content_type = r.bytes("content_type");
    m.props.correlation_data = r.bytes("correlation_data");
    m.props.response_topic = r.bytes("response_topic");
    const unsigned char flags = r.byte("flags");
    if (flags & ~(flag_retain | flag_expiry | flag_outgoing)) reader::fail("unknown flags");
    m.retain = (flags & flag_retain) != 0;
    m.outgoing = (flags & flag_outgoing) != 0;
    if (flags & flag_expiry) {
        const std::uint64_t e = r.varint("expiry");
        if (e > std::numeric_limits<std::uint32_t>::max()) reader::fail("expiry out of range");
        m.props.expiry_seconds = static_cast<std::uint32_t>(e);
    }
    const std::uint64_t users = r.varint("user count");
    // Each pair takes at least two bytes: rejects absurd counts before reserving anything.
    if (users > r.remaining() / 2) reader::fail("user count exceeds record");
    m.props.user.reserve(static_cast<std::size_t>(users));
    for (std::uint64_t i = 0; i < users; ++i) {
        std::string k = r.bytes("user key");
        std::string v = r.bytes("user value");
        m.props.user.emplace_back(std::move(k), std::move(v));
    }
    m.lane = r.bytes("lane");
    const std::uint64_t attempts = r.varint("attempts");
    if (attempts > std::numeric_limits<std::uint32_t>::max()) reader::fail("attempts out of range");
    m.attempts = static_cast<std::uint32_t>(attempts);
    m.next_attempt_ms = unzigzag(r.varint("next_attempt_ms"));
    m.created_ms = unzigzag(r.varint("created_ms"));
    m.error = r.bytes("error");
    m.kind = r.bytes("kind");
    if (r.remaining() != 0) reader::fail("trailing bytes");
    return m;
}

}  // namespace xymqtt
