// Delivery defects outside the short test's envelope, each against a real Mosquitto: overlapping
// subscriptions, properties a broker refuses, close() from a handler, arrivals that cannot be taken in.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <new>

#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

namespace {

// A connecting subscriber on `test/<client id>/x` that counts how often each payload was handled; "probe"
// goes to `probes` (publish_until_heard).
struct counting_subscriber {
    explicit counting_subscriber(const client_options& so) : topic("test/" + so.client_id + "/x"), sub(so) {
        sub.subscribe(topic, [this](const message& m) {
            if (m.payload == "probe") return probes.add(m.payload);
            std::lock_guard<std::mutex> lk(mu);
            ++got[m.payload];
        });
        sub.connect();
    }
    std::size_t distinct() {
        std::lock_guard<std::mutex> lk(mu);
        return got.size();
    }
    int handled(const std::string& payload) {
        std::lock_guard<std::mutex> lk(mu);
        return got[payload];
    }

    const std::string topic;
    recorder probes;
    std::mutex mu;
    std::map<std::string, int> got;
    client sub;  // last: destroyed first, while what its handler uses is still there
};

}  // namespace

TEST_CASE("overlapping subscriptions: each handler runs once per message", "[events][overlap]") {
    // The broker sends one copy per matching subscription; without subscription identifiers each copy
    // went to every matching lane, and each handler ran once per copy.
    temp_dir dir("overlap");
    const auto dur = GENERATE(durability::fsync, durability::process);
    auto so = options_for(dir, "sub");
    so.durability = dur;
    const std::string base = "test/" + so.client_id;
    std::mutex mu;
    std::map<std::string, int> wide, narrow;
    recorder probes;
    client sub(so);
    sub.subscribe(base + "/#", [&](const message& m) {
        if (m.payload == "probe") return;
        std::lock_guard<std::mutex> lk(mu);
        ++wide[m.payload];
    });
    sub.subscribe(base + "/ev", [&](const message& m) {
        if (m.payload == "probe") return probes.add(m.payload);
        std::lock_guard<std::mutex> lk(mu);
        ++narrow[m.payload];
    });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, base + "/ev", "probe", probes);
    REQUIRE(sub.wait_inbox_empty(10s));
    const auto delivered_before = sub.stats().delivered;
    constexpr int n = 40;
    for (int i = 0; i < n; ++i) pub->publish(base + "/ev", std::to_string(i)).get();
    // Every copy the broker sends has arrived (two per message), and each has been handled.
    REQUIRE(eventually([&] {
        std::lock_guard<std::mutex> lk(mu);
        return wide.size() == std::size_t(n) && narrow.size() == std::size_t(n);
    }, 20s));
    // Every copy the broker sends has been stored (two per message; a late probe may add one).
    REQUIRE(eventually([&] { return sub.stats().delivered - delivered_before >= 2 * n; }, 20s));
    REQUIRE(sub.wait_inbox_empty(20s));
    std::lock_guard<std::mutex> lk(mu);
    for (int i = 0; i < n; ++i) {
        INFO("message " << i);
        CHECK(wide[std::to_string(i)] == 1);
        CHECK(narrow[std::to_string(i)] == 1);
    }
}

TEST_CASE("properties a broker would refuse are refused before anything is stored", "[errors]") {
    temp_dir dir("props");
    client c(options_for(dir, "c"));
    const std::string topic = "test/" + c.options().client_id + "/p";
    const std::string bad = "\xff\xfe";
    auto with = [](auto set) {
        publish_options o;
        set(o.props);
        return o;
    };
    CHECK_THROWS_AS(c.publish(topic, "x", with([&](message_properties& p) { p.user.emplace_back("k", bad); })),
                    invalid_property);
    CHECK_THROWS_AS(c.publish(topic, "x", with([&](message_properties& p) { p.user.emplace_back(bad, "v"); })),
                    invalid_property);
    CHECK_THROWS_AS(c.post(topic, "x", with([&](message_properties& p) { p.content_type = bad; })), invalid_property);
    CHECK_THROWS_AS(c.post(topic, "x", with([&](message_properties& p) { p.content_type = std::string("a\0b", 3); })),
                    invalid_property);
    CHECK_THROWS_AS(c.post(topic, "x", with([&](message_properties& p) { p.response_topic = "a/+/b"; })),
                    invalid_property);
    CHECK_THROWS_AS(c.post(topic, "x", with([&](message_properties& p) { p.user.emplace_back("k", std::string(70000, 'v')); })),
                    invalid_property);
    CHECK(c.stats().outbox == 0);
    // Valid ones go through.
    c.post(topic, "x", with([&](message_properties& p) {
        p.user.emplace_back("k", "v\xc3\xa9");
        p.response_topic = topic + "/reply";
        p.correlation_data = std::string("\0\xff", 2);
    }));
    CHECK(c.stats().outbox == 1);
}

