// Commands against a real Mosquitto: resolve, reject, cancel, dedupe, crashes, share groups.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <mutex>
#include <thread>
#include <utility>

#include "support/child_process.h"
#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// A server that answers `<cmd>` with {"echo": <request's "n">} (JSON) or the request bytes (binary),
// and rejects requests whose "n" (or bytes) is "fail".
command_handler echo_handler(std::atomic<int>* runs = nullptr) {
    return [runs](const invocation& inv, call_context&) -> std::string {
        if (runs) ++*runs;
        if (inv.format == wire_format::json) {
            auto req = json::parse(inv.body);
            if (req.value("n", "") == "fail") throw command_error(409, "asked to fail", R"({"why":"test"})");
            if (req.value("n", "") == "throw") throw std::runtime_error("plain exception");
            if (req.value("n", "") == "undecodable") throw parse_error("bad request field");
            return json{{"echo", req.value("n", "")}}.dump();
        }
        if (inv.body == "fail") throw command_error(409, "asked to fail", "details");
        return "echo:" + inv.body;
    };
}

struct pair_of_clients {
    temp_dir dir{"cmd"};
    std::unique_ptr<client> server, caller;
    std::string command;
    explicit pair_of_clients(command_handler h = echo_handler(), command_options co = {},
                             durability d = durability::fsync) {
        auto so = options_for(dir, "server");
        so.durability = d;
        command = "test/" + so.client_id + "/cmd/echo";
        server = std::make_unique<client>(so);
        server->command_register(command, std::move(h), co);
        server->connect();
        REQUIRE(server->wait_connected(10s));
        auto caller_options = options_for(dir, "caller");
        caller_options.durability = d;
        caller = connected(caller_options);
    }
    // The first call also waits for the server's subscription to reach the broker.
    command_result first_call(const std::string& body, call_options o = {}) {
        for (int i = 0; i < 50; ++i) {
            auto p = caller->call_async(command, body, o, 500ms);
            try {
                return p.result.get();
            } catch (const timeout_error&) {
            }
        }
        FAIL("server never answered");
        return {};
    }
};

}  // namespace

TEST_CASE("JSON calls resolve and reject with status and message", "[commands]") {
    pair_of_clients p;
    call_options o;
    o.format = wire_format::json;
    auto r = p.first_call(R"({"n":"a"})", o);
    CHECK(r.ok);
    CHECK(r.status == 200);
    auto body = json::parse(r.body);
    CHECK(body["echo"] == "a");
    CHECK(body["messageId"] == r.message_id);

    auto rej = p.caller->call_async(p.command, R"({"n":"fail"})", o, 10s).result.get();
    CHECK_FALSE(rej.ok);
    CHECK(rej.status == 409);
    CHECK(rej.message == "asked to fail");
    auto rb = json::parse(rej.body);
    CHECK(rb["ok"] == false);
    CHECK(rb["why"] == "test");  // the handler's own reject object is published as-is

    auto plain = p.caller->call_async(p.command, R"({"n":"throw"})", o, 10s).result.get();
    CHECK(plain.status == 500);
    CHECK(plain.message == "plain exception");
    auto bad = p.caller->call_async(p.command, R"({"n":"undecodable"})", o, 10s).result.get();
    CHECK(bad.status == 400);
}

TEST_CASE("binary calls carry the id and reject details in MQTT 5 properties", "[commands]") {
    pair_of_clients p;
    auto r = p.first_call("ping");
    CHECK(r.ok);
    CHECK(r.format == wire_format::binary);
    CHECK(r.body == "echo:ping");
    auto rej = p.caller->call_async(p.command, "fail", {}, 10s).result.get();
    CHECK_FALSE(rej.ok);
    CHECK(rej.status == 409);
    CHECK(rej.message == "asked to fail");
    CHECK(rej.body == "details");
}

