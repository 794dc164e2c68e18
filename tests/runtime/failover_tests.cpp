// Several server URIs (failover) and the broker capabilities checked at connect, against real Mosquittos.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "session/broker_capabilities.h"
#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

namespace {

// The URIs hooks::on_server reported, in order.
struct server_log {
    mutable std::mutex mu;
    std::vector<std::string> uris;
    void attach(client_options& o) {
        o.hooks.on_server = [this](const std::string& uri) {
            std::lock_guard<std::mutex> lk(mu);
            uris.push_back(uri);
        };
    }
    std::vector<std::string> get() const {
        std::lock_guard<std::mutex> lk(mu);
        return uris;
    }
};

// A subscription recording each payload.
void record(client& c, const std::string& filter, recorder& r) {
    c.subscribe(filter, [&r](const message& m) { r.add(m.payload); });
}

}  // namespace

TEST_CASE("server_uris: a URI nobody answers is skipped, and the hook and stats name the one in use", "[failover]") {
    temp_dir dir("failover-skip");
    broker b;
    const std::string dead = "tcp://127.0.0.1:" + std::to_string(free_port());
    auto o = options_for(dir, unique_id("skip"), b.uri());
    o.server_uris = {dead, b.uri()};
    server_log servers;
    servers.attach(o);
    auto c = connected(o);
    CHECK(servers.get() == std::vector<std::string>{b.uri()});
    CHECK(c->stats().server_uri == b.uri());
    recorder got;
    record(*c, "failover/skip", got);
    c->publish("failover/skip", "one").get();
    REQUIRE(got.wait_size(1));
    CHECK(got.items() == std::vector<std::string>{"one"});
}

TEST_CASE("server_uris: the broker in use killed, the client goes on with the next one, and back", "[failover]") {
    const int version = GENERATE(5, 4);
    INFO("MQTT version " << version);
    temp_dir dir("failover-kill");
    broker a, b;
    auto o = options_for(dir, unique_id("kill"), a.uri());
    o.server_uris = {a.uri(), b.uri()};
    o.mqtt_version = version;
    server_log servers;
    servers.attach(o);
    auto c = connected(o);
    recorder got;
    record(*c, "failover/kill", got);
    c->publish("failover/kill", "on a").get();
    REQUIRE(got.wait_size(1));
    CHECK(c->stats().server_uri == a.uri());

    a.kill();
    // Published while the client finds its way to b: kept in the outbox, sent there.
    auto queued = c->publish("failover/kill", "while failing over");
    REQUIRE(eventually([&] { return servers.get().size() == 2; }, 30s));
    CHECK(servers.get().back() == b.uri());
    CHECK(c->stats().server_uri == b.uri());
    queued.get();
    c->publish("failover/kill", "on b").get();
    REQUIRE(got.wait_size(3));

    // b goes too; a is back: the client wraps around to it.
    a.start();
    b.kill();
    REQUIRE(eventually([&] { return servers.get().size() == 3; }, 30s));
    CHECK(servers.get().back() == a.uri());
    c->publish("failover/kill", "on a again").get();
    REQUIRE(got.wait_size(4));
    const auto items = got.items();
    CHECK(std::set<std::string>(items.begin(), items.end()) ==
          std::set<std::string>{"on a", "while failing over", "on b", "on a again"});
}

TEST_CASE("a client connects without waiting for Paho's 1-s poll while another client of the process is quiet",
          "[failover]") {
    // Paho C 1.3 has one receive thread per process; with another client's quiet connection in its poll it
    // noticed a new connection's handshake up to 1 s late (session/paho_waker.h): connects and failovers of
    // 1.1 to 3.4 s. The quiet client now wakes it. Each connect here is a fresh client, as after a restart.
    const int version = GENERATE(5, 4);
    INFO("MQTT version " << version);
    temp_dir dir("paho-wake");
    broker a;
    auto quiet_options = options_for(dir, unique_id("quiet"), a.uri());
    quiet_options.mqtt_version = version;
    auto quiet = connected(quiet_options);
    std::vector<long long> took_ms;
    for (int i = 0; i < 4; ++i) {
        auto o = options_for(dir, unique_id("late" + std::to_string(i)), a.uri());
        o.mqtt_version = version;
        client c(o);
        const auto t0 = std::chrono::steady_clock::now();
        c.connect();
        REQUIRE(c.wait_connected(10s));
        took_ms.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
    }
    for (auto t : took_ms) UNSCOPED_INFO("connect took " << t << " ms");
    // A second would be Paho's poll; one slow connect of four is left to a busy machine.
    CHECK(std::count_if(took_ms.begin(), took_ms.end(), [](long long t) { return t < 700; }) >= 3);
}

