// Record format, sequence ids and table names.
#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <random>

#include "xymqtt/exception.h"
#include "xymqtt/store.h"

using namespace xymqtt;

namespace {

stored_message full_message() {
    stored_message m;
    m.topic = "acme-shop-prod/orders/evt/created";
    m.payload = std::string("\0\x01\x02{json}\xff", 10);
    m.props.content_type = "application/json";
    m.props.correlation_data = std::string("\0corr", 5);
    m.props.response_topic = "acme/orders/cmd/x/resolve";
    m.props.expiry_seconds = 3600;
    m.props.user = {{"messageId", "abc"}, {"", ""}, {"k", std::string(300, 'v')}};
    m.retain = true;
    m.lane = "acme/+/evt/#";
    m.attempts = 7;
    m.next_attempt_ms = 1700000000123;
    m.created_ms = -5;
    m.error = "handler threw";
    m.kind = "call";
    return m;
}

void check_equal(const stored_message& a, const stored_message& b) {
    CHECK(a.topic == b.topic);
    CHECK(a.payload == b.payload);
    CHECK(a.props == b.props);
    CHECK(a.retain == b.retain);
    CHECK(a.lane == b.lane);
    CHECK(a.attempts == b.attempts);
    CHECK(a.next_attempt_ms == b.next_attempt_ms);
    CHECK(a.created_ms == b.created_ms);
    CHECK(a.error == b.error);
    CHECK(a.kind == b.kind);
}

// Decoding may succeed or throw storage_error; anything else (or a crash) fails the test.
void decode_safely(const std::string& bytes) {
    try {
        decode_record(bytes);
    } catch (const storage_error&) {
    }
}

}  // namespace

TEST_CASE("records round-trip", "[store][record]") {
    SECTION("fully populated") {
        const auto m = full_message();
        check_equal(decode_record(encode_record(m)), m);
    }
    SECTION("empty") {
        const stored_message m;
        const auto bytes = encode_record(m);
        CHECK(bytes.size() < 20);
        const auto d = decode_record(bytes);
        check_equal(d, m);
        CHECK_FALSE(d.props.expiry_seconds.has_value());
    }
    SECTION("extremes") {
        stored_message m;
        m.props.expiry_seconds = 0;
        m.attempts = std::numeric_limits<std::uint32_t>::max();
        m.next_attempt_ms = std::numeric_limits<std::int64_t>::min();
        m.created_ms = std::numeric_limits<std::int64_t>::max();
        m.payload = std::string(1 << 20, 'p');
        check_equal(decode_record(encode_record(m)), m);
    }
}

TEST_CASE("malformed records are rejected with storage_error", "[store][record]") {
    const auto good = encode_record(full_message());
    SECTION("every strict prefix") {
        for (std::size_t n = 0; n < good.size(); ++n) {
            INFO("prefix length " << n);
            CHECK_THROWS_AS(decode_record(good.substr(0, n)), storage_error);
        }
    }
    SECTION("trailing bytes") {
        CHECK_THROWS_WITH(decode_record(good + "x"), Catch::Contains("malformed record"));
    }
    SECTION("unknown version and flags") {
        auto bad = good;
        bad[0] = 2;
        CHECK_THROWS_AS(decode_record(bad), storage_error);
        CHECK_THROWS_AS(decode_record(std::string(1, '\0')), storage_error);
    }
    SECTION("absurd lengths") {
        // Version, then a topic length of 2^63 and of 2^64-1 (10-byte varints), and an overlong varint.
        CHECK_THROWS_AS(decode_record(std::string("\x01\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 11)),
                        storage_error);
        CHECK_THROWS_AS(decode_record(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11)),
                        storage_error);
        CHECK_THROWS_AS(decode_record(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12)),
                        storage_error);
        CHECK_THROWS_AS(decode_record(std::string("\x01\xff\xff\xff\x0f", 5)), storage_error);
        // A huge user-property count with little data behind it.
        stored_message m;
        auto bytes = encode_record(m);
        // Layout of an empty record: version, five empty strings, flags, user count (index 7).
        REQUIRE(bytes[7] == 0);
        bytes.replace(7, 1, std::string("\xff\xff\xff\xff\x0f", 5));
        CHECK_THROWS_AS(decode_record(bytes), storage_error);
    }
    SECTION("random bytes and mutations never crash") {
        std::mt19937_64 rng(12345);
        std::uniform_int_distribution<int> byte(0, 255);
        for (int i = 0; i < 20000; ++i) {
            std::string s(static_cast<std::size_t>(rng() % 64), '\0');
            for (auto& c : s) c = static_cast<char>(byte(rng));
            if (!s.empty() && (i & 1)) s[0] = 1;  // get past the version byte half the time
            decode_safely(s);
        }
        for (int i = 0; i < 20000; ++i) {
            auto s = good;
            for (int k = 0; k < 3; ++k) s[rng() % s.size()] = static_cast<char>(byte(rng));
            decode_safely(s);
        }
        SUCCEED();
    }
}

TEST_CASE("sequence ids", "[store][record]") {
    CHECK(sequence_id(0) == "00000000000000000000");
    CHECK(sequence_id(42) == "00000000000000000042");
    const auto max = std::numeric_limits<std::uint64_t>::max();
    CHECK(sequence_id(max) == "18446744073709551615");
    CHECK(parse_sequence_id(sequence_id(max)) == std::optional<std::uint64_t>(max));
    CHECK(parse_sequence_id(sequence_id(0)) == std::optional<std::uint64_t>(0));

    std::mt19937_64 rng(7);
    for (int i = 0; i < 10000; ++i) {
        const std::uint64_t a = rng() >> (rng() % 64), b = rng() >> (rng() % 64);
        CHECK(sequence_id(a).size() == 20);
        CHECK((a < b) == (sequence_id(a) < sequence_id(b)));
        CHECK(parse_sequence_id(sequence_id(a)) == std::optional<std::uint64_t>(a));
    }

    CHECK_FALSE(parse_sequence_id("").has_value());
    CHECK_FALSE(parse_sequence_id("0000000000000000042").has_value());    // 19 digits
    CHECK_FALSE(parse_sequence_id("000000000000000000042").has_value());  // 21 digits
    CHECK_FALSE(parse_sequence_id("0000000000000000004x").has_value());
    CHECK_FALSE(parse_sequence_id("-0000000000000000042").has_value());
    CHECK_FALSE(parse_sequence_id("+0000000000000000042").has_value());
    CHECK_FALSE(parse_sequence_id(" 0000000000000000042").has_value());
    CHECK_FALSE(parse_sequence_id("18446744073709551616").has_value());  // 2^64
    CHECK_FALSE(parse_sequence_id("99999999999999999999").has_value());
}

TEST_CASE("table names", "[store][record]") {
    CHECK(std::string(table_name(table::outgoing)) == "outgoing");
    CHECK(std::string(table_name(table::incoming)) == "incoming");
    CHECK(std::string(table_name(table::dead_letters)) == "dead_letters");
    CHECK(std::string(table_name(table::results)) == "results");
    CHECK(std::string(table_name(table::calls)) == "calls");
}