TEST_CASE("command errors: registered twice, call without subscriptions", "[commands][errors]") {
    temp_dir dir("cmderr");
    client c(options_for(dir, "c"));
    c.command_register("test/x/cmd", echo_handler());
    CHECK_THROWS_AS(c.command_register("test/x/cmd", echo_handler()), command_already_registered);
    c.command_unregister("test/x/cmd");
    CHECK_NOTHROW(c.command_register("test/x/cmd", echo_handler()));
    c.command_unregister("test/never/registered");  // harmless
    CHECK_THROWS_AS(c.call("test/x/other", "{}"), call_with_no_subscription);
    c.subscribe("test/x/other/resolve", [](const message&) {});
    CHECK_THROWS_AS(c.call("test/x/other", "{}"), call_with_no_subscription);  // reject still missing
    c.subscribe("test/x/other/reject", [](const message&) {});
    CHECK_NOTHROW(c.call("test/x/other", "{}", call_options{wire_format::json, {}, {}}));
    CHECK_THROWS_AS(c.command_register("test/+/cmd", echo_handler()), invalid_topic);
    auto o = options_for(dir, "v3");
    o.mqtt_version = 4;
    client v3(o);
    v3.subscribe_results("test/x/cmd", [](const command_result&) {});
    CHECK_THROWS_AS(v3.call("test/x/cmd", "bytes"), configuration_error);  // binary needs MQTT 5
}

TEST_CASE("subscribe_results hands each result of our calls over once and ignores unknown ids", "[commands]") {
    pair_of_clients p;
    p.first_call("warm");
    recorder results;
    p.caller->subscribe_results(p.command, [&](const command_result& r) { results.add(r.message_id + ":" + r.body); });
    // A result for an id this caller never used: ignored.
    auto stranger = connected(options_for(p.dir, "stranger"));
    stranger->publish(p.command + "/resolve", "x", [] {
        publish_options po;
        po.props.content_type = "application/x-protobuf";
        po.props.correlation_data = "not-a-call-of-ours";
        return po;
    }()).get();
    auto h = p.caller->call(p.command, "one");
    REQUIRE(results.wait_size(1));
    CHECK(results.items()[0] == h.message_id() + ":echo:one");
}

TEST_CASE("cancel during execution runs on_cancel and publishes no result", "[commands]") {
    std::atomic<bool> cancelled{false};
    std::atomic<bool> started{false};
    pair_of_clients p([&](const invocation& inv, call_context& ctx) -> std::string {
        if (inv.body != "slow") return "fast";
        ctx.on_cancel([&] { cancelled = true; });
        started = true;
        REQUIRE(eventually([&] { return ctx.cancelled(); }, 10s));
        return "too late";
    });
    p.first_call("warm");
    recorder results;
    p.caller->subscribe_results(p.command, [&](const command_result& r) { results.add(r.body); });
    auto h = p.caller->call(p.command, "slow");
    REQUIRE(eventually([&] { return started.load(); }));
    h.cancel();
    REQUIRE(eventually([&] { return cancelled.load(); }));
    p.caller->call(p.command, "next");
    REQUIRE(results.wait_size(1));
    CHECK(results.items() == std::vector<std::string>{"fast"});  // nothing for the cancelled call
    h.cancel();  // cancelling again is harmless
}

TEST_CASE("cancel before execution: the handler never runs", "[commands]") {
    std::atomic<bool> release{false};
    std::atomic<int> runs_b{0};
    pair_of_clients p([&](const invocation& inv, call_context&) -> std::string {
        if (inv.body == "A") REQUIRE(eventually([&] { return release.load(); }, 20s));
        if (inv.body == "B") ++runs_b;
        return inv.body;
    });
    p.first_call("warm");
    recorder results;
    p.caller->subscribe_results(p.command, [&](const command_result& r) { results.add(r.body); });
    p.caller->call(p.command, "A");  // occupies the server
    auto b = p.caller->call(p.command, "B");
    b.cancel();
    // The cancel is stored by the server before A finishes: wait for it in the server's store.
    REQUIRE(eventually([&] { return p.server->stats().inbox <= 2; }, 10s));
    std::this_thread::yield();
    REQUIRE(eventually([&] { return p.server->stats().handled >= 2; }, 10s));  // warm + the cancel
    release = true;
    p.caller->call(p.command, "C");
    REQUIRE(results.wait_size(2));
    CHECK(results.items() == std::vector<std::string>{"A", "C"});
    CHECK(runs_b == 0);
}

