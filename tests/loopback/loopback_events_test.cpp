// loopback: events (publish / subscribe / unsubscribe), lanes, retries, dead letters, pumping.
#include <atomic>
#include <stdexcept>

#include "loopback_test_util.h"
#include "xymqtt/exception.h"

using namespace loopback_test;
using namespace xymqtt;
using namespace xymqtt::testing;

namespace {

std::vector<std::string> payloads(const std::vector<message>& ms) {
    std::vector<std::string> out;
    for (const auto& m : ms) out.push_back(m.payload);
    return out;
}

}  // namespace

TEST_CASE("loopback publish: validates the topic, is accepted at once and recorded", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));

    CHECK_THROWS_AS(lb.publish("a/+/c", "x"), invalid_topic);
    CHECK_THROWS_AS(lb.publish("a/#", "x"), invalid_topic);
    CHECK_THROWS_AS(lb.publish("", "x"), invalid_topic);
    CHECK(lb.published().empty());

    publish_options po;
    po.props.content_type = "text/plain";
    po.props.user = {{"k", "v"}};
    auto f = lb.publish("evt/a", "hello", po);  // no subscriber at all
    REQUIRE(f.wait_for(0s) == std::future_status::ready);
    CHECK_NOTHROW(f.get());

    const auto pub = lb.published();
    REQUIRE(pub.size() == 1);
    CHECK(pub[0].topic == "evt/a");
    CHECK(pub[0].payload == "hello");
    CHECK(pub[0].props == po.props);
    CHECK_FALSE(pub[0].retain);
    CHECK(lb.published("evt/a").size() == 1);
    CHECK(lb.published("evt/b").empty());
    CHECK(lb.stats().published == 1);

    lb.clear_published();
    CHECK(lb.published().empty());
    settle(lb);
}

TEST_CASE("loopback subscribe: every matching filter gets one delivery", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<message> plus, hash, other;
    lb.subscribe("a/+/c", [&](const message& m) { plus.add(m); });
    lb.subscribe("a/#", [&](const message& m) { hash.add(m); });
    lb.subscribe("x/y", [&](const message& m) { other.add(m); });
    CHECK_THROWS_AS(lb.subscribe("a/#/c", [](const message&) {}), invalid_topic);
    CHECK_THROWS_AS(lb.subscribe("a+", [](const message&) {}), invalid_topic);
    CHECK(lb.subscribed_filters() == std::vector<std::string>{"a/+/c", "a/#", "x/y"});

    publish_options po;
    po.props.correlation_data = "corr";
    lb.publish("a/b/c", "1", po);
    lb.publish("a/b", "2");
    settle(lb);

    const auto p = plus.items();
    REQUIRE(p.size() == 1);
    CHECK(p[0].topic == "a/b/c");
    CHECK(p[0].payload == "1");
    CHECK(p[0].props.correlation_data == "corr");
    CHECK(p[0].attempt == 1);
    CHECK_FALSE(p[0].id.empty());
    CHECK(p[0].received_at_ms > 0);
    CHECK(payloads(hash.items()) == std::vector<std::string>{"1", "2"});
    CHECK(other.size() == 0);
    // Delivery ids are unique and ordered.
    const auto h = hash.items();
    CHECK(h[0].id < h[1].id);
    CHECK(p[0].id != h[0].id);
    CHECK(lb.stats().handled == 3);
    CHECK(lb.stats().pending == 0);
}

TEST_CASE("loopback manual mode: nothing runs until the test pumps", "[loopback][events][manual]") {
    loopback lb;  // manual by default
    recorder<message> got;
    lb.subscribe("t/1", [&](const message& m) { got.add(m); });
    lb.subscribe("t/2", [&](const message& m) { got.add(m); });
    lb.publish("t/1", "a");
    lb.publish("t/2", "b");
    lb.publish("t/1", "c");
    CHECK(got.size() == 0);
    CHECK(lb.stats().pending == 3);

    SECTION("run_one runs the oldest delivery first") {
        CHECK(lb.run_one());
        CHECK(payloads(got.items()) == std::vector<std::string>{"a"});
        CHECK(lb.run_until_idle() == 2);
        CHECK(payloads(got.items()) == std::vector<std::string>{"a", "b", "c"});
        CHECK_FALSE(lb.run_one());
        CHECK(lb.run_until_idle() == 0);
    }
    SECTION("run_one(filter) picks a lane") {
        CHECK(lb.run_one("t/2"));
        CHECK(payloads(got.items()) == std::vector<std::string>{"b"});
        CHECK_FALSE(lb.run_one("t/2"));
        CHECK_FALSE(lb.run_one("t/3"));
        CHECK(lb.run_until_idle() == 2);
        CHECK(payloads(got.items()) == std::vector<std::string>{"b", "a", "c"});
    }
    SECTION("run_until_idle honours its limit") {
        CHECK(lb.run_until_idle(2) == 2);
        CHECK(lb.stats().pending == 1);
        CHECK(lb.wait_idle());
        CHECK(got.size() == 3);
    }
}

