// The registry of Paho clients whose failed publish left them with freed memory (runtime/src/session/
// paho_clients.h): a connect that makes Paho re-send every connected client's flows waits until none of
// them is connected.
#include <mqtt/async_client.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <thread>

#include "../reliability/tcp_proxy.h"
#include "support/eventually.h"
#include "session/paho_clients.h"
#include "util.h"

using namespace std::chrono_literals;
using xymqtt::detail::tainted_clients;

namespace {

std::unique_ptr<mqtt::async_client> connected_paho(const std::string& name) {
    auto c = std::make_unique<mqtt::async_client>(xymqtt::test::shared_broker_uri(), xymqtt::test::unique_id(name),
                                                  mqtt::create_options(MQTTVERSION_5));
    auto opts = mqtt::connect_options_builder().mqtt_version(MQTTVERSION_5).clean_start(true).finalize();
    c->connect(opts)->wait_for(10s);
    REQUIRE(c->is_connected());
    return c;
}

}  // namespace

TEST_CASE("a client with a failed publish is awaited until Paho has disconnected it, then dropped",
          "[tainted]") {
    tainted_clients reg;
    auto x = connected_paho("tainted");
    reg.add(x.get());

    // Still connected: the wait lasts until its deadline and counts it.
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(reg.await_disconnected(t0 + 150ms) == 1);
    CHECK(std::chrono::steady_clock::now() - t0 >= 150ms);

    // Disconnected meanwhile: the wait ends once Paho says so, well before its deadline.
    auto bye = std::async(std::launch::async, [&] {
        std::this_thread::sleep_for(200ms);  // the wait is under way by then
        x->disconnect()->wait_for(10s);
    });
    const auto t1 = std::chrono::steady_clock::now();
    CHECK(reg.await_disconnected(t1 + 20s) == 0);
    CHECK_FALSE(x->is_connected());
    CHECK(std::chrono::steady_clock::now() - t1 < 10s);
    bye.get();

    // Seen disconnected once, it is dropped: connected again, it no longer holds anyone up.
    auto opts = mqtt::connect_options_builder().mqtt_version(MQTTVERSION_5).clean_start(true).finalize();
    x->connect(opts)->wait_for(10s);
    REQUIRE(x->is_connected());
    CHECK(reg.await_disconnected(std::chrono::steady_clock::now()) == 0);
    x->disconnect()->wait_for(10s);
}

TEST_CASE("a forgotten client is not asked again", "[tainted]") {
    tainted_clients reg;
    auto y = connected_paho("forgotten");
    auto z = connected_paho("still-tainted");
    reg.add(y.get());
    reg.add(z.get());
    CHECK(reg.await_disconnected(std::chrono::steady_clock::now()) == 2);
    reg.forget(y.get());
    CHECK(reg.await_disconnected(std::chrono::steady_clock::now()) == 1);
    reg.forget(z.get());
    CHECK(reg.await_disconnected(std::chrono::steady_clock::now()) == 0);
    y->disconnect()->wait_for(10s);
    z->disconnect()->wait_for(10s);
}

TEST_CASE("a connect that makes Paho re-send every client's flows waits for a client with a failed publish",
          "[tainted]") {
    using namespace xymqtt;
    test::temp_dir dir("tainted");
    test::broker b;
    test::tcp_proxy proxy(b.port());
    auto o = test::options_for(dir, "resumer", proxy.uri());
    o.reconnect_min = 20ms;
    o.reconnect_max = 100ms;
    std::atomic<int> connects{0};
    std::atomic<bool> waiting{false};
    o.hooks.on_connect = [&](bool) { ++connects; };
    o.hooks.on_log = [&](log_level, const std::string& line) {
        if (line.find("waiting until Paho has disconnected") != std::string::npos) waiting = true;
    };
    auto owned = test::connected(o);
    auto& pub = *owned;

    // Publishes that leave but are never acknowledged: Paho keeps them as flows to resume.
    proxy.hold_to_clients(true);
    const auto before = proxy.bytes_to_server();
    for (int i = 0; i < 3; ++i) pub.post("tainted/" + o.client_id, "m" + std::to_string(i));
    REQUIRE(test::eventually([&] { return proxy.bytes_to_server() >= before + 3 * 20; }, 10s));

    // Another Paho client of the process, tainted and still connected.
    auto x = connected_paho("tainted-peer");
    struct forget_x {
        mqtt::async_client* c;
        ~forget_x() { tainted_clients::process().forget(c); }
    } guard{x.get()};
    tainted_clients::process().add(x.get());

    REQUIRE(proxy.cut_all_and_wait());
    proxy.hold_to_clients(false);
    // The reconnect resumes flows, so Paho will re-send every connected client's: it waits for x, for up to
    // 5 s. (A connect that did not wait is done about 2 s after the loss here: Paho's receive thread serves
    // two clients' sockets.)
    REQUIRE(test::eventually([&] { return waiting.load(); }, 20s));
    REQUIRE(connects == 1);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < 3s && connects == 1)
        std::this_thread::sleep_for(5ms);  // watching a count that must not change meanwhile
    CHECK(connects == 1);
    x->disconnect()->wait_for(10s);
    REQUIRE(test::eventually([&] { return connects == 2; }, 10s));
    CHECK(pub.wait_outbox_empty(10s));
}
