// Hostile input end to end: bad topic tokens, oversized payloads, colliding message ids, JSON with wrong
// types, garbage results. Clear errors or dead letters; never a crash or a blocked stream.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "rel_util.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// A server for `command` answering JSON {"n": <string>} with {"echo": n}; wrong types throw.
struct json_server {
    temp_dir dir{"hostile"};
    std::string uri = shared_broker_uri();
    std::string command;
    std::atomic<int> runs{0};
    std::unique_ptr<client> server, caller;
    std::function<std::string(const invocation&)> body = [](const invocation& inv) {
        auto req = json::parse(inv.body);
        return json{{"echo", req.at("n").get<std::string>()}}.dump();  // type_error if "n" is not a string
    };
    json_server() {
        auto so = options_for(dir, "server", uri);
        command = "rel/" + so.client_id + "/cmd";
        server = std::make_unique<client>(so);
        server->command_register(command, [this](const invocation& inv, call_context&) {
            ++runs;
            return body(inv);
        });
        server->connect();
        REQUIRE(server->wait_connected(10s));
        caller = connected(options_for(dir, "caller", uri));
        REQUIRE(eventually([&] {
            try {
                caller->call_async(command, R"({"n":"warm"})", call_options{wire_format::json, {}, {}}, 1s).result.get();
                return true;
            } catch (const timeout_error&) {
                return false;
            }
        }, 20s));
    }
    command_result call(const std::string& body_json, wire_format f = wire_format::json) {
        auto p = caller->call_async(command, body_json, call_options{f, {}, {}}, 10s);
        return p.result.get();
    }
};

}  // namespace

TEST_CASE("topic tokens with wildcards, '/', NUL or invalid UTF-8 are refused with a clear error", "[hostile]") {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"a/b", "'/'"}, {"+", "'+'"}, {"#", "'#'"}, {std::string("a\0b", 3), "NUL"},
        {"\xff\xfe", "UTF-8"}, {"\xc0\xaf", "UTF-8"}, {"\xed\xa0\x80", "UTF-8"}, {"", "empty"}};
    temp_dir dir("tokens");
    client c(options_for(dir, "c"));
    for (const auto& [value, why] : bad) {
        CAPTURE(value, why);
        try {
            validate_topic_token("device", value);
            FAIL("accepted");
        } catch (const invalid_topic& e) {
            const std::string msg = e.what();
            CHECK(msg.find("{device}") != std::string::npos);
            CHECK(msg.find(why == "'/'" || why == "'+'" || why == "'#'" ? "contains" : why == "empty" ? "empty" : why) !=
                  std::string::npos);
        }
        // A topic built from it by hand is refused before anything is stored (except '/', which only
        // adds a level, and "", which makes an empty level: legal in a topic, which is why tokens are
        // checked on their own).
        if (value != "a/b" && !value.empty()) CHECK_THROWS_AS(c.publish("rel/" + value + "/x", "p"), invalid_topic);
    }
    CHECK(c.stats().outbox == 0);
    CHECK_NOTHROW(validate_topic_token("device", "sensor-42_\xc3\xa9"));
}