TEST_CASE("loopback threaded mode: delivers without pumping, pumping is refused", "[loopback][events][threaded]") {
    loopback lb(options_for(delivery_mode::threaded));
    recorder<message> got;
    lb.subscribe("t", [&](const message& m) { got.add(m); });
    lb.publish("t", "a");
    CHECK(got.wait_for_count(1));
    CHECK_THROWS_AS(lb.run_until_idle(), std::logic_error);
    CHECK_THROWS_AS(lb.run_one(), std::logic_error);
    CHECK_THROWS_AS(lb.run_one("t"), std::logic_error);
    settle(lb);
}

TEST_CASE("loopback subscribe: several handlers per filter, unsubscribe", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> calls;
    const auto id1 = lb.subscribe("t", [&](const message& m) { calls.add("h1:" + m.payload); });
    const auto id2 = lb.subscribe("t", [&](const message& m) { calls.add("h2:" + m.payload); });
    CHECK(id1 != id2);
    CHECK(lb.subscribed_filters() == std::vector<std::string>{"t"});

    lb.publish("t", "1");
    settle(lb);
    CHECK(calls.items() == std::vector<std::string>{"h1:1", "h2:1"});  // in subscription order

    lb.unsubscribe(id1);
    lb.unsubscribe(id1);      // twice: harmless
    lb.unsubscribe(123456);   // unknown: harmless
    lb.publish("t", "2");
    settle(lb);
    CHECK(calls.items() == std::vector<std::string>{"h1:1", "h2:1", "h2:2"});

    lb.unsubscribe(id2);
    CHECK(lb.subscribed_filters().empty());
    lb.publish("t", "3");
    settle(lb);
    CHECK(calls.size() == 3);
    CHECK(lb.published().size() == 3);  // accepted even with nobody subscribed
}

TEST_CASE("loopback unsubscribe: the last handler of a filter parks its queued deliveries",
          "[loopback][events][manual]") {
    loopback lb;
    recorder<std::string> got;
    const auto id = lb.subscribe("t", [&](const message& m) { got.add(m.payload); });
    lb.publish("t", "1");
    lb.publish("t", "2");
    CHECK(lb.stats().pending == 2);
    lb.unsubscribe(id);
    CHECK(lb.stats().pending == 0);
    CHECK(lb.run_until_idle() == 0);
    lb.publish("t", "not subscribed: never delivered");
    lb.subscribe("t", [&](const message& m) { got.add("again:" + m.payload); });  // adopts the parked ones
    lb.publish("t", "3");
    CHECK(lb.run_until_idle() == 3);
    CHECK(got.items() == std::vector<std::string>{"again:1", "again:2", "again:3"});
}

TEST_CASE("loopback unsubscribe(filter) removes every handler of the filter", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> got;
    lb.subscribe("t", [&](const message& m) { got.add("1" + m.payload); });
    lb.subscribe("t", [&](const message& m) { got.add("2" + m.payload); });
    lb.subscribe("u", [&](const message& m) { got.add("u" + m.payload); });
    lb.unsubscribe(std::string("t"));
    CHECK(lb.subscribed_filters() == std::vector<std::string>{"u"});
    lb.publish("t", "x");
    lb.publish("u", "x");
    settle(lb);
    CHECK(got.items() == std::vector<std::string>{"ux"});
}

