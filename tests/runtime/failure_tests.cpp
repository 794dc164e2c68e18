// Bad input and broken surroundings: clear errors, nothing lost.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "support/child_process.h"
#include "util.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

TEST_CASE("configuration errors are thrown at construction", "[errors]") {
    temp_dir dir("config");
    auto o = options_for(dir, "c");
    SECTION("empty client id") {
        o.client_id.clear();
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("no store") {
        o.store_dir.clear();
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("a store path that cannot be created") {
        std::ofstream(dir / "file") << "x";
        o.store_dir = dir / "file/store";
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("bad server URI") {
        o.server_uri = "not a uri";
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("bad MQTT version") {
        o.mqtt_version = 3;
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("an in-flight window of 0") {
        o.max_inflight = 0;
        CHECK_THROWS_AS(client(o), configuration_error);
        o.max_inflight = 10;
        o.broker_receive_maximum_311 = 0;
        CHECK_THROWS_AS(client(o), configuration_error);
    }
    SECTION("the same store twice") {
        client a(o);
        auto o2 = o;
        o2.client_id += "-2";
        CHECK_THROWS_AS(client(o2), configuration_error);
    }
}

TEST_CASE("invalid topics are refused before anything is stored", "[errors]") {
    temp_dir dir("topics");
    client c(options_for(dir, "c"));
    for (std::string bad : {std::string("a/+/b"), std::string("a/#"), std::string("a\0b", 3), std::string("\xff\xfe"),
                            std::string(""), std::string("$SYS/x"), std::string("\xc0\xaf")}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(c.publish(bad, "x"), invalid_topic);
    }
    CHECK(c.stats().outbox == 0);
    CHECK_THROWS_AS(c.subscribe("a/#/b", [](const message&) {}), invalid_topic);
    CHECK_THROWS_AS(c.subscribe("a/b#", [](const message&) {}), invalid_topic);
    CHECK_THROWS_AS(c.subscribe("$share//x", [](const message&) {}), invalid_topic);
    CHECK_NOTHROW(c.subscribe("$share/g/a/+/b/#", [](const message&) {}));
    CHECK_THROWS_AS(validate_topic_token("env", "a/b"), invalid_topic);
    CHECK_THROWS_AS(validate_topic_token("env", "+"), invalid_topic);
    CHECK_THROWS_AS(validate_topic_token("env", ""), invalid_topic);
    CHECK_NOTHROW(validate_topic_token("env", "prod-eu"));
}

TEST_CASE("topic matching follows MQTT", "[errors]") {
    CHECK(topic_matches("a/+/c", "a/b/c"));
    CHECK(topic_matches("a/#", "a"));
    CHECK(topic_matches("a/#", "a/b/c"));
    CHECK(topic_matches("#", "a/b"));
    CHECK_FALSE(topic_matches("#", "$SYS/x"));
    CHECK_FALSE(topic_matches("a/+", "a/b/c"));
    CHECK_FALSE(topic_matches("a/b", "a/b/c"));
    CHECK(topic_matches("$share/g/a/+", "a/b"));
    CHECK(topic_matches("+/+", "/x"));
}

TEST_CASE("a missing broker is reported, and publishes wait on disk", "[errors]") {
    temp_dir dir("nobroker");
    auto o = options_for(dir, "c", "tcp://127.0.0.1:" + std::to_string(free_port()));
    client c(o);
    c.connect();
    CHECK_FALSE(c.wait_connected(300ms));
    REQUIRE(eventually([&] { return !c.stats().last_error.empty(); }));
    CHECK(c.stats().last_error.find("failed") != std::string::npos);
    auto f = c.publish("test/nobroker", "queued");
    REQUIRE(eventually([&] { return c.stats().outbox == 1; }));
    CHECK(f.wait_for(0ms) == std::future_status::timeout);
}

TEST_CASE("wrong credentials are reported clearly", "[errors]") {
    temp_dir dir("auth");
    const std::string pw = dir / "passwd";
    std::ofstream(pw) << "";
    child_process mk({"mosquitto_passwd", "-b", pw, "alice", "secret"});
    REQUIRE(mk.wait() == 0);
    chmod(pw.c_str(), 0644);
    broker b("allow_anonymous false\npassword_file " + pw + "\n");
    auto o = options_for(dir, "c", b.uri());
    o.username = "alice";
    o.password = "wrong";
    client bad(o);
    bad.connect();
    CHECK_FALSE(bad.wait_connected(1s));
    REQUIRE(eventually([&] { return !bad.stats().last_error.empty(); }));
    INFO(bad.stats().last_error);
    CHECK(bad.stats().last_error.find("not authorized") != std::string::npos);
    CHECK(bad.stats().last_error.find("wrong") == std::string::npos);  // the password is never shown

    auto ok = options_for(dir, "ok", b.uri());
    ok.username = "alice";
    ok.password = "secret";
    auto good = connected(ok);
    CHECK(good->is_connected());
}

TEST_CASE("a broker that forgets the session gets the outbox again and the subscriptions renewed",
          "[events][broker]") {
    temp_dir dir("nosession");
    broker b;
    auto so = options_for(dir, "sub", b.uri());
    auto po = options_for(dir, "pub", b.uri());
    std::atomic<int> inits{0};
    so.hooks.on_init = [&] { ++inits; };
    const std::string topic = "test/" + so.client_id + "/forget";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    client pub(po);
    pub.connect();
    REQUIRE(pub.wait_connected(10s));
    publish_until_heard(pub, topic, "before", got);
    // The broker goes away and comes back with no memory of either client.
    b.kill();
    std::remove(b.persistence_file().c_str());
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 10; ++i) fs.push_back(pub.publish(topic, "during-" + std::to_string(i)));
    b.start();
    for (auto& f : fs) REQUIRE(f.wait_for(30s) == std::future_status::ready);
    // The outbox re-sent everything (all ten acknowledged by the new broker). Which of them reach the
    // subscriber depends on whether its re-subscription beat them: the broker forgot its session too.
    REQUIRE(eventually([&] { return inits == 2; }, 20s));  // first start, and again after the broker forgot
    REQUIRE(eventually([&] {
        pub.publish(topic, "after").get();
        for (auto& s : got.items())
            if (s == "after") return true;
        return false;
    }, 20s));  // the subscription was renewed
}

TEST_CASE("a broker restart mid-stream loses nothing", "[events][broker]") {
    temp_dir dir("restart");
    broker b;
    auto so = options_for(dir, "sub", b.uri());
    auto po = options_for(dir, "pub", b.uri());
    const std::string topic = "test/" + so.client_id + "/restart";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    client pub(po);
    pub.connect();
    REQUIRE(pub.wait_connected(10s));
    publish_until_heard(pub, topic, "x", got);
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 500; ++i) {
        fs.push_back(pub.publish(topic, std::to_string(i)));
        if (i == 200) b.stop();  // graceful: the broker saves its state
        if (i == 300) b.start();
    }
    int stuck = 0;
    eventually([&] {
        stuck = 0;
        for (auto& f : fs) stuck += f.wait_for(0s) != std::future_status::ready;
        return stuck == 0;
    }, 30s);
    INFO("outbox " << pub.stats().outbox << " published " << pub.stats().published);
    REQUIRE(stuck == 0);
    REQUIRE(eventually([&] {
        auto items = got.items();
        std::set<std::string> u(items.begin(), items.end());
        return u.size() >= 501;
    }, 60s));
}
