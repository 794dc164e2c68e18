// The xymqtt command-line tool as a user runs it: a process, the example schemas and the real broker.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/broker.h"
#include "support/child_process.h"
#include "support/temp_dir.h"
#include "support/test_pki.h"
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

std::unique_ptr<child_process> start(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    args.insert(args.begin(), XYMQTT_CLI);
    child_options o;
    o.env = std::move(env);
    return std::make_unique<child_process>(std::move(args), o);
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

result run(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    auto p = start(std::move(args), std::move(env));
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

TEST_CASE("topic patterns: the corpus the generator's test reads too", "[cli]") {
    // tests/schema_rules/topic_patterns.txt: "<event|command> <pattern> <ok | the refusal>" per line.
    std::ifstream corpus(std::string(XYMQTT_SOURCE_DIR) + "/tests/schema_rules/topic_patterns.txt");
    REQUIRE(corpus);
    int cases = 0, refused = 0;
    temp_dir dir("cli-topics");
    for (std::string line; std::getline(corpus, line);) {
        if (line.empty() || line[0] == '#') continue;
        const auto a = line.find(' '), b = line.find(' ', a + 1);
        REQUIRE(b != std::string::npos);
        const std::string kind = line.substr(0, a), pattern = line.substr(a + 1, b - a - 1), expect = line.substr(b + 1);
        INFO(kind << " " << pattern);
        std::string proto = "syntax = \"proto3\";\npackage corpus;\nimport \"xymqtt/options.proto\";\n"
                            "message E { string id = 1; int64 n = 2; fixed32 k = 3; repeated string tags = 4; "
                            "bool ok = 5; bytes raw = 6; }\nmessage R {}\nservice S {\n"
                            "  option (xymqtt.token) = { name: \"system\" default: \"s\" };\n";
        if (kind == "event")
            proto += "  option (xymqtt.event) = { name: \"e\" type: \"E\" topic: \"" + pattern + "\" };\n";
        else
            proto += "  rpc Ping(R) returns (R) { option (xymqtt.command) = { topic: \"" + pattern + "\" }; }\n";
        write_file(dir / "t.proto", proto + "}\n");
        auto r = run({"describe", "--json", "-s", dir / "t.proto", "-I", dir.path()});
        INFO(r.output);
        if (expect == "ok") {
            CHECK(r.code == 0);
        } else {
            ++refused;
            CHECK(r.code != 0);
            CHECK(contains(r.output, (kind == "event" ? "event e: " : "command ping: ") + expect));
        }
        ++cases;
    }
    CHECK(cases > 15);
    CHECK(refused > 10);
}

TEST_CASE("command names from RPC names: the corpus the generator's test reads too", "[cli]") {
    // tests/schema_rules/command_names.txt: "<rpc name> <command name>" per line.
    std::ifstream corpus(std::string(XYMQTT_SOURCE_DIR) + "/tests/schema_rules/command_names.txt");
    REQUIRE(corpus);
    std::vector<std::pair<std::string, std::string>> cases;
    for (std::string line; std::getline(corpus, line);) {
        if (line.empty() || line[0] == '#') continue;
        const auto space = line.find(' ');
        REQUIRE(space != std::string::npos);
        cases.emplace_back(line.substr(0, space), line.substr(space + 1));
    }
    REQUIRE(cases.size() > 10);
    temp_dir dir("cli-names");
    std::string proto = "syntax = \"proto3\";\npackage names;\nimport \"xymqtt/options.proto\";\nmessage M {}\n"
                        "service Names {\n";
    for (std::size_t i = 0; i < cases.size(); ++i)
        proto += "  rpc " + cases[i].first + "(M) returns (M) { option (xymqtt.command) = { topic: \"cmd/names/" +
                 std::to_string(i) + "\" }; }\n";
    write_file(dir / "names.proto", proto + "}\n");
    auto r = run({"describe", "--json", "-s", dir / "names.proto", "-I", dir.path()});
    INFO(r.output);
    REQUIRE(r.code == 0);
    const auto commands = json::parse(r.output).at(0).at("commands");
    REQUIRE(commands.size() == cases.size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
        INFO(cases[i].first);
        CHECK(commands[i]["rpc"] == cases[i].first);
        CHECK(commands[i]["name"] == cases[i].second);
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

TEST_CASE("sub: binary payloads in base64 as RFC 4648 has it, with and without padding", "[cli][raw][base64]") {
    // The RFC 4648 test vectors are text, which sub prints as it is: each goes after 3 bytes that are not
    // UTF-8, which encode to "//7/" on their own, so the rest of the line is the vector's encoding.
    const std::vector<std::pair<std::string, std::string>> vectors = {
        {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    temp_dir dir("cli-base64");
    const std::string base = "debug/" + unique("b64");
    auto sub = start(std::vector<std::string>{"sub", base + "/#", "--count", std::to_string(vectors.size()),
                                              "--timeout", "20000"} + conn(dir, "sub"));
    REQUIRE(sub->wait_for_line("xymqtt: subscribed to " + base + "/#", 20s));
    const auto p = conn(dir, "pub");
    for (std::size_t i = 0; i < vectors.size(); ++i) {
        const std::string file = dir / ("payload" + std::to_string(i));
        std::ofstream(file, std::ios::binary) << "\xff\xfe\xff" + vectors[i].first;
        auto r = run(std::vector<std::string>{"pub", base + "/" + std::to_string(i), "-m", "@" + file} + p);
        REQUIRE(r.code == 0);
    }
    auto s = finish(*sub);
    REQUIRE(s.code == 0);
    auto lines = json_lines(s);
    REQUIRE(lines.size() == vectors.size());
    for (const auto& line : lines) {
        const std::string topic = line["topic"];
        const auto& v = vectors.at(std::stoul(topic.substr(base.size() + 1)));
        INFO("payload \\xff\\xfe\\xff + \"" << v.first << "\"");
        CHECK(line["payload_base64"] == "//7/" + v.second);
    }
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

namespace {

/// A private $XDG_STATE_HOME and $TMPDIR for the tool, to see what it leaves behind.
struct tool_dirs {
    temp_dir dir;
    std::string state = dir / "state", tmp = dir / "tmp";
    explicit tool_dirs(const std::string& name) : dir(name) {
        std::filesystem::create_directories(state);
        std::filesystem::create_directories(tmp);
    }
    std::map<std::string, std::string> env() const { return {{"XDG_STATE_HOME", state}, {"TMPDIR", tmp}}; }
    /// Everything under `root`, as paths relative to it.
    static std::vector<std::string> files(const std::string& root) {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::recursive_directory_iterator(root))
            out.push_back(std::filesystem::relative(e.path(), root).string());
        return out;
    }
    /// The names in `dir`.
    static std::vector<std::string> entries(const std::string& dir) {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
        return out;
    }
};

/// The lines a subscriber printed on stdout (stderr lines start with "xymqtt: ").
std::vector<std::string> printed(const result& r) {
    std::vector<std::string> out;
    for (const auto& l : r.lines)
        if (l.rfind("xymqtt: ", 0) != 0) out.push_back(l);
    return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out(1);
    for (char c : s) {
        if (c == sep)
            out.emplace_back();
        else
            out.back() += c;
    }
    return out;
}

}  // namespace

TEST_CASE("clean sessions: --clean leaves nothing behind, a durable --client-id gets what it missed", "[cli][session]") {
    tool_dirs d("cli-clean");
    const std::string topic = "debug/" + unique("clean");
    const std::string id = unique("clean-id");
    const std::vector<std::string> b = {"--broker", shared_broker_uri()};
    // A subscriber that leaves once it is subscribed (SIGTERM: exit 0), then a message published meanwhile.
    auto subscribe_and_leave = [&](const std::vector<std::string>& flags, std::size_t temp_stores) {
        auto p = start(std::vector<std::string>{"sub", topic} + flags + b, d.env());
        REQUIRE(p->wait_for_line("xymqtt: subscribed to " + topic, 20s));
        CHECK(tool_dirs::entries(d.tmp).size() == temp_stores);
        p->kill(SIGTERM);
        CHECK(finish(*p).code == 0);
        REQUIRE(run(std::vector<std::string>{"pub", topic, "-m", "while away"} + conn(d.dir, "pub")).code == 0);
    };

    SECTION("--clean: the message is not delivered to the next run, and no store is left") {
        subscribe_and_leave({"--client-id", id, "--clean"}, 1);  // its store, in $TMPDIR while it runs
        CHECK(tool_dirs::files(d.tmp).empty());
        auto again = run(std::vector<std::string>{"sub", topic, "--client-id", id, "--clean", "-n", "1", "--timeout",
                                                  "2000"} + b, d.env());
        CHECK(again.code == 3);
        CHECK(printed(again).empty());
        CHECK(tool_dirs::files(d.tmp).empty());
        CHECK(tool_dirs::files(d.state).empty());
    }

    SECTION("durable (--client-id without --clean): the next run gets the message from its session") {
        subscribe_and_leave({"--client-id", id}, 0);
        auto again = run(std::vector<std::string>{"sub", topic, "--client-id", id, "-n", "1", "--timeout", "10000"} + b,
                         d.env());
        CHECK(again.code == 0);
        CHECK(json_line(again)["payload"] == "while away");
        CHECK(std::filesystem::is_directory(d.state + "/xymqtt/" + id));  // the default store of the id
        CHECK(tool_dirs::files(d.tmp).empty());
    }

    SECTION("pub and call --clean leave nothing; flags that contradict an ad-hoc session are refused") {
        auto r = run(std::vector<std::string>{"pub", topic, "-m", "x", "--client-id", id, "--clean"} + b, d.env());
        CHECK(r.code == 0);
        r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + unique("none"),
                                         "--timeout", "300", "--client-id", id, "--clean"} + b, d.env());
        CHECK(r.code == 3);
        CHECK(tool_dirs::files(d.tmp).empty());
        CHECK(tool_dirs::files(d.state).empty());

        r = run(std::vector<std::string>{"sub", topic, "--clean", "--store", d.dir / "s"} + b);
        CHECK(r.code == 1);
        CHECK(r.output == "xymqtt: --clean keeps no store: leave out --store");
        r = run(std::vector<std::string>{"sub", topic, "--clean", "--mqtt-version", "4"} + b);
        CHECK(r.code == 1);
        CHECK(contains(r.output, "--clean needs MQTT 5"));
        r = run(std::vector<std::string>{"sub", topic, "--store", d.dir / "s"} + b);
        CHECK(r.code == 1);
        CHECK(contains(r.output, "--store needs --client-id"));
    }
}

TEST_CASE("default client ids: two terminals without --client-id do not take each other's session over",
          "[cli][session]") {
    tool_dirs d("cli-ids");
    const std::vector<std::string> b = {"--broker", shared_broker_uri()};

    SECTION("two subs both get a message published while both run; each has an ad-hoc id with its pid") {
        const std::string topic = "debug/" + unique("ids");
        auto one = start(std::vector<std::string>{"sub", topic, "-n", "1", "--timeout", "20000", "-v"} + b, d.env());
        REQUIRE(one->wait_for_line("xymqtt: subscribed to " + topic, 20s));
        auto two = start(std::vector<std::string>{"sub", topic, "-n", "1", "--timeout", "20000", "-v"} + b, d.env());
        REQUIRE(two->wait_for_line("xymqtt: subscribed to " + topic, 20s));
        auto r = run(std::vector<std::string>{"pub", topic, "-m", "to both"} + b, d.env());
        REQUIRE(r.code == 0);
        for (auto* p : {one.get(), two.get()}) {
            const auto pid = std::to_string(p->pid());
            auto s = finish(*p);
            CHECK(s.code == 0);
            CHECK(json_line(s)["payload"] == "to both");
            CHECK(contains(s.output, "xymqtt: ad-hoc session of client xymqtt-"));
            CHECK(contains(s.output, "-sub-" + pid + ", store " + d.tmp + "/xymqtt-"));
        }
        CHECK(tool_dirs::files(d.tmp).empty());
        CHECK(tool_dirs::files(d.state).empty());
    }

    SECTION("serve keeps a stable id per command, so that its next run resumes its session; call is ad hoc") {
        const std::string sys = unique("sys");
        auto server = start(std::vector<std::string>{"serve", "Publisher.ping", "-s", publisher, "-t", "system=" + sys,
                                                     "--exec", "echo '{\"pong\": true}'", "-n", "1", "-v"} + b,
                            d.env());
        REQUIRE(server->wait_for_line("xymqtt: serving", 20s));
        auto r = run(std::vector<std::string>{"call", "Publisher.ping", "-s", publisher, "-t", "system=" + sys} + b,
                     d.env());
        CHECK(r.code == 0);
        CHECK(json_line(r) == json({{"pong", true}}));
        auto s = finish(*server);
        CHECK(s.code == 0);
        const std::string suffix = "-serve-cmd_" + sys + "_ping";
        CHECK(contains(s.output, "xymqtt: durable session of client xymqtt-"));
        CHECK(contains(s.output, suffix + ", store " + d.state + "/xymqtt/xymqtt-"));
        const auto stores = tool_dirs::entries(d.state + "/xymqtt");
        REQUIRE(stores.size() == 1);
        CHECK(stores[0].size() > suffix.size());
        CHECK(stores[0].compare(stores[0].size() - suffix.size(), suffix.size(), suffix) == 0);
        CHECK(tool_dirs::files(d.tmp).empty());
    }

    SECTION("MQTT 3.1.1 cannot be ad hoc: the stable id of the subcommand, durable") {
        auto r = run(std::vector<std::string>{"pub", "debug/" + unique("v4"), "-m", "x", "--mqtt-version", "4", "-v"} + b,
                     d.env());
        CHECK(r.code == 0);
        CHECK(contains(r.output, "xymqtt: durable session of client xymqtt-"));
        CHECK(contains(r.output, "-pub, store " + d.state + "/xymqtt/xymqtt-"));
        CHECK(tool_dirs::files(d.tmp).empty());
    }
}

TEST_CASE("output templates (-F, --template): mosquitto_sub's placeholders for sub and subscribe, a bad one is a usage error",
          "[cli][template]") {
    temp_dir dir("cli-tpl");

    SECTION("sub: topic, payload, base64, hex, length, content type, delivery id, %%, escapes, the JSON line") {
        const std::string base = "debug/" + unique("tpl");
        auto sub = start(std::vector<std::string>{"sub", base + "/#", "-n", "2", "--timeout", "20000", "-F",
                                                  R"(%t|%p|%b|%x|%X|%l|%C|%m|%%|\t|%j)"} +
                         conn(dir, "sub"));
        REQUIRE(sub->wait_for_line("xymqtt: subscribed to " + base + "/#", 20s));
        const auto p = conn(dir, "pub");
        REQUIRE(run(std::vector<std::string>{"pub", base + "/a", "-m", "hello", "--content-type", "text/plain"} + p).code == 0);
        std::ofstream(dir / "bytes.bin", std::ios::binary) << std::string("\x01\xfe", 2);
        REQUIRE(run(std::vector<std::string>{"pub", base + "/b", "-m", "@" + (dir / "bytes.bin")} + p).code == 0);
        auto s = finish(*sub);
        REQUIRE(s.code == 0);
        const auto lines = printed(s);
        REQUIRE(lines.size() == 2);
        const auto a = split(lines[0], '|'), b = split(lines[1], '|');
        REQUIRE(a.size() == 11);
        REQUIRE(b.size() == 11);
        CHECK(a[0] == base + "/a");
        CHECK(a[1] == "hello");
        CHECK(a[2] == "aGVsbG8=");
        CHECK(a[3] == "68656c6c6f");
        CHECK(a[4] == "68656C6C6F");
        CHECK(a[5] == "5");
        CHECK(a[6] == "text/plain");
        CHECK(a[8] == "%");
        CHECK(a[9] == "\t");
        CHECK(json::parse(a[10]) == json({{"topic", base + "/a"}, {"payload", "hello"}, {"content_type", "text/plain"}}));
        CHECK(b[1] == std::string("\x01\xfe", 2));  // as it is
        CHECK(b[2] == "Af4=");
        CHECK(b[3] == "01fe");
        CHECK(b[4] == "01FE");
        CHECK(b[5] == "2");
        CHECK(b[6].empty());
        CHECK(json::parse(b[10]) == json({{"topic", base + "/b"}, {"payload_base64", "Af4="}}));
        // Delivery ids: the store's, in order.
        CHECK_FALSE(a[7].empty());
        CHECK(a[7].find_first_not_of("0123456789") == std::string::npos);
        CHECK(a[7].size() == b[7].size());
        CHECK(a[7] < b[7]);
    }

    SECTION("subscribe: the event name, the event as JSON, the wire payload in base64, \\n") {
        const std::string sys = unique("sys");
        auto sub = start(std::vector<std::string>{"subscribe", "Publisher.tick", "-s", publisher, "-t", "system=" + sys,
                                                  "-n", "1", "--timeout", "20000", "--template", R"(%e %t\n%p %b)"} +
                         conn(dir, "sub"));
        REQUIRE(sub->wait_for_line("xymqtt: subscribed to evt/" + sys + "/tick", 20s));
        REQUIRE(run(std::vector<std::string>{"publish", "Publisher.tick", "-s", publisher, "-t", "system=" + sys,
                                             "--json", R"({"count": 7})", "--format", "binary"} + conn(dir, "pub"))
                    .code == 0);
        auto s = finish(*sub);
        REQUIRE(s.code == 0);
        const auto lines = printed(s);
        REQUIRE(lines.size() == 2);
        CHECK(lines[0] == "tick evt/" + sys + "/tick");
        const auto space = lines[1].rfind(' ');
        REQUIRE(space != std::string::npos);
        CHECK(json::parse(lines[1].substr(0, space)) == json({{"timestamp", ""}, {"count", "7"}}));
        CHECK(lines[1].substr(space + 1) == "EAc=");  // protobuf: field 2, varint 7
    }

    SECTION("a bad template: exit 1 with what is wrong, before connecting") {
        const std::vector<std::string> nowhere = {"--broker", "tcp://127.0.0.1:" + std::to_string(free_port()),
                                                  "--connect-timeout", "300"};
        auto r = run(std::vector<std::string>{"sub", "x", "-F", "%t %z"} + nowhere);
        CHECK(r.code == 1);
        CHECK(r.output == "xymqtt: --template: unknown placeholder %z (placeholders: %t topic, %p payload, %b base64, "
                          "%x/%X hex, %l length, %C content type, %m delivery id, %j JSON line, %% a %)");
        r = run(std::vector<std::string>{"sub", "x", "-F", "%e"} + nowhere);
        CHECK(r.code == 1);
        CHECK(contains(r.output, "%e (the event name) is for subscribe"));
        r = run(std::vector<std::string>{"subscribe", "Publisher.tick", "-s", publisher, "-F", "100%"} + nowhere);
        CHECK(r.code == 1);
        CHECK(contains(r.output, "--template ends in a lone %"));
        r = run(std::vector<std::string>{"sub", "x", "--template", R"(a\q)"} + nowhere);
        CHECK(r.code == 1);
        CHECK(contains(r.output, R"(unknown escape \q)"));
    }
}

TEST_CASE("TLS flags as mosquitto_pub's: --cafile, --capath, --cert/--key with --key-password, --insecure, refusals exit 5",
          "[cli][tls]") {
    test_pki certs("xymqtt-cli");
    const std::uint16_t good = free_port(), other = free_port(), mutual = free_port();
    broker tls_broker(certs.listener(good, "server", false) + certs.listener(other, "other", false) +
                      certs.listener(mutual, "server", true));
    for (auto port : {good, other, mutual})
        for (int i = 0; i < 100 && !port_open(port); ++i) std::this_thread::sleep_for(100ms);
    const std::string topic = "debug/" + unique("tls");
    auto at = [](std::uint16_t port) {
        return std::vector<std::string>{"--broker", "ssl://localhost:" + std::to_string(port), "--connect-timeout", "3000"};
    };
    const std::vector<std::string> ca = {"--cafile", certs.path("ca.crt")};
    const std::vector<std::string> pub = {"pub", topic, "-m", "over tls"};

    SECTION("the test CA: connected, and messages flow") {
        auto sub = start(std::vector<std::string>{"sub", topic, "-n", "1", "--timeout", "20000"} + at(good) + ca);
        REQUIRE(sub->wait_for_line("xymqtt: subscribed to " + topic, 20s));
        CHECK(run(pub + at(good) + ca).code == 0);
        auto s = finish(*sub);
        CHECK(s.code == 0);
        CHECK(json_line(s)["payload"] == "over tls");
    }

    SECTION("a CA that did not sign the server certificate: exit 5 with OpenSSL's reason; a missing file: exit 1") {
        auto r = run(pub + at(good) + std::vector<std::string>{"--cafile", certs.path("wrong-ca.crt")});
        CHECK(r.code == 5);
        CHECK(contains(r.output, "xymqtt: cannot connect to ssl://localhost:" + std::to_string(good) + " within 3000 ms"));
        CHECK(contains(r.output, "certificate verify failed"));
        r = run(pub + at(good) + std::vector<std::string>{"--cafile", certs.path("missing.crt")});
        CHECK(r.code == 1);
        CHECK(contains(r.output, "cannot read " + certs.path("missing.crt")));
    }

    SECTION("TLS files with a plain tcp:// broker: a usage error, nothing sent in clear") {
        auto r = run(pub + std::vector<std::string>{"--broker", "tcp://localhost:" + std::to_string(good), "--connect-timeout",
                                                    "3000"} + ca);
        CHECK(r.code == 1);
        CHECK(contains(r.output, "need an ssl:// or mqtts:// broker URI"));
    }

    SECTION("--capath: a directory of CAs named by hash (openssl rehash); one without the signing CA is refused") {
        const std::string good_dir = certs.path("cas"), wrong_dir = certs.path("wrong-cas");
        for (const auto& [dir, file] : {std::pair{good_dir, "ca.crt"}, std::pair{wrong_dir, "wrong-ca.crt"}}) {
            std::filesystem::create_directories(dir);
            std::filesystem::copy_file(certs.path(file), dir + "/" + file);
            run_checked({"openssl", "rehash", "."}, dir);
        }
        CHECK(run(pub + at(good) + std::vector<std::string>{"--capath", good_dir}).code == 0);
        auto r = run(pub + at(good) + std::vector<std::string>{"--capath", wrong_dir});
        CHECK(r.code == 5);
        CHECK(contains(r.output, "certificate verify failed"));
        r = run(pub + at(good) + std::vector<std::string>{"--capath", certs.path("missing-dir")});
        CHECK(r.code == 1);
        CHECK(contains(r.output, "cannot read " + certs.path("missing-dir")));
    }

    SECTION("a certificate for another host name: refused, unless --insecure") {
        CHECK(run(pub + at(other) + ca).code == 5);
        CHECK(run(pub + at(other) + ca + std::vector<std::string>{"--insecure"}).code == 0);
    }

    SECTION("mutual TLS with an encrypted client key: --key-password or $XYMQTT_KEY_PASSWORD") {
        const auto client = ca + std::vector<std::string>{"--cert", certs.path("client.crt"), "--key",
                                                          certs.path("client-enc.key")};
        CHECK(run(pub + at(mutual) + client + std::vector<std::string>{"--key-password", certs.key_password}).code == 0);
        CHECK(run(pub + at(mutual) + client, {{"XYMQTT_KEY_PASSWORD", certs.key_password}}).code == 0);
        auto r = run(pub + at(mutual) + client + std::vector<std::string>{"--key-password", "wrong"});
        CHECK(r.code == 5);
        CHECK(contains(r.output, "xymqtt: cannot connect to ssl://localhost:"));
        CHECK(run(pub + at(mutual) + ca).code == 5);  // no client certificate
        r = run(pub + at(mutual) + ca + std::vector<std::string>{"--key-password", certs.key_password});
        CHECK(r.code == 1);
        CHECK(r.output == "xymqtt: --key-password needs --key");
        r = run(pub + at(mutual) + ca + std::vector<std::string>{"--cert", certs.path("client.crt")});
        CHECK(r.code == 1);
        CHECK(r.output == "xymqtt: --cert and --key go together");
    }
}
