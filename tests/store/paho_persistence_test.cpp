// Paho's persistence adapter (runtime/src/paho_persistence.h) over a real records file: held-back inbound
// records, and the faithful put/remove/clear that Paho's restore relies on.
#include <mqtt/exception.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "paho_persistence.h"
#include "paho_records_file.h"
#include "store_test_util.h"

using xymqtt::detail::paho_persistence;
using xymqtt::detail::paho_records_file;
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

bool has_key(const paho_persistence& p, const std::string& key) {
    const auto keys = p.keys();
    for (std::size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == key) return true;
    return false;
}

}  // namespace

TEST_CASE("paho persistence: an MQTT 5 inbound record is held until released, and visible meanwhile",
          "[store][paho]") {
    temp_dir tmp;
    paho_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-3", publish("m"));
    CHECK(p.contains_key("r5-3"));
    CHECK(has_key(p, "r5-3"));
    CHECK(p.get("r5-3") == publish("m"));
    CHECK_FALSE(records.get("r5-3"));  // not stored before the inbox commit
    p.release_inbound(3);
    CHECK(records.get("r5-3") == publish("m"));
    CHECK(p.get("r5-3") == publish("m"));
}

TEST_CASE("paho persistence: the removal after a DUP resend removes the released record too", "[store][paho]") {
    // Paho writes the record again for the broker's DUP resend of a message it already has (no delivery,
    // so no release follows), then removes it at PUBREL. A stale stored copy would be restored by the next
    // Paho client and, once the broker's packet ids wrap, drop a new message with that id.
    temp_dir tmp;
    {
        paho_records_file records(tmp.store_dir(), false);
        paho_persistence p(records, false, nullptr);
        put(p, "r5-7", publish("the message"));
        p.release_inbound(7);
        put(p, "r5-7", publish("the message", true));
        CHECK(p.get("r5-7") == publish("the message", true));  // an overwrite overwrites
        p.remove("r5-7");
        CHECK_FALSE(p.contains_key("r5-7"));
        CHECK_FALSE(has_key(p, "r5-7"));
        CHECK_THROWS_AS(p.get("r5-7"), mqtt::persistence_exception);
    }
    paho_records_file reopened(tmp.store_dir(), false);
    CHECK_FALSE(reopened.get("r5-7"));
}

TEST_CASE("paho persistence: clear empties held records too", "[store][paho]") {
    temp_dir tmp;
    paho_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-1", publish("held"));
    put(p, "s5-2", "sent");
    p.clear();
    CHECK(p.keys().size() == 0);
    CHECK_FALSE(p.contains_key("r5-1"));
    p.release_inbound(1);  // nothing held any more: nothing written
    CHECK_FALSE(records.get("r5-1"));
}

TEST_CASE("paho persistence: a refused MQTT 5 arrival leaves no record for the next client", "[store][paho]") {
    temp_dir tmp;
    paho_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    put(p, "r5-9", publish("could not be committed"));
    p.refuse_inbound(9);
    CHECK_FALSE(p.contains_key("r5-9"));
    CHECK_FALSE(has_key(p, "r5-9"));
    p.release_inbound(9);
    CHECK_FALSE(records.get("r5-9"));

    records.put("r5-10", publish("stale"), false);  // left by an earlier flow under this id
    put(p, "r5-10", publish("stale", true));
    p.refuse_inbound(10);
    CHECK_FALSE(has_key(p, "r5-10"));
    CHECK_FALSE(records.get("r5-10"));
}

TEST_CASE("paho persistence: a refused MQTT 3.1.1 arrival keeps its record for the resent PUBREL",
          "[store][paho]") {
    temp_dir tmp;
    paho_records_file records(tmp.store_dir(), false);
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

TEST_CASE("paho persistence: a new message under the packet id of a stale record removes it and says so",
          "[store][paho]") {
    // A broker restarted from an older state reuses the ids of flows it forgot, without DUP. Paho would
    // take the message for a resend of the record it holds and drop it: the caller cuts the connection.
    temp_dir tmp;
    paho_records_file records(tmp.store_dir(), false);
    paho_persistence p(records, false, nullptr);
    std::vector<int> stale;
    p.on_stale([&](int id) { stale.push_back(id); });

    put(p, "r5-5", publish("earlier flow"));
    p.release_inbound(5);
    put(p, "r5-5", publish("earlier flow", true));  // a resend: DUP set, same topic and payload
    CHECK(stale.empty());
    put(p, "r5-5", publish("a new message"));  // DUP clear: the broker forgot the earlier flow
    CHECK(stale == std::vector<int>{5});
    CHECK_FALSE(p.contains_key("r5-5"));
    CHECK_FALSE(records.get("r5-5"));

    put(p, "r5-6", publish("held, not yet committed"));
    put(p, "r5-6", publish("a new message"));
    CHECK(stale == std::vector<int>{5, 6});
    CHECK_FALSE(p.contains_key("r5-6"));

    // DUP set but another payload: a new message whose first copy was lost with a cut.
    put(p, "r5-7", publish("forgotten flow"));
    p.release_inbound(7);
    put(p, "r5-7", publish("a new message", true));
    CHECK(stale == std::vector<int>{5, 6, 7});
    CHECK_FALSE(records.get("r5-7"));

    put(p, "r5-8", publish("first delivery"));  // no record yet: the usual case
    CHECK(stale.size() == 3);
    CHECK(p.contains_key("r5-8"));
}