TEST_CASE("a repeated invoke is answered from the stored result, without running again", "[commands]") {
    std::atomic<int> runs{0};
    pair_of_clients p(echo_handler(&runs));
    p.first_call("warm");
    const int before = runs;
    recorder resolves;
    auto raw = connected(options_for(p.dir, "raw"));
    raw->subscribe(p.command + "/resolve", [&](const message& m) {
        if (m.payload.find("dup-1") != std::string::npos) resolves.add(m.payload);
    });
    // xy-mqtt's JSON invoke, sent twice with the same messageId.
    publish_until_heard(*raw, p.command + "/invoke", R"({"messageId":"dup-1","n":"once"})", resolves, 1s);
    raw->publish(p.command + "/invoke", R"({"messageId":"dup-1","n":"once"})").get();
    REQUIRE(eventually([&] { return resolves.size() >= 2; }, 10s));
    CHECK(runs - before == 1);
    for (auto& r : resolves.items()) CHECK(json::parse(r)["echo"] == "once");
}

TEST_CASE("undecodable invokes: 400 when the id is known, dead letter otherwise, later calls flow", "[commands]") {
    pair_of_clients p;
    p.first_call("warm");
    auto raw = connected(options_for(p.dir, "raw"));
    recorder rejects;
    raw->subscribe(p.command + "/reject", [&](const message& m) { rejects.add(m.payload); });
    publish_until_heard(*raw, p.command + "/invoke", R"({"messageId":"m-400","n":"undecodable"})", rejects, 1s);
    CHECK(json::parse(rejects.items()[0])["status"] == 400);
    raw->publish(p.command + "/invoke", "this is not json").get();
    raw->publish(p.command + "/invoke", R"(["no","id"])").get();
    auto r = p.caller->call_async(p.command, "after", {}, 10s).result.get();
    CHECK(r.body == "echo:after");
    REQUIRE(eventually([&] { return p.server->dead_letters().size() == 2; }));
}

TEST_CASE("a result published while the caller was offline is delivered when it returns", "[commands]") {
    temp_dir dir("offcaller");
    auto so = options_for(dir, "server");
    const std::string cmd = "test/" + so.client_id + "/cmd/later";
    // The server answers "while-away" only once the caller is gone, so the result must wait for it.
    std::atomic<bool> caller_gone{false};
    client server(so);
    auto echo = echo_handler();
    server.command_register(cmd, [&](const invocation& inv, call_context& ctx) {
        if (inv.body == "while-away") REQUIRE(eventually([&] { return caller_gone.load(); }, 20s));
        return echo(inv, ctx);
    });
    server.connect();
    REQUIRE(server.wait_connected(10s));
    auto co = options_for(dir, "caller");
    std::string id;
    {
        // First make sure the server's subscription is live.
        client warm(options_for(dir, "warm"));
        warm.connect();
        REQUIRE(warm.wait_connected(10s));
        bool ok = false;
        for (int i = 0; i < 40 && !ok; ++i) {
            try {
                warm.call_async(cmd, "w", {}, 500ms).result.get();
                ok = true;
            } catch (const timeout_error&) {
            }
        }
        REQUIRE(ok);
    }
    {
        client caller(co);
        caller.subscribe_results(cmd, [](const command_result&) {});
        caller.connect();
        REQUIRE(caller.wait_connected(10s));
        id = caller.call(cmd, "while-away").message_id();
        REQUIRE(caller.wait_outbox_empty(10s));
        caller.close();  // gone before the result is published
        caller_gone = true;
    }
    REQUIRE(eventually([&] { return server.stats().handled >= 2; }, 10s));
    recorder got;
    client caller(co);
    caller.subscribe_results(cmd, [&](const command_result& r) { got.add(r.message_id + ":" + r.body); });
    caller.connect();
    REQUIRE(got.wait_size(1));
    CHECK(got.items()[0] == id + ":echo:while-away");
}

TEST_CASE("a call that times out fails its future with timeout_error", "[commands]") {
    temp_dir dir("timeout");
    auto c = connected(options_for(dir, "caller"));
    auto p = c->call_async("test/" + c->options().client_id + "/nobody", "x", {}, 200ms);
    CHECK_THROWS_AS(p.result.get(), timeout_error);
}