TEST_CASE("loopback shared subscriptions: one member per message, round robin", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> a, b, plain, other_group;
    lb.subscribe("$share/g/jobs/+", [&](const message& m) { a.add(m.payload); });
    lb.subscribe("$share/g/jobs/+", [&](const message& m) { b.add(m.payload); });
    lb.subscribe("jobs/+", [&](const message& m) { plain.add(m.payload); });
    lb.subscribe("$share/h/jobs/+", [&](const message& m) { other_group.add(m.payload); });
    CHECK_THROWS_AS(lb.subscribe("$share/g+/jobs", [](const message&) {}), invalid_topic);

    for (int i = 1; i <= 4; ++i) lb.publish("jobs/x", std::to_string(i));
    settle(lb);
    CHECK(a.items() == std::vector<std::string>{"1", "3"});
    CHECK(b.items() == std::vector<std::string>{"2", "4"});
    CHECK(plain.size() == 4);
    CHECK(other_group.size() == 4);
}

TEST_CASE("loopback retained messages reach a new subscription", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    publish_options retain;
    retain.retain = true;
    lb.publish("state/a", "on", retain);
    lb.publish("state/b", "off", retain);
    lb.publish("state/b", "", retain);  // clears state/b
    lb.publish("state/c", "not retained");
    CHECK(lb.published()[0].retain);

    recorder<std::string> got;
    lb.subscribe("state/+", [&](const message& m) { got.add(m.topic + "=" + m.payload); });
    settle(lb);
    CHECK(got.items() == std::vector<std::string>{"state/a=on"});
}

TEST_CASE("loopback retry: a throwing handler is retried and blocks only its own lane", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    auto opts = options_for(mode);
    recorder<std::string> retry_hook;
    opts.hooks.on_message_retry = [&](const message& m, const std::string& err, std::chrono::milliseconds) {
        retry_hook.add(m.payload + ":" + std::to_string(m.attempt) + ":" + err);
    };
    loopback lb(opts);

    latch other_lane_ran;
    recorder<std::string> a_seen;  // "<payload>@<attempt>"
    std::atomic<int> failures{0};
    lb.subscribe("a", [&](const message& m) {
        a_seen.add(m.payload + "@" + std::to_string(m.attempt));
        // "1" fails until the other lane has run, and at least twice.
        if (m.payload == "1" && (!other_lane_ran.is_open() || failures < 2)) {
            ++failures;
            throw std::runtime_error("not yet");
        }
    });
    lb.subscribe("b", [&](const message&) { other_lane_ran.open(); });

    lb.publish("a", "1");
    lb.publish("a", "2");
    lb.publish("b", "x");
    settle(lb);

    CHECK(other_lane_ran.is_open());
    const auto seen = a_seen.items();
    REQUIRE(seen.size() >= 4);
    // Attempts count up, and "2" only runs after "1" succeeded.
    for (std::size_t i = 0; i + 1 < seen.size(); ++i) CHECK(seen[i] == "1@" + std::to_string(i + 1));
    CHECK(seen.back() == "2@1");
    const auto retries = static_cast<std::size_t>(failures.load());
    CHECK(seen.size() == retries + 2);
    CHECK(lb.stats().retries == retries);
    CHECK(retry_hook.size() == retries);
    CHECK(retry_hook.items()[0] == "1:1:not yet");
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback retry: manual mode interleaves a retry behind other lanes", "[loopback][events][manual]") {
    loopback lb;
    recorder<std::string> order;
    int a_calls = 0;
    lb.subscribe("a", [&](const message& m) {
        order.add("a" + m.payload + "@" + std::to_string(m.attempt));
        if (++a_calls == 1) throw std::runtime_error("first attempt fails");
    });
    lb.subscribe("b", [&](const message& m) { order.add("b" + m.payload); });
    lb.publish("a", "1");
    lb.publish("b", "1");
    lb.publish("a", "2");
    lb.publish("b", "2");
    CHECK(lb.run_until_idle() == 5);
    CHECK(order.items() == std::vector<std::string>{"a1@1", "b1", "b2", "a1@2", "a2@1"});
}