TEST_CASE("close() from a handler returns, and the client is destroyed cleanly", "[events]") {
    temp_dir dir("selfclose");
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/x";
    std::atomic<bool> closed{false};
    auto sub = std::make_unique<client>(so);
    client* self = sub.get();
    sub->subscribe(topic, [&](const message&) {
        if (closed.exchange(true)) return;
        self->close();  // from the lane's own thread
    });
    sub->connect();
    REQUIRE(sub->wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    REQUIRE(eventually([&] {
        pub->publish(topic, "x").get();
        return closed.load();
    }, 20s));
    sub.reset();  // joined the other threads and waited for the lane that close() left running
    SUCCEED("destroyed after close() from a handler");
}

TEST_CASE("an arrival that cannot be taken in is not acknowledged: it comes again and is handled once",
          "[events][storage]") {
    // A store whose commit throws something other than a storage error (here std::bad_alloc, as a copy
    // of a large payload could): the connection is cut before the acknowledgement leaves, and the broker
    // sends the message again on the next connection. With fsync under MQTT 5 the commit is queued and the
    // acknowledgement waits in the session's ack gate, which the refusal cuts.
    temp_dir dir("refused");
    const auto version = GENERATE(5, 4);
    const auto dur = GENERATE(durability::process, durability::fsync);
    INFO("MQTT version " << version << ", durability " << (dur == durability::fsync ? "fsync" : "process"));
    store_options sto;
    sto.durability = dur;
    std::shared_ptr<store> inner(open_lmdb_store(dir / ("sub" + std::to_string(version)), sto));
    struct flaky : forwarding_store {
        std::atomic<int> failures{0};
        using forwarding_store::forwarding_store;
        void commit(const std::vector<write_op>& b) override {
            for (const auto& op : b)
                if (op.tbl == table::incoming && op.value && op.value->find("boom") != std::string::npos &&
                    failures.fetch_add(1) < 6)
                    throw std::bad_alloc();
            forwarding_store::commit(b);
        }
    };
    auto s = std::make_shared<flaky>(inner);
    auto so = options_for(dir, "sub");
    so.client_id += std::to_string(version);
    so.mqtt_version = version;
    so.store = s;
    so.reconnect_min = 20ms;
    std::atomic<int> losses{0};
    so.hooks.on_connection_lost = [&](const std::string&) { ++losses; };
    counting_subscriber c(so);
    REQUIRE(c.sub.wait_connected(10s));
    auto po = options_for(dir, "pub");
    po.mqtt_version = version;
    auto pub = connected(po);
    publish_until_heard(*pub, c.topic, "probe", c.probes);
    pub->publish(c.topic, "before").get();
    pub->publish(c.topic, "boom").get();
    pub->publish(c.topic, "after").get();
    const bool all = eventually([&] { return c.distinct() == 3; }, 30s);
    INFO("failed commits " << s->failures.load() << ", connection losses " << losses.load() << ", handled "
                           << c.distinct() << " of 3, inbox " << c.sub.stats().inbox);
    REQUIRE(all);
    REQUIRE(c.sub.wait_inbox_empty(10s));
    CHECK(s->failures.load() >= 6);
    CHECK(losses.load() >= 1);  // cut, so that no acknowledgement left
    CHECK(c.handled("before") == 1);
    CHECK(c.handled("boom") == 1);
    CHECK(c.handled("after") == 1);
}

TEST_CASE("a message whose commit outlasts its connection is handled once after the reconnect", "[events][storage]") {
    // With fsync under MQTT 5, a message's commit may still run when the connection it came on is cut (here
    // because the message before it could not be stored). The broker sends it again on the next connection,
    // and its first copy's record must be in place by then to tell the resend from a new message: the
    // reconnect waits for the commit. Without that wait the commit below ends once the client has
    // reconnected, and the handler runs twice.
    temp_dir dir("outlast");
    store_options sto;
    sto.durability = durability::fsync;
    std::shared_ptr<store> inner(open_lmdb_store(dir / "sub", sto));
    std::atomic<int> connections{0};
    std::atomic<bool> after_received{false};
    struct slow : forwarding_store {
        std::function<void(const std::vector<write_op>&)> before;
        using forwarding_store::forwarding_store;
        void commit(const std::vector<write_op>& b) override {
            before(b);
            forwarding_store::commit(b);
        }
    };
    auto s = std::make_shared<slow>(inner);
    std::atomic<int> failures{0};
    auto holds = [](const std::vector<write_op>& b, const char* what) {
        return std::any_of(b.begin(), b.end(), [&](const write_op& op) {
            return op.tbl == table::incoming && op.value && op.value->find(what) != std::string::npos;
        });
    };
    s->before = [&](const std::vector<write_op>& b) {
        if (holds(b, "boom") && connections.load() < 2) {
            // Fails on the first connection, once "after" has arrived: that one is committed on its own, after
            // this has cut the connection.
            ++failures;
            eventually([&] { return after_received.load(); }, 5s);
            throw std::bad_alloc();
        }
        // Until the client has connected again, or for 2 s where the reconnect waits for this commit.
        if (holds(b, "after") && failures.load() > 0) eventually([&] { return connections.load() >= 2; }, 2s);
    };
    auto so = options_for(dir, "sub");
    so.store = s;
    so.reconnect_min = 20ms;
    so.hooks.on_server = [&](const std::string&) { ++connections; };
    so.hooks.on_packet_receive = [&](const std::string&, const std::string& payload) {
        if (payload == "after") after_received = true;
    };
    counting_subscriber c(so);
    REQUIRE(c.sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, c.topic, "probe", c.probes);
    pub->publish(c.topic, "boom").get();
    pub->publish(c.topic, "after").get();
    REQUIRE(eventually([&] { return c.distinct() == 2; }, 30s));
    // A second copy would come before a message published later, on the same connection.
    const auto probed = c.probes.size();
    pub->publish(c.topic, "probe").get();
    REQUIRE(c.probes.wait_size(probed + 1, 10s));
    REQUIRE(c.sub.wait_inbox_empty(10s));
    CHECK(failures.load() >= 1);
    CHECK(connections.load() >= 2);
    CHECK(c.handled("boom") == 1);
    CHECK(c.handled("after") == 1);
}

namespace {

// An MQTT 5 QoS 2 PUBLISH as Paho keeps it in an `r5-` record: fixed header, remaining length, topic,
// packet id, no properties, payload.
std::string publish_record(const std::string& topic, int packet_id, const std::string& payload) {
    std::string body;
    body += char(topic.size() >> 8);
    body += char(topic.size() & 0xff);
    body += topic;
    body += char(packet_id >> 8);
    body += char(packet_id & 0xff);
    body += '\0';  // property length
    body += payload;
    std::string rec(1, '\x34');  // PUBLISH, QoS 2, DUP clear
    for (std::size_t n = body.size();;) {
        const char b = char(n % 128);
        n /= 128;
        rec += n ? char(b | 0x80) : b;
        if (!n) break;
    }
    return rec + body;
}

}  // namespace

TEST_CASE("a new message under the packet id of a flow the broker forgot is delivered", "[events][stale]") {
    // A broker restarted from an older snapshot has forgotten flows the client still holds records of,
    // and sends new messages under their packet ids without DUP. Paho, had it restored those records,
    // would take each for a resend and acknowledge it without delivering it.
    temp_dir dir("stale");
    auto so = options_for(dir, "sub");
    so.reconnect_min = 20ms;
    std::atomic<int> losses{0};
    so.hooks.on_connection_lost = [&](const std::string&) { ++losses; };
    const std::string topic = "test/" + so.client_id + "/x";
    std::mutex mu;
    std::map<std::string, int> got;
    recorder probes;
    auto handler = [&](const message& m) {
        if (m.payload == "probe") return probes.add(m.payload);
        std::lock_guard<std::mutex> lk(mu);
        ++got[m.payload];
    };
    auto pub = connected(options_for(dir, "pub"));
    {
        client sub(so);  // makes the session and its subscription at the broker
        sub.subscribe(topic, handler);
        sub.connect();
        REQUIRE(sub.wait_connected(10s));
        publish_until_heard(*pub, topic, "probe", probes);
        REQUIRE(sub.wait_inbox_empty(10s));
    }
    {
        // Records of flows the broker no longer knows, under the next packet ids it will use.
        auto s = open_store(store_kind::lmdb, so.store_dir, store_options{so.durability});
        for (int id = 1; id <= 200; ++id) s->session().put("r5-" + std::to_string(id), publish_record(topic, id, "old"), false);
    }
    client sub(so);
    sub.subscribe(topic, handler);
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    for (const std::string p : {"a", "b", "c"}) pub->publish(topic, p).get();
    REQUIRE(eventually([&] {
        std::lock_guard<std::mutex> lk(mu);
        return got.size() == 3;
    }, 30s));
    CHECK(losses.load() == 0);  // nothing to cut: Paho holds none of those ids
    std::lock_guard<std::mutex> lk(mu);
    for (const std::string p : {"a", "b", "c"}) CHECK(got[p] == 1);
    CHECK(got.count("old") == 0);
}

namespace {

// What a publisher's hooks report in the maximum-packet-size tests: connection losses, and each dead
// letter as "<first 3 bytes of the payload>: <reason>".
struct refusals {
    std::atomic<int> losses{0};
    std::mutex mu;
    std::vector<std::string> dead;

    void watch(client_options& o) {
        o.hooks.on_connection_lost = [this](const std::string&) { ++losses; };
        o.hooks.on_dead_letter = [this](const message& m, const std::string& reason) {
            std::lock_guard<std::mutex> lk(mu);
            dead.push_back(m.payload.substr(0, 3) + ": " + reason);
        };
    }
    // Exactly one dead letter, "big", refused for being over `limit` bytes.
    void check_one_big(std::uint32_t limit) {
        std::lock_guard<std::mutex> lk(mu);
        REQUIRE(dead.size() == 1);
        CHECK(dead[0].rfind("big: ", 0) == 0);
        CHECK(dead[0].find("larger than the broker takes (" + std::to_string(limit) + " bytes)") != std::string::npos);
    }
};

// A subscriber of `topic` at `b`, connected, recording the payloads it handles in `got`.
std::unique_ptr<client> recording_subscriber(const temp_dir& dir, const broker& b, const std::string& topic,
                                             recorder& got) {
    auto sub = std::make_unique<client>(options_for(dir, "sub", b.uri()));
    sub->subscribe(topic, [&got](const message& m) { got.add(m.payload); });
    sub->connect();
    REQUIRE(sub->wait_connected(10s));
    return sub;
}

// A broker that drops the connection at a packet over 2,048 bytes, the options of an MQTT 3.1.1 publisher
// of `topic` there, and a subscriber recording what arrives in `got`.
struct limited_broker_311 {
    broker b{"max_packet_size 2048\n"};
    temp_dir dir;
    client_options po;
    std::string topic;
    recorder got;
    std::unique_ptr<client> sub;

    explicit limited_broker_311(const std::string& name) : dir(name), po(options_for(dir, "pub", b.uri())) {
        po.mqtt_version = 4;
        po.reconnect_min = 20ms;
        topic = "test/" + po.client_id + "/x";
        sub = recording_subscriber(dir, b, topic, got);
    }
};

}  // namespace

TEST_CASE("a message over the broker's maximum packet size is refused, or dead-lettered if stored before",
          "[errors][too-large]") {
    // Mosquitto drops the connection of a client that sends a packet over its max_packet_size (DISCONNECT
    // 0x95). A record stored before the limit was known was sent first again on every connection, for ever.
    broker b("max_packet_size 2048\n");
    temp_dir dir("too-large");
    auto po = options_for(dir, "pub", b.uri());
    po.reconnect_min = 20ms;
    refusals seen;
    seen.watch(po);
    const std::string topic = "test/" + po.client_id + "/x";
    recorder got;
    auto sub = recording_subscriber(dir, b, topic, got);

    client pub(po);
    // Stored while the limit is unknown (not connected yet).
    auto small1 = pub.publish(topic, "one");
    auto big = pub.publish(topic, "big" + std::string(4000, 'x'));
    auto small2 = pub.publish(topic, "two");
    pub.connect();
    REQUIRE(pub.wait_connected(10s));
    CHECK(small1.wait_for(10s) == std::future_status::ready);
    CHECK(small2.wait_for(10s) == std::future_status::ready);
    REQUIRE(big.wait_for(10s) == std::future_status::ready);
    CHECK_THROWS_AS(big.get(), broker_error);
    REQUIRE(got.wait_size(2, 10s));
    CHECK(got.items() == std::vector<std::string>{"one", "two"});
    CHECK(seen.losses.load() == 0);
    seen.check_one_big(2048);
    const auto letters = pub.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].record.outgoing);  // a replay publishes it again (to a broker that takes it)

    // Known now: refused at once, nothing stored.
    CHECK_THROWS_AS(pub.publish(topic, std::string(4000, 'y')), message_too_large);
    CHECK(pub.wait_outbox_empty(10s));  // nothing of it was stored
    pub.publish(topic, "three").get();
    REQUIRE(got.wait_size(3, 10s));
    CHECK(seen.losses.load() == 0);
}