TEST_CASE("an expired invoke is not executed", "[commands]") {
    temp_dir dir("expiry");
    std::atomic<int> runs{0};
    auto so = options_for(dir, "server");
    const std::string cmd = "test/" + so.client_id + "/cmd/exp";
    {
        // Register once so the broker keeps a session with the subscription, then go offline.
        client server(so);
        server.command_register(cmd, echo_handler(&runs));
        server.connect();
        REQUIRE(server.wait_connected(10s));
        auto warm = connected(options_for(dir, "warm"));
        bool ok = false;
        for (int i = 0; i < 40 && !ok; ++i) {
            try {
                warm->call_async(cmd, "w", {}, 500ms).result.get();
                ok = true;
            } catch (const timeout_error&) {
            }
        }
        REQUIRE(ok);
        server.close();
    }
    const int before = runs;
    auto caller = connected(options_for(dir, "caller"));
    call_options o;
    o.expiry = 1s;
    auto p = caller->call_async(cmd, "stale", o);
    REQUIRE(caller->wait_outbox_empty(10s));
    std::this_thread::sleep_for(2100ms);  // the behaviour under test is the passing of time itself
    auto p2 = caller->call_async(cmd, "fresh", {}, 20s);
    client server(so);
    server.command_register(cmd, echo_handler(&runs));
    server.connect();
    CHECK(p2.result.get().body == "echo:fresh");
    CHECK(runs - before == 1);  // only the fresh one ran
}

TEST_CASE("a command server killed mid-command runs it again after restart", "[commands][crash]") {
    temp_dir dir("srvkill");
    const std::string id = unique_id("killed-server");
    const std::string store = dir / "srv", log = dir / "srv.log";
    const std::string cmd = "test/" + id + "/cmd/slow";
    auto run = [&] {
        return std::make_unique<child_process>(std::vector<std::string>{
            XY_AGENT, "serve", "--broker", shared_broker_uri(), "--id", id, "--store", store, "--command", cmd, "--log",
            log, "--slow-ms", "400"});
    };
    auto srv = run();
    REQUIRE(srv->wait_for_line("ready"));
    auto caller = connected(options_for(dir, "caller"));
    pending_call warm;
    REQUIRE(eventually([&] {
        auto p = caller->call_async(cmd, "w", {}, 2s);
        try {
            p.result.get();
            return true;
        } catch (const timeout_error&) {
            return false;
        }
    }, 30s));
    auto p = caller->call_async(cmd, "important");
    const auto mid = p.handle.message_id();
    REQUIRE(eventually([&] {
        for (auto& l : read_lines(log))
            if (l == "start " + mid) return true;
        return false;
    }));
    srv->kill(SIGKILL);
    srv->wait();
    srv = run();
    REQUIRE(p.result.wait_for(30s) == std::future_status::ready);
    CHECK(p.result.get().ok);
    int starts = 0;
    for (auto& l : read_lines(log)) starts += l == "start " + mid;
    CHECK(starts == 2);
}

TEST_CASE("three servers in a share group split 300 calls, each handled once", "[commands][scale]") {
    temp_dir dir("group");
    const std::string base = unique_id("group");
    const std::string cmd = "test/" + base + "/cmd/work";
    std::vector<std::unique_ptr<child_process>> servers;
    for (int i = 0; i < 3; ++i)
        servers.push_back(std::make_unique<child_process>(std::vector<std::string>{
            XY_AGENT, "serve", "--broker", shared_broker_uri(), "--id", base + "-s" + std::to_string(i), "--store",
            dir / ("s" + std::to_string(i)), "--command", cmd, "--log", dir / ("s" + std::to_string(i) + ".log"),
            "--group", "workers"}));
    for (auto& s : servers) REQUIRE(s->wait_for_line("ready"));
    auto caller = connected(options_for(dir, "caller"));
    // Every server's shared subscription must be live before counting.
    REQUIRE(eventually([&] {
        std::set<std::string> who;
        for (int i = 0; i < 12; ++i) {
            try {
                who.insert(caller->call_async(cmd, "probe", {}, 2s).result.get().body);
            } catch (const timeout_error&) {
            }
        }
        return who.size() == 3;
    }, 60s));
    std::vector<pending_call> calls;
    for (int i = 0; i < 300; ++i) calls.push_back(caller->call_async(cmd, "c" + std::to_string(i), {}, 60s));
    std::map<std::string, int> by_server;
    for (auto& c : calls) ++by_server[c.result.get().body];
    CHECK(by_server.size() == 3);
    std::map<std::string, int> handled;
    for (int i = 0; i < 3; ++i)
        for (auto& l : read_lines(dir / ("s" + std::to_string(i) + ".log")))
            if (l.rfind("done ", 0) == 0) ++handled[l.substr(5)];
    for (auto& c : calls) CHECK(handled[c.handle.message_id()] == 1);
}

