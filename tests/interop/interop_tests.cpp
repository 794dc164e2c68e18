// JSON interop with a JavaScript peer (peer.mjs: mqtt.js speaking xy-mqtt's protocol, MQTT 3.1.1 by
// default as xy-mqtt). Both directions of commands, and events both ways, against a real Mosquitto.
// The peer prints one JSON object per line; the tests wait for those lines, never for fixed times.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <sys/stat.h>

#include "../runtime/util.h"
#include "support/child_process.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// One run of peer.mjs.
class js_peer {
public:
    explicit js_peer(std::vector<std::string> args) {
        const std::string dir = XYMQTT_INTEROP_DIR;
        if (!exists(dir + "/node_modules/mqtt/package.json"))
            FAIL("the JavaScript peer's dependencies are not installed: run `npm ci --prefix " << dir
                                                                                          << "` (scripts/test does)");
        args.insert(args.begin(), {XYMQTT_NODE, dir + "/peer.mjs"});
        child_options o;
        o.cwd = dir;
        proc_ = std::make_unique<child_process>(std::move(args), o);
    }

    // Waits for a line {"event": name, ...} whose object satisfies pred; returns it.
    std::optional<json> wait_event(const std::string& name, const std::function<bool(const json&)>& pred,
                                   std::chrono::milliseconds timeout = 20s) {
        std::optional<json> found;
        proc_->wait_for_line(
            [&](const std::string& line) {
                auto j = parse(line);
                if (j && (*j)["event"] == name && pred(*j)) {
                    found = *j;
                    return true;
                }
                return false;
            },
            timeout);
        return found;
    }
    std::optional<json> wait_event(const std::string& name, std::chrono::milliseconds timeout = 20s) {
        return wait_event(name, [](const json&) { return true; }, timeout);
    }

    // Every line {"event": name, ...} printed so far.
    std::vector<json> events(const std::string& name) const {
        std::vector<json> out;
        for (const auto& line : proc_->lines()) {
            auto j = parse(line);
            if (j && (*j)["event"] == name) out.push_back(*j);
        }
        return out;
    }

    std::optional<int> wait(std::chrono::milliseconds timeout = 40s) { return proc_->wait(timeout); }
    std::string output() const { return proc_->output(); }

private:
    static std::optional<json> parse(const std::string& line) {
        auto j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("event")) return std::nullopt;
        return j;
    }
    std::unique_ptr<child_process> proc_;
};

std::string topic_base(const std::string& name) { return "interop/" + unique_id(name); }

client_options cpp_options(const temp_dir& dir, const std::string& name, int mqtt_version) {
    auto o = options_for(dir, name);
    o.mqtt_version = mqtt_version;
    return o;
}

call_options json_call() {
    call_options o;
    o.format = wire_format::json;
    return o;
}

// Calls until the server answers: proves the caller's and the server's subscriptions are in place.
command_result warm_up(client& caller, const std::string& command) {
    for (int i = 0; i < 40; ++i) {
        auto p = caller.call_async(command, R"({"n":-1})", json_call(), 500ms);
        try {
            return p.result.get();
        } catch (const timeout_error&) {
        }
    }
    FAIL("the command server never answered a warm-up call");
    return {};
}

