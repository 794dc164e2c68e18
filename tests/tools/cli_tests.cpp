// The xymqtt command-line tool as a user runs it: a process, the example schemas and the real broker.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/broker.h"
#include "support/child_process.h"
#include "support/temp_dir.h"
#include "xymqtt/client.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

const std::string schemas = std::string(XYMQTT_SOURCE_DIR) + "/schemas/examples/";
const std::string publisher = schemas + "publisher.proto";
const std::string inventory = schemas + "inventory.proto";

struct result {
    int code = -1;
    std::string output;  // stdout and stderr
    std::vector<std::string> lines;
};

std::unique_ptr<child_process> start(std::vector<std::string> args) {
    args.insert(args.begin(), XYMQTT_CLI);
    return std::make_unique<child_process>(std::move(args));
}

result finish(child_process& p, std::chrono::milliseconds timeout = 30s) {
    result r;
    auto code = p.wait(timeout);
    r.output = p.output();
    while (!r.output.empty() && r.output.back() == '\n') r.output.pop_back();
    r.lines = p.lines();
    INFO(r.output);
    REQUIRE(code.has_value());
    r.code = *code;
    return r;
}

result run(std::vector<std::string> args) {
    auto p = start(std::move(args));
    return finish(*p);
}

/// The first line that is a JSON object.
json json_line(const result& r, std::size_t index = 0) {
    for (const auto& l : r.lines) {
        if (l.empty() || l[0] != '{') continue;
        if (index-- == 0) return json::parse(l);
    }
    FAIL("no JSON line in:\n" + r.output);
    return {};
}

std::vector<json> json_lines(const result& r) {
    std::vector<json> out;
    for (const auto& l : r.lines)
        if (!l.empty() && l[0] == '{') out.push_back(json::parse(l));
    return out;
}

/// A unique token value, so that tests sharing the broker never see each other's topics.
std::string unique(const std::string& name) { return name + make_message_id().substr(0, 10); }

/// Connection flags of a tool process with its own client id and store.
std::vector<std::string> conn(const temp_dir& dir, const std::string& name) {
    return {"--broker", shared_broker_uri(), "--client-id", unique(name), "--store", dir / name};
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

/// `xymqtt serve`, running until the test ends; ready once it says so (its subscription is active).
std::unique_ptr<child_process> serve(const std::vector<std::string>& args) {
    auto p = start(std::vector<std::string>{"serve"} + args);
    INFO(p->output());
    REQUIRE(p->wait_for_line("xymqtt: serving", 20s));
    return p;
}

}  // namespace

TEST_CASE("describe lists services, tokens, events and commands of the example schemas", "[cli]") {
    auto r = run({"describe", "-s", publisher, "-s", inventory});
    INFO(r.output);
    REQUIRE(r.code == 0);
    CHECK(contains(r.output, "service xymqtt.examples.Publisher (examples/publisher.proto)"));
    CHECK(contains(r.output, "{system}        default \"publisher\""));
    CHECK(contains(r.output, "tick            evt/{system}/tick"));
    CHECK(contains(r.output, "xymqtt.examples.PingRequest -> xymqtt.examples.PingResult"));
    CHECK(contains(r.output, "service xymqtt.examples.inventory.Inventory"));
    CHECK(contains(r.output, "{env}           required"));
    CHECK(contains(r.output, "stock_changed   {env}/{system}/evt/stock_changed/{warehouse}"));
    CHECK(contains(r.output, "(reject xymqtt.examples.inventory.ReserveRejected, expiry 60 s, group inventory)"));

    auto j = run({"describe", "--json", "-s", inventory, "Inventory"});
    REQUIRE(j.code == 0);
    auto services = json::parse(j.output);
    REQUIRE(services.size() == 1);
    CHECK(services[0]["service"] == "xymqtt.examples.inventory.Inventory");
    CHECK(services[0]["tokens"][0] == json({{"name", "env"}, {"required", true}, {"doc", "Deployment environment, e.g. `prod`."}}));
    CHECK(services[0]["commands"][1]["name"] == "get_stock");
    CHECK(services[0]["commands"][1]["rpc"] == "GetStock");
    CHECK(services[0]["events"][0]["type"] == "xymqtt.examples.inventory.StockChanged");

    auto member = run({"describe", "-s", inventory, "Inventory.reserve"});
    CHECK(member.code == 0);
    CHECK(contains(member.output, "oneof customer"));

    SECTION("from a protoc descriptor set") {
        temp_dir dir("cli-desc");
        child_process protoc({XYMQTT_PROTOC, "--include_imports", "--include_source_info", "-o", dir / "set.pb",
                              "-I", std::string(XYMQTT_SOURCE_DIR) + "/schemas", inventory});
        REQUIRE(protoc.wait() == 0);
        auto d = run({"describe", "--json", "--descriptor-set", dir / "set.pb"});
        REQUIRE(d.code == 0);
        CHECK(json::parse(d.output) == services);
    }
}