TEST_CASE("payloads: binary bytes arrive intact, 8 MiB works, a broker's size limit is an error", "[hostile]") {
    broker b("message_size_limit 65536\n");
    temp_dir dir("payloads");
    recorder got;
    auto sub = connected(options_for(dir, "sub", b.uri()));
    const std::string topic = "rel/" + sub->options().client_id + "/p";
    sub->subscribe(topic, [&](const message& m) { got.add(m.payload); });
    auto pub = connected(options_for(dir, "pub", b.uri()));
    publish_until_heard(*pub, topic, "probe", got, 500ms);
    const std::string binary("\0\xff\xfe{\"messageId\":\0}\n\r", 18);
    pub->publish(topic, binary).get();
    // Over the broker's limit: refused with a reason code, the publish fails, the stream goes on.
    auto big = pub->publish(topic, std::string(100000, 'z'));
    REQUIRE(big.wait_for(20s) == std::future_status::ready);
    int reason = 0;
    try {
        big.get();
        FAIL("an oversized publish was reported as delivered");
    } catch (const broker_error& e) {
        reason = e.reason_code();
    }
    INFO("reason code " << reason);
    CHECK(reason >= 0x80);
    pub->publish(topic, "after-oversized").get();
    REQUIRE(eventually([&] {
        auto items = got.items();
        return std::find(items.begin(), items.end(), "after-oversized") != items.end();
    }));
    auto items = got.items();
    CHECK(std::find(items.begin(), items.end(), binary) != items.end());
    CHECK(pub->stats().dead_letters == 1);  // the refused publish is kept, not silently dropped
    report_line("oversized publish (100,000 bytes over message_size_limit 65536): broker_error reason " +
                std::to_string(reason) + ", the next publish went through");

    // Large but allowed (shared broker, no limit): 8 MiB end to end.
    temp_dir d2("bigpayload");
    recorder big_got;
    auto s2 = connected(options_for(d2, "sub"));
    const std::string t2 = "rel/" + s2->options().client_id + "/big";
    s2->subscribe(t2, [&](const message& m) { big_got.add(m.payload); });
    auto p2 = connected(options_for(d2, "pub"));
    publish_until_heard(*p2, t2, "probe", big_got, 500ms);
    std::string eight(8 << 20, '\0');
    for (std::size_t i = 0; i < eight.size(); ++i) eight[i] = static_cast<char>(i * 131);
    p2->publish(t2, eight).get();
    REQUIRE(big_got.wait_size(2, 30s));
    CHECK(big_got.items()[1] == eight);
}

TEST_CASE("two callers using the same message id: the handler runs once, both get its outcome", "[hostile]") {
    json_server s;
    const int before = s.runs;
    recorder a_got, b_got;
    auto a = connected(options_for(s.dir, "raw-a"));
    auto b = connected(options_for(s.dir, "raw-b"));
    a->subscribe(s.command + "/resolve", [&](const message& m) { a_got.add(m.payload); });
    b->subscribe(s.command + "/resolve", [&](const message& m) { b_got.add(m.payload); });
    publish_until_heard(*a, s.command + "/invoke", R"({"messageId":"collide-1","n":"first"})", a_got, 1s);
    b->publish(s.command + "/invoke", R"({"messageId":"collide-1","n":"second"})").get();
    REQUIRE(b_got.wait_size(2, 10s));  // b sees both resolves on the shared topic
    CHECK(s.runs - before == 1);  // the id is the call's identity: the second invoke is a repeat
    for (auto& r : b_got.items()) CHECK(json::parse(r)["echo"] == "first");
    // The server goes on serving.
    CHECK(s.call(R"({"n":"next"})").ok);
}

TEST_CASE("JSON with wrong types: rejects or dead letters, and the next call still flows", "[hostile]") {
    json_server s;
    auto raw = connected(options_for(s.dir, "raw"));
    recorder rejects;
    raw->subscribe(s.command + "/reject", [&](const message& m) { rejects.add(m.payload); });
    // "n" is a number: the handler throws nlohmann's type_error -> reject 500 with its text.
    publish_until_heard(*raw, s.command + "/invoke", R"({"messageId":"wt-1","n":42})", rejects, 1s);
    const auto rj = json::parse(rejects.items()[0]);
    CHECK(rj["messageId"] == "wt-1");
    CHECK(rj["status"] == 500);
    CHECK(rj["ok"] == false);
    // Invokes without a usable id, not JSON, not an object, absurdly nested: dead letters.
    const std::string nested = "{\"messageId\":\"deep\",\"n\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
    const std::vector<std::string> poison = {R"({"messageId":12,"n":"x"})", R"({"messageId":null})", R"({"n":"x"})",
                                             "not json", R"(["messageId","x"])", "", std::string("\xff\xfe{", 3),
                                             "{\"messageId\":\"" + std::string(300, 'i') + "\"}"};
    for (const auto& p : poison) raw->publish(s.command + "/invoke", p).get();
    raw->publish(s.command + "/invoke", nested).get();
    CHECK(s.call(R"({"n":"after-poison"})").ok);
    REQUIRE(eventually([&] { return s.server->dead_letters().size() >= poison.size(); }, 10s));
    // Garbage results at the caller: no id, wrong types, a reject whose status is text.
    s.caller->publish(s.command + "/resolve", R"({"messageId":42})").get();
    s.caller->publish(s.command + "/resolve", "]]]").get();
    s.caller->publish(s.command + "/reject", R"({"messageId":"unknown","status":"abc","message":7})").get();
    // A status no int holds (found by fuzz_wire: converting it was undefined behaviour).
    s.caller->publish(s.command + "/reject", R"({"messageId":"unknown","status":4e79})").get();
    s.caller->publish(s.command + "/reject", R"({"messageId":"unknown","status":99999999999})").get();
    const auto r = s.call(R"({"n":"after-garbage"})");
    CHECK(r.ok);
    CHECK(json::parse(r.body)["echo"] == "after-garbage");
    report_line("hostile JSON: " + std::to_string(poison.size() + 1) +
                " poison invokes dead-lettered (incl. 100,000-deep nesting), a wrong-typed field rejected 500, "
                "garbage results ignored, later calls answered");
}

