// Commands served with a concurrency above 1, against a real Mosquitto: calls at work at once, their
// arrival order, cancel and dedupe beside other calls, a kill with calls at work, close and unregister.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "support/child_process.h"
#include "util.h"
#include "xymqtt/exception.h"
#include "xymqtt/testing/loopback.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// Handlers that hold until released, counting how many are at work at once. (Catch's assertions are
// for the test's thread: handlers note a timeout, the test checks it.)
struct gate {
    std::atomic<int> active{0}, most{0}, started{0};
    std::atomic<bool> open{false}, timed_out{false};
    std::mutex mu;
    std::vector<std::string> starts;  // bodies, in the order their handlers began

    command_handler handler() {
        return [this](const invocation& inv, call_context&) -> std::string {
            const int now = ++active;
            int seen = most;
            while (now > seen && !most.compare_exchange_weak(seen, now)) {
            }
            {
                std::lock_guard<std::mutex> lk(mu);
                starts.push_back(inv.body);
            }
            ++started;
            if (inv.body != "warm" && !eventually([&] { return open.load(); }, 30s)) timed_out = true;
            --active;
            return inv.body;
        };
    }
    std::vector<std::string> started_bodies() {
        std::lock_guard<std::mutex> lk(mu);
        return starts;
    }
};

struct served {
    temp_dir dir{"conc"};
    std::unique_ptr<client> server, caller;
    std::string command;
    served(command_handler h, unsigned concurrency) {
        auto so = options_for(dir, "server");
        command = "test/" + so.client_id + "/cmd/work";
        server = std::make_unique<client>(so);
        command_options co;
        co.concurrency = concurrency;
        server->command_register(command, std::move(h), co);
        server->connect();
        REQUIRE(server->wait_connected(10s));
        caller = connected(options_for(dir, "caller"));
        // The first call also waits for the server's subscription to reach the broker.
        wait_until_served(*caller, command);
    }
};

}  // namespace

TEST_CASE("concurrency 4: four calls at work at once, never more, started in arrival order", "[commands][concurrency]") {
    gate g;
    served s(g.handler(), 4);
    std::vector<pending_call> calls;
    for (int i = 0; i < 10; ++i) calls.push_back(s.caller->call_async(s.command, std::to_string(i), {}, 60s));
    REQUIRE(eventually([&] { return g.active.load() == 4; }, 20s));
    // The other six are in the server's inbox, waiting for a place.
    REQUIRE(eventually([&] { return s.server->stats().inbox >= 10; }, 20s));
    CHECK(g.active.load() == 4);
    auto first = g.started_bodies();
    first.erase(std::remove(first.begin(), first.end(), "warm"), first.end());
    CHECK(std::set<std::string>(first.begin(), first.end()) == std::set<std::string>{"0", "1", "2", "3"});
    g.open = true;
    for (int i = 0; i < 10; ++i) {
        auto r = calls[std::size_t(i)].result.get();
        CHECK(r.ok);
        CHECK(r.body == std::to_string(i));
    }
    CHECK(g.most.load() == 4);
    CHECK_FALSE(g.timed_out.load());
}

TEST_CASE("concurrency 1 (the default): the next call waits for the one at work", "[commands][concurrency]") {
    gate g;
    served s(g.handler(), 1);
    const int before = g.started;
    auto a = s.caller->call_async(s.command, "a", {}, 60s);
    auto b = s.caller->call_async(s.command, "b", {}, 60s);
    REQUIRE(eventually([&] { return g.started.load() == before + 1; }, 20s));
    REQUIRE(eventually([&] { return s.server->stats().inbox >= 2; }, 20s));  // b arrived, and waits
    CHECK(g.started.load() == before + 1);
    g.open = true;
    CHECK(a.result.get().body == "a");
    CHECK(b.result.get().body == "b");
    CHECK(g.most.load() == 1);
    CHECK_FALSE(g.timed_out.load());
}

