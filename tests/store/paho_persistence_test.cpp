// Paho's persistence adapter (runtime/src/session/paho_persistence.h) over a real records file: MQTT 5 inbound
// records kept apart from Paho (stored at the commit, resends recognised), and the MQTT 3.1.1 hold-back.
#include <mqtt/exception.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "session/paho_persistence.h"
#include "store/session_records_file.h"
#include "store_test_util.h"

using xymqtt::detail::paho_persistence;
using xymqtt::detail::session_records_file;
using store_test::temp_dir;

namespace {

void put(paho_persistence& p, const std::string& key, const std::string& value) {
    std::vector<mqtt::string_view> bufs{mqtt::string_view(value)};
    p.put(key, bufs);
}

// An inbound record as Paho writes it: an MQTT 5 QoS 2 PUBLISH (fixed header, bit 3 = DUP; remaining
// length; topic "t"; packet id 1; no properties; the payload).
std::string publish(const std::string& payload, bool dup = false) {
    const std::string body = std::string("\0\1t\0\1\0", 6) + payload;
    return std::string(1, dup ? '\x3c' : '\x34') + char(body.size()) + body;
}

// The same with properties: a user property and a content type, then the subscription identifiers.
std::string publish_with_ids(const std::string& payload, const std::vector<unsigned char>& sub_ids, bool dup = false) {
    std::string props = std::string("\x26\0\1k\0\1v", 7) + std::string("\x03\0\4text", 7);
    for (auto id : sub_ids) props += std::string{'\x0b', char(id)};
    const std::string body = std::string("\0\1t\0\1", 5) + char(props.size()) + props + payload;
    return std::string(1, dup ? '\x3c' : '\x34') + char(body.size()) + body;
}

bool has_key(const paho_persistence& p, const std::string& key) {
    const auto keys = p.keys();
    for (std::size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == key) return true;
    return false;
}

}  // namespace

TEST_CASE("paho persistence: an MQTT 5 inbound record is stored at release, small, and never shown to Paho",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-3", publish(std::string(4096, 'm')));
    CHECK_FALSE(records.get("r5-3"));  // not stored before the inbox commit
    p.release_inbound(3);
    REQUIRE(records.get("r5-3"));
    CHECK(records.get("r5-3")->size() < 64);  // a digest, not the packet
    CHECK_FALSE(has_key(p, "r5-3"));          // a new Paho client restores no inbound flow
    CHECK_FALSE(p.take_resend(3, "t", std::string(4096, 'm')));            // a first delivery is delivered
    p.remove("r5-3");                         // PUBREL
    CHECK_FALSE(records.get("r5-3"));
}

TEST_CASE("paho persistence: the broker's resend of a committed message is recognised, and only that",
          "[store][paho]") {
    temp_dir tmp;
    {
        session_records_file records(tmp.store_dir(), false);
        paho_persistence p(records, false, nullptr);
        put(p, "r5-7", publish("the message"));
        p.release_inbound(7);  // committed; the connection breaks before PUBREL
    }
    session_records_file records(tmp.store_dir(), false);  // a restart
    paho_persistence p(records, false, nullptr);
    p.new_connection();
    put(p, "r5-7", publish("the message", true));  // DUP, same topic and payload
    CHECK(p.take_resend(7, "t", "the message"));
    CHECK_FALSE(p.take_resend(7, "t", "the message"));  // once
    p.remove("r5-7");               // PUBREL
    CHECK_FALSE(records.get("r5-7"));

    put(p, "r5-8", publish("committed"));
    p.release_inbound(8);
    p.new_connection();
    put(p, "r5-8", publish("another message", true));  // DUP, but not that message
    CHECK_FALSE(p.take_resend(8, "t", "another message"));
    put(p, "r5-9", publish("committed"));
    p.release_inbound(9);
    p.new_connection();
    put(p, "r5-9", publish("committed"));  // same content, DUP clear: a new message
    CHECK_FALSE(p.take_resend(9, "t", "committed"));
}

TEST_CASE("paho persistence: a resend that Paho hands over after its PUBREL is still recognised",
          "[store][paho]") {
    // Paho delivers from its queue of undelivered messages after it has sent PUBREC, and the PUBREL may
    // come first; meanwhile a new message may come under the same packet id.
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-2", publish("committed"));
    p.release_inbound(2);
    p.new_connection();
    put(p, "r5-2", publish("committed", true));  // the resend, queued by Paho
    p.remove("r5-2");                            // its PUBREL
    put(p, "r5-2", publish("next"));             // a new message under the same id
    CHECK(p.take_resend(2, "t", "committed"));   // the queued resend, delivered now
    CHECK_FALSE(p.take_resend(2, "t", "next"));  // the new message is delivered
}

TEST_CASE("paho persistence: records written by earlier versions (whole packets) are still recognised",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    records.put("r5-4", publish("old format"), false);
    paho_persistence p(records, false, nullptr);
    CHECK_FALSE(has_key(p, "r5-4"));
    put(p, "r5-4", publish("old format", true));
    CHECK(p.take_resend(4, "t", "old format"));
}