// Results handed to subscribe_results (or seen on the raw result topics), by message id.
class result_log {
public:
    void add(const std::string& id, const std::string& what) {
        std::lock_guard<std::mutex> lk(mu_);
        by_id_[id].push_back(what);
    }
    bool has(const std::string& id) const {
        std::lock_guard<std::mutex> lk(mu_);
        return by_id_.count(id) != 0;
    }
    std::vector<std::string> of(const std::string& id) const {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = by_id_.find(id);
        return it == by_id_.end() ? std::vector<std::string>{} : it->second;
    }
    bool wait_for(const std::string& id, std::chrono::milliseconds timeout = 20s) const {
        return eventually([&] { return has(id); }, timeout);
    }

private:
    mutable std::mutex mu_;
    std::map<std::string, std::vector<std::string>> by_id_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// (a) A C++ server answers calls from the JavaScript caller.
// ---------------------------------------------------------------------------------------------
TEST_CASE("a C++ JSON command server answers a JavaScript caller: resolve, reject, 500, cancel", "[interop][commands]") {
    const auto [cpp_version, js_version] = GENERATE(Catch::Generators::table<int, int>({{5, 4}, {4, 4}, {5, 5}}));
    INFO("C++ client MQTT " << cpp_version << ", JS peer MQTT " << js_version);
    temp_dir dir("interop-srv");
    const std::string base = topic_base("srv");
    const std::string command = base + "/cmd/echo";
    const std::string started_topic = base + "/started";  // the JS caller cancels the call named here

    std::atomic<bool> on_cancel_ran{false}, cancelled_handler_returned{false};
    std::mutex seen_mu;
    std::vector<std::string> seen_bodies;  // invoke bodies as the C++ handler saw them
    client* server_ptr = nullptr;

    auto handler = [&](const invocation& inv, call_context& ctx) -> std::string {
        {
            std::lock_guard<std::mutex> lk(seen_mu);
            seen_bodies.push_back(inv.body);
        }
        auto req = json::parse(inv.body);
        const std::string what = req.value("do", "");
        if (what == "reject") throw command_error(409, "cpp conflict", R"({"why":"test","n":2})");
        if (what == "throw") throw std::runtime_error("cpp plain failure");
        if (what == "wait-cancel") {
            ctx.on_cancel([&] { on_cancel_ran = true; });
            auto sent = server_ptr->publish(started_topic, json{{"messageId", inv.message_id}}.dump());
            (void)sent;  // not awaited: the handler goes on to wait for the cancel
            eventually([&] { return ctx.cancelled(); }, 20s);
            cancelled_handler_returned = true;
            return json{{"late", true}}.dump();  // must never be published: the call was cancelled
        }
        return json{{"echo", req["n"]}, {"from", "cpp"}, {"text", "h\u00e9llo \u2713"}}.dump();
    };

    auto server = std::make_unique<client>(cpp_options(dir, "server", cpp_version));
    server_ptr = server.get();
    server->command_register(command, handler);
    server->connect();
    REQUIRE(server->wait_connected(10s));

    // An observer of the raw result topics, to prove nothing is published for the cancelled call.
    result_log raw;
    auto observer = connected(cpp_options(dir, "observer", cpp_version));
    for (const char* kind : {"/resolve", "/reject"}) {
        observer->subscribe(command + kind, [&raw, kind](const message& m) {
            auto j = json::parse(m.payload, nullptr, false);
            if (j.is_object() && j.contains("messageId")) raw.add(j["messageId"].get<std::string>(), kind);
        });
    }
    // Its subscriptions count as the result subscriptions `call` needs: warm up until a call of its own
    // is answered, which proves the server's and the observer's subscriptions are in place.
    bool warm = false;
    for (int i = 0; i < 40 && !warm; ++i) {
        auto h = observer->call(command, R"({"n":-1})", json_call());
        warm = raw.wait_for(h.message_id(), 500ms);
    }
    REQUIRE(warm);

    const json requests = json::array({
        {{"n", 1}},
        {{"n", 2}, {"do", "reject"}},
        {{"n", 3}, {"do", "throw"}},
        {{"n", 4}, {"do", "wait-cancel"}},
        {{"n", 5}},
    });
    js_peer js({"call", "--broker", shared_broker_uri(), "--id", unique_id("js-caller"), "--command", command,
                "--requests", requests.dump(), "--cancel-on", started_topic, "--mqtt-version",
                std::to_string(js_version)});
    const auto rc = js.wait();
    INFO("JS peer output:\n" << js.output());
    REQUIRE(rc == 0);

    std::map<int, std::string> ids;  // index -> messageId the JS caller used
    for (const auto& c : js.events("called")) ids[c["index"].get<int>()] = c["messageId"];
    REQUIRE(ids.size() == 5);
    std::map<int, json> results;
    for (const auto& kind : {"resolve", "reject"})
        for (const auto& r : js.events(kind)) results[r["index"].get<int>()] = r;

    // The invoke as the C++ server saw it: the request's fields with messageId merged in.
    {
        std::lock_guard<std::mutex> lk(seen_mu);
        bool found = false;
        for (const auto& b : seen_bodies) {
            auto j = json::parse(b);
            if (j.value("messageId", "") == ids[0]) {
                CHECK(j == json({{"n", 1}, {"messageId", ids[0]}}));
                found = true;
            }
        }
        CHECK(found);
    }

    // resolve: the handler's result object with messageId merged in.
    REQUIRE(results.count(0));
    CHECK(results[0]["event"] == "resolve");
    CHECK(results[0]["payload"] == json({{"echo", 1}, {"from", "cpp"}, {"text", "h\u00e9llo \u2713"}, {"messageId", ids[0]}}));

    // command_error: ok false, its status (a JSON number) and message, its body merged in.
    REQUIRE(results.count(1));
    CHECK(results[1]["event"] == "reject");
    CHECK(results[1]["payload"] ==
          json({{"messageId", ids[1]}, {"ok", false}, {"status", 409}, {"message", "cpp conflict"}, {"why", "test"}, {"n", 2}}));

    // A plain exception: xy-mqtt's {messageId, ok:false, status:500, message}.
    REQUIRE(results.count(2));
    CHECK(results[2]["event"] == "reject");
    CHECK(results[2]["payload"] ==
          json({{"messageId", ids[2]}, {"ok", false}, {"status", 500}, {"message", "cpp plain failure"}}));

    // Cancel during execution: the JS caller cancelled, on_cancel ran, nothing was published.
    CHECK(js.events("cancel").size() == 1);
    CHECK_FALSE(results.count(3));
    CHECK(on_cancel_ran);
    REQUIRE(eventually([&] { return cancelled_handler_returned.load(); }, 10s));

    REQUIRE(results.count(4));
    CHECK(results[4]["payload"]["echo"] == 5);

    // The calls after the cancelled one were answered, and the server's outbox is drained: had anything
    // been published for the cancelled call, the observer (subscribed to both result topics) had it.
    REQUIRE(raw.wait_for(ids[4]));
    REQUIRE(server->wait_outbox_empty(10s));
    REQUIRE(observer->wait_inbox_empty(10s));
    CHECK(raw.of(ids[0]) == std::vector<std::string>{"/resolve"});
    CHECK(raw.of(ids[1]) == std::vector<std::string>{"/reject"});
    CHECK(raw.of(ids[2]) == std::vector<std::string>{"/reject"});
    CHECK(raw.of(ids[3]).empty());
    CHECK(js.events("ignored").empty());
}

// ---------------------------------------------------------------------------------------------
// (b) A C++ caller calls the JavaScript server.
// ---------------------------------------------------------------------------------------------
TEST_CASE("a C++ JSON caller calls a JavaScript command server: resolve, reject, thrown object, cancel", "[interop][commands]") {
    const auto [cpp_version, js_version] = GENERATE(Catch::Generators::table<int, int>({{5, 4}, {4, 4}, {5, 5}}));
    INFO("C++ client MQTT " << cpp_version << ", JS peer MQTT " << js_version);
    temp_dir dir("interop-call");
    const std::string command = topic_base("call") + "/cmd/echo";
    js_peer js({"serve", "--broker", shared_broker_uri(), "--id", unique_id("js-server"), "--command", command,
                "--mqtt-version", std::to_string(js_version)});
    REQUIRE(js.wait_event("ready"));

    SECTION("call_async") {
        auto caller = connected(cpp_options(dir, "caller", cpp_version));
        warm_up(*caller, command);

        auto p = caller->call_async(command, R"({"n":1,"text":"h\u00e9llo \u2713"})", json_call(), 10s);
        const std::string id = p.handle.message_id();
        auto r = p.result.get();
        CHECK(r.ok);
        CHECK(r.status == 200);
        CHECK(r.message_id == id);
        CHECK(r.format == wire_format::json);
        CHECK(json::parse(r.body) == json({{"echo", 1}, {"from", "js"}, {"messageId", id}}));
        // The JS handler saw the request's fields without messageId (xy-mqtt strips it).
        auto inv = js.wait_event("invoke", [&](const json& j) { return j["messageId"] == id; });
        REQUIRE(inv);
        CHECK((*inv)["request"] == json({{"n", 1}, {"text", "h\u00e9llo \u2713"}}));

        // A JS handler that throws an Error: xy-mqtt's {messageId, ok:false, status:500, message}.
        auto thrown = caller->call_async(command, R"({"n":2,"do":"throw"})", json_call(), 10s).result.get();
        CHECK_FALSE(thrown.ok);
        CHECK(thrown.status == 500);
        CHECK(thrown.message == "js failure 2");
        CHECK(json::parse(thrown.body) ==
              json({{"messageId", thrown.message_id}, {"ok", false}, {"status", 500}, {"message", "js failure 2"}}));

        // A thrown {ok:false, ...} object arrives as-is (with messageId): status and message parsed.
        auto obj = caller->call_async(command, R"({"n":3,"do":"reject-object"})", json_call(), 10s).result.get();
        CHECK_FALSE(obj.ok);
        CHECK(obj.status == 409);
        CHECK(obj.message == "js conflict");
        CHECK(json::parse(obj.body) == json({{"ok", false},
                                             {"status", 409},
                                             {"message", "js conflict"},
                                             {"detail", {{"n", 3}}},
                                             {"messageId", obj.message_id}}));

        // xy-mqtt's README's `throw { ok: false, message: 'random failure' }`: no status on the wire,
        // so the caller reports 500.
        auto plain = caller->call_async(command, R"({"n":4,"do":"reject-plain"})", json_call(), 10s).result.get();
        CHECK_FALSE(plain.ok);
        CHECK(plain.status == 500);
        CHECK(plain.message == "random failure");
        CHECK(json::parse(plain.body) == json({{"ok", false}, {"message", "random failure"}, {"messageId", plain.message_id}}));
    }

    SECTION("call with subscribe_results, and cancel") {
        auto caller = std::make_unique<client>(cpp_options(dir, "caller", cpp_version));
        std::mutex mu;
        std::map<std::string, command_result> got;
        result_log log;
        caller->subscribe_results(command, [&](const command_result& r) {
            {
                std::lock_guard<std::mutex> lk(mu);
                got[r.message_id] = r;
            }
            log.add(r.message_id, r.ok ? "resolve" : "reject");
        });
        caller->connect();
        REQUIRE(caller->wait_connected(10s));
        // Calls until a result comes back: then the result subscriptions are in place.
        bool warm = false;
        for (int i = 0; i < 40 && !warm; ++i) {
            auto h = caller->call(command, R"({"n":-1})", json_call());
            warm = log.wait_for(h.message_id(), 500ms);
        }
        REQUIRE(warm);

        auto ok = caller->call(command, R"({"n":10})", json_call());
        auto rej = caller->call(command, R"({"n":11,"do":"reject-object"})", json_call());
        REQUIRE(log.wait_for(ok.message_id()));
        REQUIRE(log.wait_for(rej.message_id()));
        {
            std::lock_guard<std::mutex> lk(mu);
            const auto& r = got[ok.message_id()];
            CHECK(r.ok);
            CHECK(r.status == 200);
            CHECK(json::parse(r.body) == json({{"echo", 10}, {"from", "js"}, {"messageId", ok.message_id()}}));
            const auto& j = got[rej.message_id()];
            CHECK_FALSE(j.ok);
            CHECK(j.status == 409);
            CHECK(j.message == "js conflict");
            CHECK(json::parse(j.body)["detail"] == json({{"n", 11}}));
        }

        // C++ cancels while the JS handler runs: the JS onCancel runs and nothing is published.
        auto slow = caller->call(command, R"({"n":12,"do":"wait-cancel"})", json_call());
        REQUIRE(js.wait_event("invoke", [&](const json& j) { return j["messageId"] == slow.message_id(); }));
        slow.cancel();
        REQUIRE(js.wait_event("cancelled", [&](const json& j) { return j["messageId"] == slow.message_id(); }));
        REQUIRE(js.wait_event("suppressed", [&](const json& j) { return j["messageId"] == slow.message_id(); }));
        auto after = caller->call(command, R"({"n":13})", json_call());
        REQUIRE(log.wait_for(after.message_id()));
        CHECK_FALSE(log.has(slow.message_id()));
        slow.cancel();  // cancelling a finished call is harmless
        auto last = caller->call(command, R"({"n":14})", json_call());
        REQUIRE(log.wait_for(last.message_id()));
        CHECK(log.of(ok.message_id()).size() == 1);  // each result handed over once
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Events both ways.
// ---------------------------------------------------------------------------------------------
TEST_CASE("JSON events: a JavaScript publisher's events reach a C++ subscriber", "[interop][events]") {
    const int cpp_version = GENERATE(5, 4);
    INFO("C++ client MQTT " << cpp_version);
    temp_dir dir("interop-evt");
    const std::string topic = topic_base("evt") + "/evt/tick";
    recorder received;
    auto sub = std::make_unique<client>(cpp_options(dir, "sub", cpp_version));
    sub->subscribe(topic, [&](const message& m) { received.add(m.payload); });
    sub->connect();
    REQUIRE(sub->wait_connected(10s));
    // A probe of our own proves the subscription is in place.
    publish_until_heard(*sub, topic, R"({"probe":true})", received, 500ms);

    js_peer js({"publish", "--broker", shared_broker_uri(), "--id", unique_id("js-pub"), "--topic", topic, "--count", "3"});
    const auto rc = js.wait();
    INFO("JS peer output:\n" << js.output());
    REQUIRE(rc == 0);
    REQUIRE(eventually([&] {
        int n = 0;
        for (const auto& p : received.items()) n += p.find("\"from\"") != std::string::npos;
        return n == 3;
    }));
    std::vector<json> events;
    for (const auto& p : received.items()) {
        auto j = json::parse(p);  // plain JSON text, as xy-mqtt publishes it
        if (!j.contains("probe")) events.push_back(j);
    }
    REQUIRE(events.size() == 3);
    for (int i = 0; i < 3; ++i) CHECK(events[i] == json({{"n", i}, {"from", "js"}, {"text", "h\u00e9llo \u2713"}}));
}

TEST_CASE("JSON events: a C++ publisher's JSON text reaches a JavaScript subscriber", "[interop][events]") {
    const int cpp_version = GENERATE(5, 4);
    INFO("C++ client MQTT " << cpp_version);
    temp_dir dir("interop-evt");
    const std::string topic = topic_base("evt") + "/evt/tick";
    js_peer js({"subscribe", "--broker", shared_broker_uri(), "--id", unique_id("js-sub"), "--topic", topic, "--count", "3"});
    REQUIRE(js.wait_event("ready"));  // subscribed (SUBACK) before anything is published

    auto pub = connected(cpp_options(dir, "pub", cpp_version));
    for (int i = 0; i < 3; ++i)
        pub->publish(topic, json({{"n", i}, {"from", "cpp"}, {"text", "h\u00e9llo \u2713"}}).dump()).get();
    const auto rc = js.wait();
    INFO("JS peer output:\n" << js.output());
    REQUIRE(rc == 0);
    const auto msgs = js.events("message");
    REQUIRE(msgs.size() == 3);
    for (int i = 0; i < 3; ++i) {
        CHECK(msgs[i]["topic"] == topic);
        CHECK(msgs[i]["payload"] == json({{"n", i}, {"from", "cpp"}, {"text", "h\u00e9llo \u2713"}}));
    }
    CHECK(js.events("parse-error").empty());
}