TEST_CASE("the version: xymqtt --version prints what VERSION holds", "[cli]") {
    std::ifstream f(std::string(XYMQTT_SOURCE_DIR) + "/VERSION");
    std::string version;
    REQUIRE(std::getline(f, version));
    const auto r = run({"--version"});
    CHECK(r.code == 0);
    CHECK(r.output == version);
}

TEST_CASE("usage and schema errors are one line with distinct exit codes", "[cli][errors]") {
    temp_dir dir("cli-err");
    auto c = conn(dir, "c");
    auto r = run(std::vector<std::string>{"call", "Inventory.nope", "-s", inventory, "-t", "env=x"} + c);
    CHECK(r.code == 1);
    CHECK(r.output == "xymqtt: unknown command 'nope' of service xymqtt.examples.inventory.Inventory (commands: reserve, get_stock)");

    r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory} + c);
    CHECK(r.code == 1);
    CHECK(r.output == "xymqtt: missing token 'env' of service xymqtt.examples.inventory.Inventory: pass --token env=VALUE");

    r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory, "-t", "env=a/b"} + c);
    CHECK(r.code == 1);
    CHECK(contains(r.output, "{env}"));

    r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory, "-t", "env=x", "-t", "color=red"} + c);
    CHECK(r.code == 1);
    CHECK(contains(r.output, "unknown token 'color'"));

    r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory, "-t", "env=x", "--json", "{\"skus\": 3"} + c);
    CHECK(r.code == 1);
    CHECK(r.lines.size() == 1);
    CHECK(contains(r.output, "invalid JSON for xymqtt.examples.inventory.GetStockRequest"));

    r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory, "-t", "env=x", "--json", "{\"nope\": 1}"} + c);
    CHECK(r.code == 1);
    CHECK(contains(r.output, "nope"));

    r = run(std::vector<std::string>{"publish", "Nobody.tick", "-s", publisher} + c);
    CHECK(r.code == 1);
    CHECK(r.output == "xymqtt: unknown service 'Nobody' (services: xymqtt.examples.Publisher)");

    r = run(std::vector<std::string>{"publish", "Inventory.stock_changed", "-s", inventory, "-t", "env=x", "--json",
                                     R"({"warehouse": "a+b"})"} + c);
    CHECK(r.code == 1);
    CHECK(contains(r.output, "warehouse"));

    r = run({"describe", "-s", dir / "missing.proto"});
    CHECK(r.code == 7);
    CHECK(contains(r.output, "missing.proto"));

    r = run({"describe"});
    CHECK(r.code == 1);

    r = run({"call", "--bogus"});
    CHECK(r.code == 1);

    // Nothing listens on a fresh port.
    r = run({"call", "Publisher.ping", "-s", publisher, "--broker", "tcp://127.0.0.1:" + std::to_string(free_port()),
             "--client-id", unique("nc"), "--store", dir / "nc", "--connect-timeout", "300"});
    CHECK(r.code == 5);
    CHECK(contains(r.output, "cannot connect to tcp://127.0.0.1:"));

    auto help = run({"call", "--help"});
    CHECK(help.code == 0);
    CHECK(contains(help.output, "--cancel-after"));
    CHECK(contains(help.output, "--insecure-no-verify-host"));
}