TEST_CASE("loopback retry: a throwing handler ends the attempt, handlers that succeeded do not run again",
          "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> runs;
    lb.subscribe("t", [&](const message& m) {
        runs.add("A" + std::to_string(m.attempt));
        if (m.attempt == 1) throw std::runtime_error("A fails once");
    });
    lb.subscribe("t", [&](const message& m) {
        runs.add("B" + std::to_string(m.attempt));
        if (m.attempt == 2) throw std::runtime_error("B fails once");
    });
    lb.subscribe("t", [&](const message& m) { runs.add("C" + std::to_string(m.attempt)); });
    lb.publish("t", "x");
    settle(lb);
    CHECK(runs.items() == std::vector<std::string>{"A1", "A2", "B2", "B3", "C3"});
    CHECK(lb.stats().retries == 2);
    CHECK(lb.stats().handled == 1);
    CHECK(lb.stats().deliveries == 3);
}

TEST_CASE("loopback parse_error: dead letter at once, the lane goes on", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    auto opts = options_for(mode);
    recorder<std::string> parse_hook, dead_hook;
    opts.hooks.on_parse_error = [&](const message& m, const std::string& e) { parse_hook.add(m.payload + ":" + e); };
    opts.hooks.on_dead_letter = [&](const message& m, const std::string& e) { dead_hook.add(m.payload + ":" + e); };
    loopback lb(opts);
    recorder<std::string> got;
    lb.subscribe("t", [&](const message& m) {
        if (m.payload == "bad") throw parse_error("cannot decode");
        got.add(m.payload);
    });
    lb.publish("t", "bad");
    lb.publish("t", "good");
    settle(lb);

    CHECK(got.items() == std::vector<std::string>{"good"});
    const auto dl = lb.dead_letters();
    REQUIRE(dl.size() == 1);
    CHECK(dl[0].msg.payload == "bad");
    CHECK(dl[0].msg.attempt == 1);
    CHECK(dl[0].filter == "t");
    CHECK(dl[0].reason == "cannot decode");
    CHECK(dl[0].undecodable);
    CHECK(parse_hook.items() == std::vector<std::string>{"bad:cannot decode"});
    CHECK(dead_hook.items() == std::vector<std::string>{"bad:cannot decode"});
    CHECK(lb.stats().retries == 0);
    CHECK(lb.stats().dead_letters == 1);
    lb.clear_dead_letters();
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback dead letters can be replayed and purged", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    std::atomic<bool> fixed{false};
    recorder<std::string> got;
    lb.subscribe("t", [&](const message& m) {
        if (!fixed) throw parse_error("old decoder");
        got.add(m.payload + "@" + std::to_string(m.attempt));
    });
    lb.publish("t", "a");
    lb.publish("t", "b");
    settle(lb);
    auto dl = lb.dead_letters();
    REQUIRE(dl.size() == 2);
    CHECK_FALSE(lb.replay_dead_letter("no such id"));
    CHECK_FALSE(lb.purge_dead_letter("no such id"));
    fixed = true;
    CHECK(lb.replay_dead_letter(dl[0].msg.id));
    CHECK(lb.purge_dead_letter(dl[1].msg.id));
    settle(lb);
    CHECK(got.items() == std::vector<std::string>{"a@1"});
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback retry_policy::max_attempts: dead letter after the last attempt", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    auto opts = options_for(mode);
    opts.retry.max_attempts = 3;
    recorder<std::string> parse_hook, dead_hook;
    opts.hooks.on_parse_error = [&](const message& m, const std::string&) { parse_hook.add(m.payload); };
    opts.hooks.on_dead_letter = [&](const message& m, const std::string&) { dead_hook.add(m.payload); };
    loopback lb(opts);
    recorder<std::string> seen;
    lb.subscribe("t", [&](const message& m) {
        seen.add(m.payload + "@" + std::to_string(m.attempt));
        if (m.payload == "poison") throw std::runtime_error("always");
    });
    lb.publish("t", "poison");
    lb.publish("t", "next");
    settle(lb);
    CHECK(seen.items() == std::vector<std::string>{"poison@1", "poison@2", "poison@3", "next@1"});
    const auto dl = lb.dead_letters();
    REQUIRE(dl.size() == 1);
    CHECK(dl[0].msg.attempt == 3);
    CHECK(dl[0].reason == "gave up after 3 attempts: always");
    CHECK_FALSE(dl[0].undecodable);
    CHECK(lb.stats().retries == 2);
    CHECK(parse_hook.size() == 0);
    CHECK(dead_hook.items() == std::vector<std::string>{"poison"});
}