TEST_CASE("MQTT 3.1.1: with the broker's packet limit configured, a message over it is refused or dead-lettered",
          "[errors][too-large]") {
    // A 3.1.1 broker announces no limit. Mosquitto drops the connection of a client whose packet is over
    // its max_packet_size, and without a limit the outbox sent that record first again on every connection:
    // nothing behind it ever left.
    limited_broker_311 t("too-large-311");
    auto& po = t.po;
    const auto& topic = t.topic;
    auto& got = t.got;
    {
        // A run that did not know the limit stored these, and stopped before sending them.
        client earlier(po);
        earlier.publish(topic, "one");
        earlier.publish(topic, "big" + std::string(4000, 'x'));
        earlier.publish(topic, "two");
        CHECK(earlier.stats().outbox == 3);
    }
    refusals seen;
    seen.watch(po);
    po.broker_maximum_packet_size_311 = 2048;
    client pub(po);
    // Known before connecting: refused at once, nothing stored.
    CHECK_THROWS_AS(pub.publish(topic, std::string(4000, 'y')), message_too_large);
    pub.connect();
    REQUIRE(pub.wait_connected(10s));
    REQUIRE(got.wait_size(2, 10s));
    CHECK(got.items() == std::vector<std::string>{"one", "two"});
    REQUIRE(pub.wait_outbox_empty(10s));
    seen.check_one_big(2048);
    pub.publish(topic, "three").get();
    REQUIRE(got.wait_size(3, 10s));
    CHECK(seen.losses.load() == 0);
}