TEST_CASE("call and serve: resolve, reject, typed reject details, timeout, cancel", "[cli][commands]") {
    temp_dir dir("cli-cmd");
    const std::string sys = unique("sys");

    SECTION("resolve in JSON and binary; the request reaches the command on stdin") {
        auto server = serve(std::vector<std::string>{"Publisher.ping", "-s", publisher, "-t", "system=" + sys, "--exec",
                                                     "cat > " + dir / "request.json" + "; echo '{\"pong\": true}'"} +
                            conn(dir, "server"));
        auto r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + sys} + conn(dir, "c"));
        INFO(server->output());
        REQUIRE(r.code == 0);
        CHECK(r.output == R"({"pong":true})");
        CHECK(read_file(dir / "request.json") == "{}\n");

        r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + sys, "--format",
                                         "binary", "--pretty"} + conn(dir, "c"));
        REQUIRE(r.code == 0);
        CHECK(contains(r.output, "\n"));  // indented
        CHECK(json::parse(r.output) == json({{"pong", true}}));
        CHECK(server->wait_for_line([](const std::string& l) { return contains(l, ": resolved"); }));

        auto inv = serve(std::vector<std::string>{"Inventory.get_stock", "-s", inventory, "-t", "env=" + sys, "--exec",
                                                  "cat > " + dir / "stock.json" +
                                                      R"(; echo '{"items": [{"sku": "apple", "tags": ["red"]}]}')"} +
                         conn(dir, "inv"));
        r = run(std::vector<std::string>{"call", "Inventory.GetStock", "-s", inventory, "-t", "env=" + sys, "--json",
                                         R"({"skus": ["apple", "pear"]})"} + conn(dir, "c"));
        REQUIRE(r.code == 0);
        CHECK(json_line(r)["items"][0]["tags"] == json::array({"red"}));
        CHECK(json::parse(read_file(dir / "stock.json")) == json({{"skus", {"apple", "pear"}}}));
    }

    SECTION("a non-zero exit rejects with its stderr; a JSON reject object sets status and typed details") {
        auto failing = serve(std::vector<std::string>{"Inventory.get_stock", "-s", inventory, "-t", "env=" + sys,
                                                      "--exec", "echo 'no stock today' >&2; exit 3"} +
                             conn(dir, "failing"));
        auto r = run(std::vector<std::string>{"call", "Inventory.get_stock", "-s", inventory, "-t", "env=" + sys} +
                     conn(dir, "c"));
        CHECK(r.code == 2);
        CHECK(json_line(r) == json({{"status", 500}, {"message", "no stock today"}}));
        CHECK(contains(r.output, "xymqtt: rejected: 500 no stock today"));

        auto typed = serve(std::vector<std::string>{
                               "Inventory.reserve", "-s", inventory, "-t", "env=" + sys, "--exec",
                               R"(echo '{"status": 409, "message": "out of stock", "details": {"reason": "OUT_OF_STOCK", "available": {"amount": 2}}}'; exit 1)"} +
                           conn(dir, "typed"));
        for (const char* format : {"json", "binary"}) {
            r = run(std::vector<std::string>{"call", "Inventory.reserve", "-s", inventory, "-t", "env=" + sys, "--json",
                                             R"({"sku": "apple"})", "--format", format} + conn(dir, "c"));
            INFO(format);
            CHECK(r.code == 2);
            auto j = json_line(r);
            CHECK(j["status"] == 409);
            CHECK(j["message"] == "out of stock");
            CHECK(j["details"]["reason"] == "OUT_OF_STOCK");
            CHECK(j["details"]["available"]["amount"] == 2);
        }
    }

    SECTION("no server: timeout, exit 3") {
        auto r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + sys + "-none",
                                              "--timeout", "300"} + conn(dir, "c"));
        CHECK(r.code == 3);
        CHECK(contains(r.output, "no result from cmd/" + sys + "-none/ping within 300 ms"));
    }

    SECTION("--cancel-after cancels a running call: the command is stopped, exit 4") {
        auto slow = serve(std::vector<std::string>{"Publisher.ping", "-s", publisher, "-t", "system=" + sys, "--exec",
                                                   "echo started >&2; sleep 20; echo '{}'"} +
                          conn(dir, "slow"));
        const auto t0 = std::chrono::steady_clock::now();
        auto r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + sys,
                                              "--cancel-after", "1000"} + conn(dir, "c"));
        CHECK(r.code == 4);
        CHECK(contains(r.output, "cancelled after 1000 ms"));
        INFO(slow->output());
        CHECK(slow->wait_for_line("started"));
        CHECK(slow->wait_for_line([](const std::string& l) { return contains(l, ": cancelled"); }, 10s));
        CHECK(std::chrono::steady_clock::now() - t0 < 15s);  // the 20 s command was killed
    }
}