TEST_CASE("a stream of events lets Nagle coalesce at the server, and calls right after it are not held", "[commands][nagle]") {
    // During the stream the server's connection runs without TCP_NODELAY (adaptive_nagle). A reply sent
    // right after acknowledging its call would wait ~40 ms for the broker's delayed ACK if Nagle stayed
    // on; the governor sets TCP_NODELAY again within about a millisecond of the stream's end.
    pair_of_clients p(echo_handler(), {}, durability::process);
    p.first_call(R"({"n":"warm"})");
    const std::string topic = "test/" + unique_id("nagle") + "/stream";
    std::atomic<int> events{0};
    p.server->subscribe(topic, [&](const message& m) {
        if (m.payload == "e") ++events;
    });
    REQUIRE(eventually([&] {  // the subscription is at the broker once a probe arrives
        p.caller->publish(topic, "probe").get();
        return p.server->stats().handled > 1;
    }));
    constexpr int n = 20000;
    for (int i = 0; i < n; ++i) p.caller->post(topic, "e");
    REQUIRE(eventually([&] { return events == n; }, 120s));
    CHECK(p.server->stats().nagle_streams >= 1);

    std::vector<double> ms;
    for (int i = 0; i < 21; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        auto r = p.caller->call_async(p.command, R"({"n":"after"})", {}, 10s).result.get();
        REQUIRE(r.ok);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    INFO("call round trips after the stream, sorted (ms): " << ms.front() << " ... " << ms[10] << " ... " << ms.back());
    CHECK(ms[10] < 20.0);  // a call held by Nagle takes 40 ms or more
}

TEST_CASE("resend_unanswered_after: an invoke the broker dropped is sent again and answered once a server is there",
          "[commands][resend]") {
    // No server is subscribed when the call is made, so the broker drops the invoke, as a broker killed
    // hard drops one it acknowledged after its last save.
    temp_dir dir("resend");
    auto co = options_for(dir, "caller");
    co.resend_unanswered_after = 200ms;
    auto caller = connected(co);
    const std::string cmd = "test/" + co.client_id + "/cmd/late";
    auto pending = caller->call_async(cmd, "first", {}, 30s);
    REQUIRE(caller->wait_outbox_empty(10s));  // the broker has it, and nobody to give it to

    std::atomic<int> runs{0};
    auto server = std::make_unique<client>(options_for(dir, "server"));
    server->command_register(cmd, [&](const invocation& inv, call_context&) {
        ++runs;
        return "late:" + inv.body;
    });
    server->connect();
    auto r = pending.result.get();  // one of the invokes sent again reaches it
    CHECK(r.ok);
    CHECK(r.body == "late:first");
    // Copies sent again before the result came are answered from the server's store: one run.
    REQUIRE(caller->wait_outbox_empty(10s));
    REQUIRE(server->wait_inbox_empty(10s));
    CHECK(runs.load() == 1);
}

TEST_CASE("resend_unanswered_after: a restarted caller sends its unanswered calls again", "[commands][resend]") {
    temp_dir dir("resendrestart");
    auto co = options_for(dir, "caller");
    co.resend_unanswered_after = 200ms;
    const std::string cmd = "test/" + co.client_id + "/cmd/late";
    std::string id;
    {
        client caller(co);
        caller.subscribe_results(cmd, [](const command_result&) {});
        caller.connect();
        REQUIRE(caller.wait_connected(10s));
        id = caller.call(cmd, "while-nobody-serves").message_id();
        REQUIRE(caller.wait_outbox_empty(10s));
        caller.close();
    }
    auto server = std::make_unique<client>(options_for(dir, "server"));
    server->command_register(cmd, [](const invocation& inv, call_context&) { return "late:" + inv.body; });
    server->connect();
    REQUIRE(server->wait_connected(10s));
    recorder got;
    client caller(co);
    caller.subscribe_results(cmd, [&](const command_result& r) { got.add(r.message_id + " " + r.body); });
    caller.connect();
    REQUIRE(got.wait_size(1, 30s));
    CHECK(got.items()[0] == id + " late:while-nobody-serves");
}

TEST_CASE("a JSON handler returning something that is not a JSON object rejects the call with 500", "[commands]") {
    pair_of_clients p([](const invocation& inv, call_context&) -> std::string {
        return inv.format == wire_format::json ? std::string("[1]") : std::string("warm");
    });
    p.first_call("warm");
    call_options o;
    o.format = wire_format::json;
    auto r = p.caller->call_async(p.command, R"({"n":"x"})", o, 10s).result.get();
    CHECK_FALSE(r.ok);
    CHECK(r.status == 500);
    CHECK(r.message.find("invalid JSON result") != std::string::npos);
}

namespace {

// A store that forwards to LMDB and records every commit's writes as "table:id:put|del".
class commit_log_store final : public forwarding_store {
public:
    explicit commit_log_store(const std::string& dir) : forwarding_store(open_lmdb_store(dir)) {}
    void commit(const std::vector<write_op>& batch) override {
        std::vector<std::string> ops;
        for (const auto& op : batch)
            ops.push_back(std::string(table_name(op.tbl)) + ":" + op.id + (op.value ? ":put" : ":del"));
        forwarding_store::commit(batch);
        std::lock_guard<std::mutex> lk(mu_);
        log_.push_back(std::move(ops));
    }
    std::vector<std::vector<std::string>> take() {
        std::lock_guard<std::mutex> lk(mu_);
        return std::exchange(log_, {});
    }

private:
    std::mutex mu_;
    std::vector<std::vector<std::string>> log_;
};

}  // namespace

TEST_CASE("an awaited result is answered as it arrives: one commit removes the call, no inbox record, no lane",
          "[commands][results]") {
    for (const auto routing : {result_routing::shared, result_routing::per_client}) {
        pair_of_clients p;
        auto co = options_for(p.dir, routing == result_routing::shared ? "logged-shared" : "logged-own");
        auto log = std::make_shared<commit_log_store>(p.dir.path() + "/" + co.client_id + "-logged");
        co.store = log;
        co.results = routing;
        auto caller = connected(co);
        for (int i = 0; i < 50; ++i) {
            try {
                caller->call_async(p.command, "warm", {}, 500ms).result.get();
                break;
            } catch (const timeout_error&) {
            }
        }
        log->take();
        auto call = caller->call_async(p.command, "one", {}, 10s);
        const auto r = call.result.get();
        CHECK(r.body == "echo:one");
        // With fsync durability the call may complete while the commit that removes it syncs (its
        // acknowledgement waits for it): collect commits until that one has come.
        bool inbox = false, answer = false;
        CHECK(eventually([&] {
            for (const auto& c : log->take()) {
                for (const auto& op : c) inbox = inbox || op.rfind("incoming:", 0) == 0;
                answer = answer || std::find(c.begin(), c.end(), "calls:" + call.handle.message_id() + ":del") != c.end();
            }
            return answer;
        }, 5s));
        CHECK_FALSE(inbox);  // the result never went through the inbox: its arrival's commit removed the call
    }
}

TEST_CASE("a result that a subscription of the caller matches too goes through the lanes, to both", "[commands][results]") {
    pair_of_clients p;
    p.first_call("warm");
    recorder seen;
    p.caller->subscribe(p.command + "/resolve", [&](const message& m) { seen.add(m.topic); });
    // The subscription's SUBSCRIBE may reach the broker after a first result: call until it sees one.
    bool both = false;
    for (int i = 0; i < 50 && !both; ++i) {
        const auto r = p.caller->call_async(p.command, "two", {}, 10s).result.get();
        REQUIRE(r.body == "echo:two");
        both = seen.wait_size(1, 200ms);
    }
    CHECK(both);
}

TEST_CASE("with fsync an awaited result answers its call before its commit, and a failed commit loses nothing",
          "[commands][results][storage]") {
    // The result completes its call while the removal of the call record syncs (grouped arrivals) or before
    // that commit in Paho's callback (not grouped: over TLS, under MQTT 3.1.1, or group_arrivals = false).
    // A removal that fails refuses the result: the broker sends it again, the call has been answered
    // once, and the record goes with the resend, through the caller's result handler.
    const auto cfg = GENERATE(std::make_pair(5, true), std::make_pair(5, false), std::make_pair(4, false));
    INFO("MQTT version " << cfg.first << (cfg.second ? ", arrivals grouped" : ", arrivals not grouped"));
    pair_of_clients p;
    auto co = options_for(p.dir, "early" + std::to_string(cfg.first) + (cfg.second ? "g" : "u"));
    co.mqtt_version = cfg.first;
    co.group_arrivals = cfg.second;
    co.reconnect_min = 20ms;
    store_options sto;
    sto.durability = durability::fsync;
    std::shared_ptr<store> inner(open_lmdb_store(p.dir / (co.client_id + "-store"), sto));
    struct failing_removals : forwarding_store {
        std::atomic<bool> armed{false}, holding{false}, answered{false}, answered_first{false};
        std::atomic<int> failures{0};
        using forwarding_store::forwarding_store;
        void commit(const std::vector<write_op>& b) override {
            const bool removes_call = std::any_of(b.begin(), b.end(), [](const write_op& op) {
                return op.tbl == table::calls && !op.value;
            });
            if (armed && removes_call && failures.fetch_add(1) < 8) throw storage_error("disk said no");
            if (holding && removes_call) {
                // Held until the call is answered (or 2 s): it is answered first only if it does not wait.
                answered_first = eventually([&] { return answered.load(); }, 2s);
                holding = false;
            }
            forwarding_store::commit(b);
        }
    };
    auto s = std::make_shared<failing_removals>(inner);
    co.store = s;
    std::atomic<int> losses{0};
    co.hooks.on_connection_lost = [&](const std::string&) { ++losses; };
    call_options json_call;
    json_call.format = wire_format::json;  // MQTT 3.1.1 has no properties for the binary format's id
    recorder again;
    client caller(co);
    caller.subscribe_results(p.command, [&](const command_result& r) { again.add(r.message_id); });
    caller.connect();
    REQUIRE(caller.wait_connected(10s));
    for (int i = 0; i < 50; ++i) {
        try {
            caller.call_async(p.command, R"({"n":"warm"})", json_call, 500ms).result.get();
            break;
        } catch (const timeout_error&) {
        }
    }
    REQUIRE(eventually([&] { return inner->count(table::calls) == 0; }, 10s));
    s->armed = true;
    auto call = caller.call_async(p.command, R"({"n":"one"})", json_call, 20s);
    CHECK(json::parse(call.result.get().body).value("echo", "") == "one");
    // Refused, sent again, and stored with the resend: the record goes.
    REQUIRE(eventually([&] { return inner->count(table::calls) == 0; }, 20s));
    CHECK(s->failures.load() >= 8);
    CHECK(losses.load() >= 1);
    REQUIRE(caller.wait_inbox_empty(10s));
    // The resend reached the result handler at most once.
    CHECK(again.size() <= 1);
    // The next call is answered while the removal of its record is held.
    s->armed = false;
    s->holding = true;
    auto two = caller.call_async(p.command, R"({"n":"two"})", json_call, 20s);
    CHECK(json::parse(two.result.get().body).value("echo", "") == "two");
    s->answered = true;
    REQUIRE(eventually([&] { return inner->count(table::calls) == 0; }, 10s));
    CHECK(s->answered_first.load());
}