TEST_CASE("concurrency: a cancel reaches its call while others run and finish beside it", "[commands][concurrency]") {
    std::atomic<bool> cancelled{false}, slow_started{false};
    served s(
        [&](const invocation& inv, call_context& ctx) -> std::string {
            if (inv.body != "slow") return inv.body;
            ctx.on_cancel([&] { cancelled = true; });
            slow_started = true;
            eventually([&] { return ctx.cancelled(); }, 30s);  // the test fails below if it never comes
            return "too late";
        },
        3);
    recorder results;
    s.caller->subscribe_results(s.command, [&](const command_result& r) { results.add(r.body); });
    auto slow = s.caller->call(s.command, "slow");
    REQUIRE(eventually([&] { return slow_started.load(); }, 20s));
    s.caller->call(s.command, "b");
    s.caller->call(s.command, "c");
    REQUIRE(results.wait_size(2));  // answered while the slow call still runs
    CHECK_FALSE(cancelled.load());
    slow.cancel();
    REQUIRE(eventually([&] { return cancelled.load(); }, 20s));
    s.caller->call(s.command, "d");
    REQUIRE(results.wait_size(3));
    auto items = results.items();
    std::sort(items.begin(), items.end());
    CHECK(items == std::vector<std::string>{"b", "c", "d"});  // nothing for the cancelled call
}

TEST_CASE("concurrency: a repeated invoke while its first copy runs is answered by that copy, run once",
          "[commands][concurrency]") {
    std::atomic<int> runs{0};
    std::atomic<bool> open{false};
    served s(
        [&](const invocation& inv, call_context&) -> std::string {
            if (inv.body.find("dup-2") == std::string::npos) return R"({"echo":"other"})";
            ++runs;
            eventually([&] { return open.load(); }, 30s);  // the test fails below if it never opens
            return R"({"echo":"once"})";
        },
        2);
    recorder resolves;
    auto raw = connected(options_for(s.dir, "raw"));
    raw->subscribe(s.command + "/resolve", [&](const message& m) {
        if (m.payload.find("dup-2") != std::string::npos) resolves.add(m.payload);
    });
    const std::string invoke = R"({"messageId":"dup-2","n":"once"})";
    raw->publish(s.command + "/invoke", invoke).get();
    REQUIRE(eventually([&] { return runs.load() == 1; }, 20s));
    const auto handled = s.server->stats().handled;
    raw->publish(s.command + "/invoke", invoke).get();
    // The second copy is taken out of the inbox without a run (the first answers it).
    REQUIRE(eventually([&] { return s.server->stats().handled > handled; }, 20s));
    CHECK(runs.load() == 1);
    open = true;
    REQUIRE(resolves.wait_size(1));
    raw->publish(s.command + "/invoke", invoke).get();  // a third, after: from the stored outcome
    REQUIRE(resolves.wait_size(2));
    CHECK(runs.load() == 1);
    for (auto& r : resolves.items()) CHECK(json::parse(r)["echo"] == "once");
}

TEST_CASE("concurrency: a server killed with four calls at work runs each again after restart and answers all",
          "[commands][concurrency][crash]") {
    temp_dir dir("conckill");
    const std::string id = unique_id("conc-server");
    const std::string store = dir / "srv", log = dir / "srv.log";
    const std::string cmd = "test/" + id + "/cmd/slow";
    auto run = [&](const std::string& slow_ms) {
        return std::make_unique<child_process>(std::vector<std::string>{
            XY_AGENT, "serve", "--broker", shared_broker_uri(), "--id", id, "--store", store, "--command", cmd,
            "--log", log, "--slow-ms", slow_ms, "--concurrency", "4"});
    };
    // A first server answers at once, until a call comes back: its subscription is in the session.
    auto srv = run("0");
    REQUIRE(srv->wait_for_line("ready"));
    auto caller = connected(options_for(dir, "caller"));
    wait_until_served(*caller, cmd, "warm", 2s);
    srv->kill(SIGKILL);
    srv->wait();
    srv = run("60000");  // the calls are at work when the kill comes
    REQUIRE(srv->wait_for_line("ready"));
    std::vector<pending_call> calls;
    for (int i = 0; i < 4; ++i) calls.push_back(caller->call_async(cmd, "c" + std::to_string(i)));
    auto starts = [&](const std::string& mid) {
        int n = 0;
        for (auto& l : read_lines(log)) n += l == "start " + mid;
        return n;
    };
    REQUIRE(eventually([&] {
        for (auto& c : calls)
            if (starts(c.handle.message_id()) < 1) return false;
        return true;
    }, 30s));  // all four at work at once
    srv->kill(SIGKILL);
    srv->wait();
    srv = run("0");
    for (auto& c : calls) {
        REQUIRE(c.result.wait_for(30s) == std::future_status::ready);
        CHECK(c.result.get().ok);
        CHECK(starts(c.handle.message_id()) == 2);
    }
}