TEST_CASE("publish and subscribe: events as JSON lines, every event of a service, binary payloads", "[cli][events]") {
    temp_dir dir("cli-evt");
    const std::string env = unique("env");
    auto sub = start(std::vector<std::string>{"subscribe", "Inventory.all", "-s", inventory, "-t", "env=" + env,
                                              "--count", "3", "--timeout", "20000"} +
                     conn(dir, "sub"));
    REQUIRE(sub->wait_for_line("xymqtt: subscribed to " + env + "/inventory/evt/stock_changed/+ " + env +
                               "/inventory/evt/item_added", 20s));

    auto p = conn(dir, "pub");
    auto r = run(std::vector<std::string>{"publish", "Inventory.stock_changed", "-s", inventory, "-t", "env=" + env,
                                          "--json", R"({"item": {"sku": "apple"}, "delta": 3, "warehouse": "north"})"} + p);
    REQUIRE(r.code == 0);
    r = run(std::vector<std::string>{"publish", "Inventory.item_added", "-s", inventory, "-t", "env=" + env, "--json",
                                     R"({"sku": "pear", "attributes": {"colour": "green"}})", "--format", "binary"} + p);
    REQUIRE(r.code == 0);
    r = run(std::vector<std::string>{"publish", "Inventory.item_added", "-s", inventory, "-t", "env=" + env, "--json",
                                     R"({"sku": "plum"})"} + p);
    REQUIRE(r.code == 0);

    auto s = finish(*sub);
    REQUIRE(s.code == 0);
    auto events = json_lines(s);
    REQUIRE(events.size() == 3);
    CHECK(events[0]["topic"] == env + "/inventory/evt/stock_changed/north");
    CHECK(events[0]["event"] == "stock_changed");
    CHECK(events[0]["payload"]["delta"] == "3");  // proto3 JSON: 64-bit integers are strings
    CHECK(events[0]["payload"]["item"]["sku"] == "apple");
    CHECK(events[1]["topic"] == env + "/inventory/evt/item_added");
    CHECK(events[1]["payload"]["attributes"]["colour"] == "green");
    CHECK(events[2]["payload"]["sku"] == "plum");

    SECTION("a field token narrows the subscription; --timeout ends a subscriber that got too few") {
        auto narrow = start(std::vector<std::string>{"subscribe", "Inventory.stock_changed", "-s", inventory, "-t",
                                                     "env=" + env, "-t", "warehouse=south", "--count", "1",
                                                     "--timeout", "3000"} +
                            conn(dir, "narrow"));
        REQUIRE(narrow->wait_for_line("subscribed to " + env + "/inventory/evt/stock_changed/south", 20s));
        r = run(std::vector<std::string>{"publish", "Inventory.stock_changed", "-s", inventory, "-t", "env=" + env,
                                         "--json", R"({"warehouse": "north"})"} + p);
        REQUIRE(r.code == 0);
        auto n = finish(*narrow);
        CHECK(n.code == 3);
        CHECK(json_lines(n).empty());
        CHECK(contains(n.output, "received 0 of 1 events within 3000 ms"));
    }
}

TEST_CASE("pub and sub: raw payloads without a schema, text as text, bytes in base64, bad topics refused",
          "[cli][events][raw]") {
    temp_dir dir("cli-raw");
    const std::string base = "debug/" + unique("raw");
    auto sub = start(std::vector<std::string>{"sub", base + "/#", "--count", "3", "--timeout", "20000"} +
                     conn(dir, "sub"));
    REQUIRE(sub->wait_for_line("xymqtt: subscribed to " + base + "/#", 20s));
    auto p = conn(dir, "pub");
    auto r = run(std::vector<std::string>{"pub", base + "/a", "-m", "hello"} + p);
    REQUIRE(r.code == 0);
    std::ofstream(dir / "bytes.bin", std::ios::binary) << std::string("\x08\x96\x01\xff", 4);
    r = run(std::vector<std::string>{"pub", base + "/b", "-m", "@" + (dir / "bytes.bin"), "--content-type",
                                     "application/x-protobuf"} + p);
    REQUIRE(r.code == 0);
    r = run(std::vector<std::string>{"pub", base + "/c", "-m", R"({"n":1})", "--content-type", "application/json"} + p);
    REQUIRE(r.code == 0);
    auto s = finish(*sub);
    REQUIRE(s.code == 0);
    auto lines = json_lines(s);
    REQUIRE(lines.size() == 3);
    CHECK(lines[0]["topic"] == base + "/a");
    CHECK(lines[0]["payload"] == "hello");
    CHECK(lines[1]["payload_base64"] == "CJYB/w==");
    CHECK(lines[1]["content_type"] == "application/x-protobuf");
    CHECK(lines[2]["payload"] == R"({"n":1})");

    r = run(std::vector<std::string>{"pub", base + "/+", "-m", "x"} + p);  // a wildcard in a topic name
    CHECK(r.code == 1);
    CHECK(contains(r.output, "wildcard"));
    r = run(std::vector<std::string>{"sub", base + "/#/x"} + conn(dir, "bad"));  // # not last
    CHECK(r.code == 1);
    CHECK(contains(r.output, "# must be the last level"));
}