TEST_CASE("MQTT 3.1.1: a message the broker drops every connection at becomes a dead letter, and the rest goes",
          "[errors][too-large]") {
    // A 3.1.1 broker announces no packet limit, and this client was not told one: Mosquitto drops the
    // connection at a packet over its max_packet_size, with no reason code. The record was sent first again
    // on every connection, for ever, and nothing behind it left.
    limited_broker_311 t("too-large-311-unknown");
    auto& po = t.po;
    const auto& topic = t.topic;
    auto& got = t.got;
    refusals seen;
    seen.watch(po);
    if (std::getenv("XYMQTT_TEST_LOG"))
        po.hooks.on_log = [](log_level, const std::string& s) { std::fprintf(stderr, "[pub] %s\n", s.c_str()); };
    client pub(po);
    pub.connect();
    REQUIRE(pub.wait_connected(10s));
    auto one = pub.publish(topic, "one");
    auto big = pub.publish(topic, "big" + std::string(4000, 'x'));
    auto two = pub.publish(topic, "two");
    REQUIRE(big.wait_for(30s) == std::future_status::ready);
    CHECK_THROWS_AS(big.get(), broker_error);
    REQUIRE(got.wait_size(2, 10s));
    CHECK(got.items() == std::vector<std::string>{"one", "two"});
    CHECK(one.wait_for(10s) == std::future_status::ready);
    CHECK(two.wait_for(10s) == std::future_status::ready);
    {
        std::lock_guard<std::mutex> lk(seen.mu);
        REQUIRE(seen.dead.size() == 1);
        CHECK(seen.dead[0].rfind("big: ", 0) == 0);
        CHECK(seen.dead[0].find("broker_maximum_packet_size_311") != std::string::npos);
    }
    const auto letters = pub.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].record.outgoing);
    pub.publish(topic, "three").get();
    REQUIRE(got.wait_size(3, 10s));
}