TEST_CASE("concurrency: close() lets the calls at work finish and stores their outcomes, sent after a restart",
          "[commands][concurrency]") {
    temp_dir dir("concclose");
    auto so = options_for(dir, "server");
    const std::string command = "test/" + so.client_id + "/cmd/work";
    gate g;
    auto server = std::make_unique<client>(so);
    command_options co;
    co.concurrency = 2;
    server->command_register(command, g.handler(), co);
    server->connect();
    REQUIRE(server->wait_connected(10s));
    auto caller = connected(options_for(dir, "caller"));
    wait_until_served(*caller, command);
    auto a = caller->call_async(command, "a", {}, 60s);
    auto b = caller->call_async(command, "b", {}, 60s);
    REQUIRE(eventually([&] { return g.active.load() == 2; }, 20s));
    std::thread closer([&] { server->close(); });
    g.open = true;  // close() waits for both handlers
    closer.join();
    server.reset();
    // Whether the outcomes left before the close or wait in the restarted server's outbox, both arrive.
    auto again = std::make_unique<client>(so);
    again->command_register(command, g.handler(), co);
    again->connect();
    CHECK(a.result.get().body == "a");
    CHECK(b.result.get().body == "b");
    CHECK(g.started.load() == 3);  // warm, a, b: none ran again
}

TEST_CASE("concurrency out of range is a configuration error, on a client and on the loopback",
          "[commands][concurrency][errors]") {
    temp_dir dir("concbad");
    client c(options_for(dir, "c"));
    testing::loopback lb;
    for (unsigned n : {0u, max_concurrency + 1}) {
        command_options co;
        co.concurrency = n;
        CHECK_THROWS_AS(c.command_register("test/cmd/bad", [](const invocation&, call_context&) { return std::string(); }, co),
                        configuration_error);
        CHECK_THROWS_AS(lb.command_register("test/cmd/bad", [](const invocation&, call_context&) { return std::string(); }, co),
                        configuration_error);
    }
    command_options ok;
    ok.concurrency = max_concurrency;
    CHECK_NOTHROW(c.command_register("test/cmd/ok", [](const invocation&, call_context&) { return std::string(); }, ok));
    c.command_unregister("test/cmd/ok");
}

// ---------------------------------------------------------------------------------------------------
// Deferred handlers: answered through a responder, later, from another thread

namespace {

// Calls started and not answered yet; the test answers them.
struct parked_calls {
    std::mutex mu;
    std::vector<std::pair<std::string, responder>> calls;  // body, responder
    std::atomic<int> started{0};