TEST_CASE("store: stats, list, show, replay and purge on a store with a dead letter", "[cli][store]") {
    temp_dir dir("cli-store");
    const std::string sys = unique("sys");
    const std::string store = dir / "sub";
    auto sub = start({"subscribe", "Publisher.tick", "-s", publisher, "-t", "system=" + sys, "--count", "1", "--timeout",
                      "20000", "--broker", shared_broker_uri(), "--client-id", unique("sub"), "--store", store});
    REQUIRE(sub->wait_for_line("subscribed to", 20s));
    {
        // An undecodable event: the subscriber's handler throws parse_error and it is dead-lettered.
        client_options o;
        o.server_uri = shared_broker_uri();
        o.client_id = unique("raw");
        o.store_dir = dir / "raw";
        client raw(o);
        raw.connect();
        REQUIRE(raw.wait_connected(10s));
        publish_options po;
        po.props.content_type = "application/json";
        raw.publish("evt/" + sys + "/tick", "not json", po).get();
        raw.close();
    }
    auto r = run(std::vector<std::string>{"publish", "Publisher.tick", "-s", publisher, "-t", "system=" + sys, "--json",
                                          R"({"count": 7})"} + conn(dir, "pub"));
    REQUIRE(r.code == 0);
    auto s = finish(*sub);
    REQUIRE(s.code == 0);
    CHECK(contains(s.output, "moved to dead letters"));
    CHECK(json_line(s)["payload"]["count"] == "7");

    auto stats = run({"store", store, "stats", "--json"});
    REQUIRE(stats.code == 0);
    auto st = json_line(stats);
    CHECK(st["type"] == "lmdb");
    CHECK(st["dead_letters"] == 1);
    CHECK(st["incoming"] == 0);
    CHECK(st["outgoing"] == 0);
    auto text = run({"store", store, "stats"});
    CHECK(contains(text.output, "dead_letters         1"));

    auto list = run({"store", store, "list"});
    REQUIRE(list.code == 0);
    auto rows = json_lines(list);
    REQUIRE(rows.size() == 1);
    CHECK(rows[0]["table"] == "dead_letters");
    CHECK(rows[0]["topic"] == "evt/" + sys + "/tick");
    CHECK(rows[0]["bytes"] == 8);
    CHECK_FALSE(rows[0]["error"].get<std::string>().empty());
    const std::string id = rows[0]["id"];

    auto show = run({"store", store, "show", id, "-s", publisher});
    REQUIRE(show.code == 0);
    auto shown = json::parse(show.output);
    CHECK(shown["payload_text"] == "not json");
    CHECK(shown["properties"]["content_type"] == "application/json");
    CHECK(shown["lane"] == "evt/" + sys + "/tick");

    CHECK(run({"store", store, "show", "nope"}).code == 1);
    CHECK(run({"store", store, "replay", "nope"}).code == 1);

    auto replay = run({"store", store, "replay", id});
    REQUIRE(replay.code == 0);
    st = json_line(run({"store", store, "stats", "--json"}));
    CHECK(st["dead_letters"] == 0);
    CHECK(st["incoming"] == 1);
    auto inbox = json_lines(run({"store", store, "list", "--table", "inbox"}));
    REQUIRE(inbox.size() == 1);
    CHECK(inbox[0]["id"] == id);
    CHECK_FALSE(inbox[0].contains("error"));

    auto dry = run({"store", store, "purge", "--table", "inbox"});
    CHECK(dry.code == 1);
    CHECK(contains(dry.output, "would delete 1 record from incoming; add --yes"));
    CHECK(json_line(run({"store", store, "stats", "--json"}))["incoming"] == 1);
    auto purge = run({"store", store, "purge", "--table", "inbox", "--yes"});
    CHECK(purge.code == 0);
    CHECK(json_line(run({"store", store, "stats", "--json"}))["incoming"] == 0);

    CHECK(run({"store", dir / "raw-nothing", "stats"}).code == 6);
    CHECK(run({"store", store, "list", "--table", "nope"}).code == 1);
}