TEST_CASE("message ids longer than a store key: dead letters and an ignored result, no wedged lane", "[hostile]") {
    // 600 bytes: over LMDB's 511-byte key limit. A cancel with such an id used to make the commit throw on
    // the cancel lane, which retried it forever; a result with one, on the caller's result lane.
    json_server s;
    auto raw = connected(options_for(s.dir, "raw"));
    const std::string long_id(600, 'L');
    const auto dead_before = s.server->dead_letters().size();
    const int runs_before = s.runs.load();
    raw->publish(s.command + "/invoke", json{{"messageId", long_id}, {"n", "x"}}.dump()).get();
    raw->publish(s.command + "/cancel", json{{"messageId", long_id}}.dump()).get();
    s.caller->publish(s.command + "/resolve", json{{"messageId", long_id}, {"echo", "?"}}.dump()).get();
    s.caller->publish(s.command + "/reject", json{{"messageId", long_id}, {"status", 500}}.dump()).get();
    const auto r = s.call(R"({"n":"after-long-ids"})");  // every lane still flows
    CHECK(r.ok);
    CHECK(json::parse(r.body)["echo"] == "after-long-ids");
    REQUIRE(eventually([&] { return s.server->dead_letters().size() == dead_before + 2; }, 10s));
    CHECK(s.runs.load() == runs_before + 1);  // the long-id invoke never ran
    CHECK(s.server->wait_inbox_empty(10s));
    CHECK(s.caller->wait_inbox_empty(10s));
    CHECK(s.caller->dead_letters().empty());
}

TEST_CASE("a handler whose error text is not UTF-8 still rejects the call (JSON and binary)", "[hostile][bug]") {
    // Found by fuzz_wire: encode_reject puts the handler's exception text into the JSON reject (and
    // into an MQTT 5 user property for binary); nlohmann::json::dump throws type_error 316 on invalid
    // UTF-8, so the reject is never published: the invoke is retried forever (the handler runs again
    // at every backoff) and the caller never gets an answer.
    json_server s;
    s.body = [](const invocation& inv) -> std::string {
        if (inv.body.find("bad-text") != std::string::npos) throw std::runtime_error("bad byte \xff in text");
        return inv.format == wire_format::json ? std::string(R"({"ok":1})") : std::string("ok");
    };
    const int before = s.runs;
    auto p = s.caller->call_async(s.command, R"({"n":"bad-text"})", call_options{wire_format::json, {}, {}}, 3s);
    std::string outcome;
    try {
        auto r = p.result.get();
        outcome = "reject " + std::to_string(r.status);
        CHECK_FALSE(r.ok);
        CHECK(r.status == 500);
    } catch (const timeout_error&) {
        outcome = "timeout";
    }
    INFO("JSON call: " << outcome << ", handler runs " << s.runs - before);
    CHECK(outcome == "reject 500");
    auto pb = s.caller->call_async(s.command, "bad-text", call_options{wire_format::binary, {}, {}}, 3s);
    std::string boutcome;
    try {
        auto r = pb.result.get();
        boutcome = "reject " + std::to_string(r.status);
    } catch (const timeout_error&) {
        boutcome = "timeout";
    }
    INFO("binary call: " << boutcome);
    CHECK(boutcome == "reject 500");
    // And the server is not blocked by it.
    CHECK(s.caller->call_async(s.command, R"({"n":"x"})", call_options{wire_format::json, {}, {}}, 10s).result.get().ok);
}
