// Results routed to their caller (result_routing::per_client) against a real Mosquitto: each caller
// receives and stores only its own results, on a topic of its own, across a restart; bad input.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>

#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

client_options per_client(const temp_dir& dir, const std::string& name) {
    auto o = options_for(dir, name);
    o.results = result_routing::per_client;
    return o;
}

// A server that echoes the body; waits (without Catch's assertions, which are for the test's thread)
// while `hold` says so for a body "held".
std::unique_ptr<client> echo_server(const temp_dir& dir, std::string& command, std::atomic<bool>* hold = nullptr) {
    auto so = options_for(dir, "server");
    command = "test/" + so.client_id + "/cmd/echo";
    auto server = std::make_unique<client>(so);
    server->command_register(command, [hold](const invocation& inv, call_context&) {
        if (hold && inv.body == "held") eventually([&] { return !hold->load(); }, 30s);
        return inv.format == wire_format::json ? std::string(R"({"echo":true})") : "echo:" + inv.body;
    });
    server->connect();
    REQUIRE(server->wait_connected(10s));
    return server;
}

}  // namespace

TEST_CASE("per-client results: each caller receives and stores only its own results, on its own topic",
          "[commands][routing]") {
    temp_dir dir("route");
    std::string cmd;
    auto server = echo_server(dir, cmd);
    auto a = connected(per_client(dir, "a")), b = connected(per_client(dir, "b"));
    wait_until_served(*a, cmd);
    wait_until_served(*b, cmd);
    // Watchers of the shared result topics and of every per-client result topic.
    auto watch = connected(options_for(dir, "watch"));
    recorder shared, routed;
    watch->subscribe(cmd + "/resolve", [&](const message& m) { shared.add(m.topic); });
    watch->subscribe(cmd + "/reject", [&](const message& m) { shared.add(m.topic); });
    watch->subscribe("xymqtt/results/#", [&](const message& m) { routed.add(m.topic + " " + m.props.correlation_data); });
    REQUIRE(eventually([&] {  // the watcher's subscriptions are in place once its own call comes back
        auto p = a->call_async(cmd, "probe", {}, 500ms);
        try {
            p.result.get();
        } catch (const timeout_error&) {
            return false;
        }
        return routed.size() > 0;
    }, 30s));

    const auto a_before = a->stats().delivered, b_before = b->stats().delivered;
    const auto routed_before = routed.size();
    std::vector<pending_call> calls_a, calls_b;
    for (int i = 0; i < 20; ++i) {
        calls_a.push_back(a->call_async(cmd, "a" + std::to_string(i), {}, 30s));
        calls_b.push_back(b->call_async(cmd, "b" + std::to_string(i), {}, 30s));
    }
    for (int i = 0; i < 20; ++i) {
        CHECK(calls_a[std::size_t(i)].result.get().body == "echo:a" + std::to_string(i));
        CHECK(calls_b[std::size_t(i)].result.get().body == "echo:b" + std::to_string(i));
    }
    // Each caller stored its own 20 results only (shared topics: 40 each). With fsync a result completes
    // its call while its commit syncs, and is counted once stored: await the count, and allow the last
    // probe's, which may have been stored after the counts were read.
    REQUIRE(eventually([&] { return a->stats().delivered - a_before >= 20 && b->stats().delivered - b_before >= 20; }));
    CHECK(a->stats().delivered - a_before <= 21);
    CHECK(b->stats().delivered - b_before <= 21);
    REQUIRE(eventually([&] { return routed.size() >= routed_before + 40; }));
    CHECK(shared.size() == 0);
    // <prefix>/<client id>/<command>/resolve, with the call's message id as correlation data.
    const auto items = routed.items();
    const std::string a_topic = "xymqtt/results/" + a->options().client_id + "/" + cmd + "/resolve ";
    for (auto& c : calls_a)
        CHECK(std::count(items.begin(), items.end(), a_topic + c.handle.message_id()) == 1);
}

TEST_CASE("per-client results: a result sent while the caller was away arrives after its restart",
          "[commands][routing]") {
    temp_dir dir("routeoff");
    std::string cmd;
    std::atomic<bool> hold{true};
    auto server = echo_server(dir, cmd, &hold);
    const auto co = per_client(dir, "caller");
    std::string id;
    {
        client caller(co);
        caller.subscribe_results(cmd, [](const command_result&) {});
        caller.connect();
        REQUIRE(caller.wait_connected(10s));
        wait_until_served(caller, cmd);
        id = caller.call(cmd, "held").message_id();
        REQUIRE(caller.wait_outbox_empty(10s));
        caller.close();  // gone before the result is published
    }
    const auto handled = server->stats().handled;
    hold = false;
    REQUIRE(eventually([&] { return server->stats().handled > handled; }, 20s));
    recorder got;
    client caller(co);
    caller.subscribe_results(cmd, [&](const command_result& r) { got.add(r.message_id + ":" + r.body); });
    caller.connect();
    REQUIRE(got.wait_size(1));
    CHECK(got.items()[0] == id + ":echo:held");
}