TEST_CASE("loopback manual mode: a handler that always throws cannot hang run_until_idle",
          "[loopback][events][manual]") {
    loopback lb;  // max_attempts 0: retries forever
    lb.subscribe("t", [](const message&) { throw std::runtime_error("never"); });
    lb.publish("t", "x");
    CHECK(lb.run_until_idle(50) == 50);
    CHECK(lb.stats().retries == 50);
    CHECK(lb.stats().pending == 1);
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback threaded mode: retries wait for the policy's delay on the loopback's clock",
          "[loopback][events][threaded]") {
    auto opts = options_for(delivery_mode::threaded);
    opts.retry.initial = std::chrono::hours(1);
    opts.retry.cap = std::chrono::hours(1);
    latch retried;
    recorder<std::chrono::milliseconds> delays;  // no Catch assertions on handler threads
    opts.hooks.on_message_retry = [&](const message&, const std::string&, std::chrono::milliseconds d) {
        delays.add(d);
        retried.open();
    };
    loopback lb(opts);
    std::atomic<int> attempts{0};
    lb.subscribe("t", [&](const message&) {
        if (++attempts == 1) throw std::runtime_error("first fails");
    });
    lb.publish("t", "x");
    REQUIRE(retried.wait());
    CHECK(delays.items() == std::vector<std::chrono::milliseconds>{std::chrono::hours(1)});
    CHECK_FALSE(lb.wait_idle(20ms));  // the retry waits an hour: not idle
    CHECK(attempts == 1);
    lb.advance_clock(std::chrono::hours(1));
    settle(lb);
    CHECK(attempts == 2);
}

TEST_CASE("loopback hooks observe publishes and deliveries", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    auto opts = options_for(mode);
    recorder<std::string> sent, received, delivered;
    opts.hooks.on_packet_send = [&](const std::string& t, const std::string&) { sent.add(t); };
    opts.hooks.on_packet_receive = [&](const std::string& t, const std::string&) { received.add(t); };
    opts.hooks.on_message = [&](const message& m) {
        delivered.add(m.topic);
        throw std::runtime_error("hooks' exceptions are ignored");
    };
    loopback lb(opts);
    lb.subscribe("a", [](const message&) {});
    lb.publish("a", "1");
    lb.publish("b", "2");
    settle(lb);
    CHECK(sent.items() == std::vector<std::string>{"a", "b"});
    CHECK(received.items() == std::vector<std::string>{"a"});
    CHECK(delivered.items() == std::vector<std::string>{"a"});
    CHECK(lb.stats().handled == 1);
}

TEST_CASE("loopback handlers may publish and subscribe", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> got;
    lb.subscribe("ping", [&](const message& m) { lb.publish("pong", m.payload + "!"); });
    lb.subscribe("pong", [&](const message& m) { got.add(m.payload); });
    lb.publish("ping", "1");
    settle(lb);
    CHECK(got.items() == std::vector<std::string>{"1!"});
}

TEST_CASE("loopback fail_next_publish injects publish failures", "[loopback][events]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    recorder<std::string> got;
    lb.subscribe("t", [&](const message& m) { got.add(m.payload); });

    lb.fail_next_publish(std::make_exception_ptr(broker_error("not authorized", 0x87)));
    lb.fail_next_publish(std::make_exception_ptr(storage_full("disk full")), failure_point::thrown);

    auto f = lb.publish("t", "refused");
    REQUIRE(f.wait_for(0s) == std::future_status::ready);
    try {
        f.get();
        FAIL("expected broker_error");
    } catch (const broker_error& e) {
        CHECK(e.reason_code() == 0x87);
    }
    CHECK_THROWS_AS(lb.publish("t", "not stored"), storage_full);
    // An invalid topic is reported before an injected failure is used up.
    lb.fail_next_publish(std::make_exception_ptr(storage_error("x")), failure_point::thrown);
    CHECK_THROWS_AS(lb.publish("bad/#", "x"), invalid_topic);
    CHECK_THROWS_AS(lb.publish("t", "x"), storage_error);

    lb.publish("t", "ok").get();
    settle(lb);
    CHECK(got.items() == std::vector<std::string>{"ok"});
    REQUIRE(lb.published().size() == 1);
    CHECK(lb.published()[0].payload == "ok");
}