TEST_CASE("a broker that grants only QoS 1 is refused with a clear error, and the next URI is used", "[failover][errors]") {
    temp_dir dir("failover-qos");
    broker qos1("max_qos 1\n");
    broker good;

    // Alone: never connected, and the reason says which capability is missing.
    auto lone = options_for(dir, unique_id("lone"), qos1.uri());
    client c(lone);
    c.connect();
    REQUIRE(eventually([&] { return c.stats().last_error.find("maximum QoS") != std::string::npos; }));
    INFO(c.stats().last_error);
    CHECK(c.stats().last_error.find("refused: the broker lacks maximum QoS: 1 granted") != std::string::npos);
    CHECK_FALSE(c.is_connected());

    // First in a list: passed over for the next.
    auto o = options_for(dir, unique_id("list"), qos1.uri());
    o.server_uris = {qos1.uri(), good.uri()};
    std::mutex mu;
    std::vector<std::string> errors;
    o.hooks.on_log = [&](log_level level, const std::string& line) {
        std::lock_guard<std::mutex> lk(mu);
        if (level == log_level::error) errors.push_back(line);
    };
    server_log servers;
    servers.attach(o);
    auto listed = connected(o);
    CHECK(servers.get() == std::vector<std::string>{good.uri()});
    std::lock_guard<std::mutex> lk(mu);
    REQUIRE_FALSE(errors.empty());
    CHECK(errors.front().find(qos1.uri() + " refused: the broker lacks maximum QoS") != std::string::npos);
}

TEST_CASE("server_uris: each URI is checked at construction", "[failover][errors]") {
    temp_dir dir("failover-config");
    auto o = options_for(dir, unique_id("config"));
    o.server_uris = {shared_broker_uri(), "http://127.0.0.1:1883"};
    CHECK_THROWS_WITH(client(o), Catch::Contains("server_uris scheme \"http\" is not supported"));
    o.server_uris = {"tcp://127.0.0.1:1883", "tcp://host:port"};
    CHECK_THROWS_WITH(client(o), Catch::Contains("server_uris \"tcp://host:port\" is not of the form"));
}

TEST_CASE("TLS settings with a plain tcp:// URI are refused: the connection would not be encrypted", "[errors][tls]") {
    temp_dir dir("tls-plain");
    auto o = options_for(dir, unique_id("plain"), "tcp://127.0.0.1:1883");
    o.tls = tls_options{};
    CHECK_THROWS_AS(client(o), configuration_error);
    CHECK_THROWS_WITH(client(o), Catch::Contains("tls is set but server_uri \"tcp://127.0.0.1:1883\" is plain MQTT"));
    o.server_uri = "ssl://127.0.0.1:8883";
    o.server_uris = {"ssl://127.0.0.1:8883", "mqtt://127.0.0.1:1883"};
    CHECK_THROWS_WITH(client(o), Catch::Contains("server_uris \"mqtt://127.0.0.1:1883\" is plain MQTT"));
}

TEST_CASE("broker capabilities: each one lacking or reduced is named", "[failover][unit]") {
    using detail::check_capabilities;
    detail::capability_needs needs;
    needs.session_expiry = 3600;
    detail::connack_capabilities all_defaults;
    CHECK(check_capabilities(all_defaults, needs).empty());

    auto one = [&](const detail::connack_capabilities& g, const detail::capability_needs& n) {
        const auto f = check_capabilities(g, n);
        REQUIRE(f.size() == 1);
        return f.front();
    };
    detail::connack_capabilities g;
    g.maximum_qos = 1;
    auto f = one(g, needs);
    CHECK(f.fatal);
    CHECK(f.text == "maximum QoS: 1 granted; events and commands are sent with QoS 2");
    g = {};
    g.maximum_qos = 2;
    CHECK(check_capabilities(g, needs).empty());

    g = {};
    g.receive_maximum = 0;
    CHECK(one(g, needs).fatal);
    g.receive_maximum = 1;
    CHECK(check_capabilities(g, needs).empty());

    g = {};
    g.shared_subscriptions = 0;
    CHECK(check_capabilities(g, needs).empty());  // not needed: no command served in a group
    auto grouped = needs;
    grouped.shared_subscriptions = true;
    f = one(g, grouped);
    CHECK(f.fatal);
    CHECK(f.text.rfind("shared subscriptions: not available", 0) == 0);

    g = {};
    g.session_expiry = 0;
    f = one(g, needs);
    CHECK(f.fatal);
    CHECK(f.text.rfind("session expiry: 0 s granted", 0) == 0);
    g.session_expiry = 60;
    f = one(g, needs);
    CHECK_FALSE(f.fatal);  // kept for a minute: reduced, not lacking
    CHECK(f.text == "session expiry: 60 s granted of 3600 s asked; messages for this client are kept only that long "
                    "while it is away");
    g.session_expiry = 3600;
    CHECK(check_capabilities(g, needs).empty());

    g = {};
    g.maximum_qos = 0;
    g.session_expiry = 0;
    CHECK(check_capabilities(g, needs).size() == 2);  // every lack is reported, not only the first
}