TEST_CASE("per-client results with JSON calls, and a server answers a JSON peer on the shared topics",
          "[commands][routing]") {
    temp_dir dir("routejson");
    std::string cmd;
    auto server = echo_server(dir, cmd);
    auto caller = connected(per_client(dir, "caller"));
    wait_until_served(*caller, cmd);
    call_options o;
    o.format = wire_format::json;
    auto r = caller->call_async(cmd, R"({"n":1})", o, 30s).result.get();
    CHECK(r.ok);
    CHECK(json::parse(r.body)["echo"] == true);

    // An xy-mqtt peer's invoke names no response topic: the answer goes to <command>/resolve.
    auto peer = connected(options_for(dir, "peer"));
    recorder shared;
    peer->subscribe(cmd + "/resolve", [&](const message& m) { shared.add(m.payload); });
    publish_until_heard(*peer, cmd + "/invoke", R"({"messageId":"peer-1","n":2})", shared, 1s);
    CHECK(json::parse(shared.items()[0])["messageId"] == "peer-1");
}

TEST_CASE("an invoke naming a response topic without correlation data is answered there, without it",
          "[commands][routing]") {
    temp_dir dir("routenocorr");
    std::string cmd;
    auto server = echo_server(dir, cmd);
    auto raw = connected(options_for(dir, "raw"));
    recorder answers;
    raw->subscribe("elsewhere/answers/#", [&](const message& m) { answers.add(m.topic + "|" + m.props.correlation_data); });
    publish_options po;
    po.props.response_topic = "elsewhere/answers";
    publish_until_heard(*raw, cmd + "/invoke", R"({"messageId":"nocorr-1","n":3})", answers, 1s, po);
    CHECK(answers.items()[0] == "elsewhere/answers/resolve|");
}

TEST_CASE("per-client results: unknown ids and stray messages on the caller's topics are ignored, calls go on",
          "[commands][routing]") {
    temp_dir dir("routestray");
    std::string cmd;
    auto server = echo_server(dir, cmd);
    auto co = per_client(dir, "caller");
    recorder warnings;
    co.hooks.on_log = [&](log_level level, const std::string& text) {
        if (level == log_level::warning) warnings.add(text);
    };
    auto caller = connected(co);
    std::atomic<int> handed{0};
    caller->subscribe_results(cmd, [&](const command_result&) { ++handed; });
    wait_until_served(*caller, cmd);
    const auto root = "xymqtt/results/" + co.client_id;
    auto raw = connected(options_for(dir, "raw"));
    publish_options po;
    po.props.content_type = "application/json";
    raw->publish(root + "/" + cmd + "/resolve", R"({"messageId":"never-called","echo":true})", po).get();
    raw->publish(root + "/not-a-result", "junk").get();
    REQUIRE(warnings.wait_size(1));
    CHECK(warnings.items()[0].find("not-a-result") != std::string::npos);
    const int before = handed;
    auto r = caller->call_async(cmd, "after", {}, 30s).result.get();
    CHECK(r.body == "echo:after");
    CHECK(handed.load() == before);  // the stray result reached no handler
    CHECK(caller->stats().dead_letters == 0);
}

TEST_CASE("per-client results need MQTT 5 and a client id and prefix that are topic levels",
          "[commands][routing][errors]") {
    temp_dir dir("routebad");
    auto o = per_client(dir, "c");
    o.mqtt_version = 4;
    CHECK_THROWS_AS(client(o), configuration_error);
    o = per_client(dir, "c");
    o.client_id = "a/b";
    CHECK_THROWS_AS(client(o), configuration_error);
    o = per_client(dir, "c");
    o.client_id = "a+b";
    CHECK_THROWS_AS(client(o), configuration_error);
    o = per_client(dir, "c");
    o.results_prefix = "results/#";
    CHECK_THROWS_AS(client(o), configuration_error);
    o = per_client(dir, "c");
    CHECK_NOTHROW(client(o));

    // A call that asks for per-client result topics on a client that cannot have them.
    auto v4 = options_for(dir, "v4");
    v4.mqtt_version = 4;
    client c4(v4);
    call_options co;
    co.format = wire_format::json;
    co.results = result_routing::per_client;
    CHECK_THROWS_AS(c4.call_async("test/cmd/x", "{}", co, 1s), configuration_error);
    CHECK_THROWS_AS(c4.subscribe_results("test/cmd/x", [](const command_result&) {}, result_routing::per_client),
                    configuration_error);
    CHECK(c4.stats().outbox == 0);
}