    deferred_command_handler handler() {
        return [this](const invocation& inv, call_context&, responder respond) {
            if (inv.body == "warm") {
                respond.resolve("warm");
                return;
            }
            if (inv.body == "drop") return;  // every copy dropped: rejected with 500
            if (inv.body == "throw") throw command_error(409, "refused before starting");
            std::lock_guard<std::mutex> lk(mu);
            calls.emplace_back(inv.body, respond);
            ++started;
        };
    }
    std::vector<std::pair<std::string, responder>> take() {
        std::lock_guard<std::mutex> lk(mu);
        return std::exchange(calls, {});
    }
};

std::unique_ptr<client> deferred_server(const temp_dir& dir, const client_options& so, const std::string& command,
                                        parked_calls& parked, unsigned concurrency) {
    auto server = std::make_unique<client>(so);
    command_options co;
    co.concurrency = concurrency;
    server->command_register(command, parked.handler(), co);
    server->connect();
    REQUIRE(server->wait_connected(10s));
    (void)dir;
    return server;
}

}  // namespace

TEST_CASE("deferred handler: four calls at work with no thread held, answered later from another thread",
          "[commands][deferred]") {
    temp_dir dir("deferred");
    auto so = options_for(dir, "server");
    const std::string command = "test/" + so.client_id + "/cmd/later";
    parked_calls parked;
    auto server = deferred_server(dir, so, command, parked, 4);
    auto caller = connected(options_for(dir, "caller"));
    wait_until_served(*caller, command);
    std::vector<pending_call> calls;
    for (int i = 0; i < 6; ++i) calls.push_back(caller->call_async(command, std::to_string(i), {}, 60s));
    REQUIRE(eventually([&] { return parked.started.load() == 4; }, 20s));
    REQUIRE(eventually([&] { return server->stats().inbox >= 6; }, 20s));  // two wait for a place
    CHECK(parked.started.load() == 4);
    std::atomic<int> second_answers{0};
    std::thread answerer([&] {
        for (int answered = 0; answered < 6;) {
            if (!eventually([&] {
                    std::lock_guard<std::mutex> lk(parked.mu);
                    return !parked.calls.empty();
                }, 20s))
                break;  // the calls' results below fail the test
            for (auto& [body, respond] : parked.take()) {
                if (body == "1")
                    respond.reject(404, "not there");
                else
                    respond.resolve("done:" + body);
                second_answers += respond.resolve("again");  // the first answer counts
                ++answered;
            }
        }
    });
    for (int i = 0; i < 6; ++i) {
        auto r = calls[std::size_t(i)].result.get();
        if (i == 1) {
            CHECK_FALSE(r.ok);
            CHECK(r.status == 404);
        } else {
            CHECK(r.ok);
            CHECK(r.body == "done:" + std::to_string(i));
        }
    }
    answerer.join();
    CHECK(second_answers.load() == 0);

    // A handler that throws before answering, and one that drops its responder.
    auto thrown = caller->call_async(command, "throw", {}, 30s).result.get();
    CHECK(thrown.status == 409);
    auto dropped = caller->call_async(command, "drop", {}, 30s).result.get();
    CHECK(dropped.status == 500);
    CHECK(dropped.message.find("dropped its responder") != std::string::npos);
}

TEST_CASE("deferred handler: a call unanswered at close() runs again after the restart and is answered",
          "[commands][deferred]") {
    temp_dir dir("deferredclose");
    auto so = options_for(dir, "server");
    const std::string command = "test/" + so.client_id + "/cmd/later";
    parked_calls parked;
    auto server = deferred_server(dir, so, command, parked, 2);
    auto caller = connected(options_for(dir, "caller"));
    wait_until_served(*caller, command);
    auto call = caller->call_async(command, "pending", {}, 60s);
    REQUIRE(eventually([&] { return parked.started.load() == 1; }, 20s));
    server->close();
    parked.take().at(0).second.resolve("too late");  // after close: not committed
    server.reset();
    parked_calls again;
    auto restarted = deferred_server(dir, so, command, again, 2);
    REQUIRE(eventually([&] { return again.started.load() == 1; }, 20s));  // the invoke runs again
    for (auto& [body, respond] : again.take()) respond.resolve("after restart:" + body);
    auto r = call.result.get();
    CHECK(r.ok);
    CHECK(r.body == "after restart:pending");
}