TEST_CASE("paho persistence: clear empties the flows of the connection too", "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-1", publish("open"));
    put(p, "s5-2", "sent");
    p.clear();
    CHECK(p.keys().size() == 0);
    p.release_inbound(1);  // no flow any more: nothing written
    CHECK_FALSE(records.get("r5-1"));
}

TEST_CASE("paho persistence: a refused MQTT 5 arrival leaves no record for the next client", "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-9", publish("could not be committed"));
    p.refuse_inbound(9);
    p.release_inbound(9);
    CHECK_FALSE(records.get("r5-9"));
    p.new_connection();
    put(p, "r5-9", publish("could not be committed", true));  // the broker's resend: delivered
    CHECK_FALSE(p.take_resend(9, "t", "could not be committed"));

    records.put("r5-10", publish("stale"), false);  // left by an earlier flow under this id
    put(p, "r5-10", publish("stale", true));
    p.refuse_inbound(10);
    CHECK_FALSE(records.get("r5-10"));
}

TEST_CASE("paho persistence: a refused MQTT 3.1.1 arrival keeps its record for the resent PUBREL",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r-4", "publish");  // written at PUBLISH; delivered at PUBREL, then removed by Paho
    p.refuse_inbound(4);
    p.remove("r-4");  // Paho's removal after the callback: refused
    CHECK(records.get("r-4") == std::string("publish"));
    CHECK(has_key(p, "r-4"));
    p.remove("r-4");  // the next client's removal, after the message was committed
    CHECK_FALSE(records.get("r-4"));

    put(p, "r-5", "publish");
    p.refuse_inbound(5);
    put(p, "r-5", "a new flow under the same id");
    p.remove("r-5");  // the refusal was for the earlier flow
    CHECK_FALSE(records.get("r-5"));
}

TEST_CASE("paho persistence: a new message under a reused packet id is delivered, and replaces the old record",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    std::vector<int> stale;
    p.on_stale([&](int id) { stale.push_back(id); });

    records.put("r5-5", publish("a flow the broker finished or forgot"), false);
    put(p, "r5-5", publish("a new message"));
    CHECK_FALSE(p.take_resend(5, "t", "a new message"));  // delivered
    CHECK(stale.empty());           // and no cut: Paho holds nothing under this id
    p.release_inbound(5);
    p.new_connection();
    put(p, "r5-5", publish("a new message", true));
    CHECK(p.take_resend(5, "t", "a new message"));  // the stored record is now the new message's

    // Within one connection Paho holds the ids of its open flows: a new message under one is dropped by
    // Paho, so the connection must be cut.
    put(p, "r5-6", publish("open flow"));
    put(p, "r5-6", publish("open flow", true));  // the broker's resend within the connection: fine
    CHECK(stale.empty());
    put(p, "r5-6", publish("a new message"));
    CHECK(stale == std::vector<int>{6});
}

TEST_CASE("paho persistence: with overlapping subscriptions, one copy's record does not pass another copy for a resend",
          "[store][paho]") {
    // The broker sends one copy per matching subscription: same topic and payload, its own subscription
    // identifier. A copy that the broker sends again (DUP) under a packet id whose stored record is another
    // copy's (an older flow, forgotten by a broker restarted from an older state) is a new delivery.
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-7", publish_with_ids("the message", {1}));
    p.release_inbound(7);
    p.new_connection();
    put(p, "r5-7", publish_with_ids("the message", {2}, true));
    CHECK_FALSE(p.take_resend(7, "t", "the message", {2}));  // the other subscription's copy: delivered
    p.release_inbound(7);
    p.new_connection();
    put(p, "r5-7", publish_with_ids("the message", {2}, true));
    CHECK(p.take_resend(7, "t", "the message", {2}));  // its own resend is recognised

    // One copy for several subscriptions carries all their identifiers, in any order.
    put(p, "r5-8", publish_with_ids("both", {3, 1}));
    p.release_inbound(8);
    p.new_connection();
    put(p, "r5-8", publish_with_ids("both", {3, 1}, true));
    CHECK(p.take_resend(8, "t", "both", {1, 3}));
}

TEST_CASE("paho persistence: a digest of the earlier form matches nothing, so its message is delivered again",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    records.put("r5-4", std::string("xd1:") + std::string(32, '\0'), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-4", publish("the message", true));
    CHECK_FALSE(p.take_resend(4, "t", "the message"));
}

TEST_CASE("paho persistence: Paho's queued commands are kept in memory, not in the store, until the next connection",
          "[store][paho]") {
    temp_dir tmp;
    session_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    const std::string packet = publish(std::string(65536, 'c'));
    put(p, "c5-7", packet);
    CHECK_FALSE(records.get("c5-7"));  // nothing written to disk
    CHECK(p.contains_key("c5-7"));
    CHECK(p.get("c5-7") == packet);    // Paho reads it back before sending it
    CHECK_FALSE(has_key(p, "c5-7"));   // a new Paho client restores no command
    p.remove("c5-7");
    CHECK_FALSE(p.contains_key("c5-7"));
    CHECK_THROWS_AS(p.get("c5-7"), mqtt::persistence_exception);
    put(p, "c5-8", packet);
    p.new_connection();                // the client that queued it is gone
    CHECK_FALSE(p.contains_key("c5-8"));
}
