// loopback: commands (register, call, results, cancel, dedupe, expiry, call_async) in both wire formats.
#include <atomic>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "loopback_test_util.h"
#include "xymqtt/exception.h"

using namespace loopback_test;
using namespace xymqtt;
using namespace xymqtt::testing;
using json = nlohmann::json;

namespace {

const std::string cmd = "cmd/svc/ping";
const std::string invoke_t = cmd + "/invoke";
const std::string resolve_t = cmd + "/resolve";
const std::string reject_t = cmd + "/reject";
const std::string cancel_t = cmd + "/cancel";

const char* format_name(wire_format f) { return f == wire_format::json ? "json" : "binary"; }

/// A request body in `f`: a JSON object, or some protobuf-looking bytes.
std::string request(wire_format f, int n = 1) {
    if (f == wire_format::json) return json{{"n", n}}.dump();
    return "\x0a" + std::to_string(n);  // stands in for protobuf bytes
}
/// The handler's result in `f`.
std::string result_of(wire_format f, int n) {
    if (f == wire_format::json) return json{{"pong", n}}.dump();
    return "\x12" + std::to_string(n);
}
/// The request number of an invocation, whatever its format.
int request_number(const invocation& inv) {
    if (inv.format == wire_format::json) return json::parse(inv.body).at("n").get<int>();
    return std::stoi(inv.body.substr(1));
}

call_options fmt(wire_format f) {
    call_options o;
    o.format = f;
    return o;
}

/// A command handler that answers `{pong: n}` (or its bytes) and records the calls it ran.
struct echo_server {
    recorder<std::string> ran;  // message ids
    command_handler handler() {
        return [this](const invocation& inv, call_context&) {
            ran.add(inv.message_id);
            const int n = request_number(inv);
            if (n == 400) throw parse_error("bad request");
            if (n == 404) throw command_error(404, "no such thing",
                                              inv.format == wire_format::json ? json{{"detail", "d"}}.dump()
                                                                              : std::string("\x1a\x01z", 3));
            if (n == 500) throw std::runtime_error("boom");
            return result_of(inv.format, n);
        };
    }
};

}  // namespace

TEST_CASE("loopback command_register subscribes invoke and cancel", "[loopback][commands]") {
    loopback lb;
    lb.command_register(cmd, [](const invocation&, call_context&) { return std::string("{}"); });
    CHECK(lb.subscribed_filters() == std::vector<std::string>{invoke_t, cancel_t});
    CHECK_THROWS_AS(lb.command_register(cmd, [](const invocation&, call_context&) { return std::string(); }),
                    command_already_registered);
    CHECK_THROWS_AS(lb.command_register("cmd/+/x", [](const invocation&, call_context&) { return std::string(); }),
                    invalid_topic);
    command_options bad_group;
    bad_group.group = "a/b";
    CHECK_THROWS_AS(
        lb.command_register("cmd/other", [](const invocation&, call_context&) { return std::string(); }, bad_group),
        invalid_topic);

    lb.command_unregister(cmd);
    CHECK(lb.subscribed_filters().empty());
    lb.command_unregister(cmd);            // harmless
    lb.command_unregister("cmd/unknown");  // harmless

    command_options group;
    group.group = "workers";
    lb.command_register(cmd, [](const invocation&, call_context&) { return std::string("{}"); }, group);
    CHECK(lb.subscribed_filters() == std::vector<std::string>{"$share/workers/" + invoke_t, cancel_t});
}

TEST_CASE("loopback call needs results subscribed", "[loopback][commands]") {
    loopback lb;
    CHECK_THROWS_AS(lb.call(cmd, "{}"), call_with_no_subscription);
    CHECK_THROWS_AS(lb.call("cmd/#", "{}"), invalid_topic);

    SECTION("subscribe_results") {
        const auto id = lb.subscribe_results(cmd, [](const command_result&) {});
        CHECK(lb.subscribed_filters() == std::vector<std::string>{resolve_t, reject_t});
        CHECK_NOTHROW(lb.call(cmd, "{}"));
        lb.unsubscribe(id);
        CHECK(lb.subscribed_filters() == std::vector<std::string>{resolve_t, reject_t});  // lanes stay
        CHECK_THROWS_AS(lb.call(cmd, "{}"), call_with_no_subscription);
    }
    SECTION("plain subscriptions matching both topics") {
        const auto r = lb.subscribe(resolve_t, [](const message&) {});
        CHECK_THROWS_AS(lb.call(cmd, "{}"), call_with_no_subscription);
        lb.subscribe("cmd/svc/+/reject", [](const message&) {});
        CHECK_NOTHROW(lb.call(cmd, "{}"));
        lb.unsubscribe(r);
        lb.subscribe("cmd/svc/ping/#", [](const message&) {});
        CHECK_NOTHROW(lb.call(cmd, "{}"));
    }
    SECTION("call_async does not count") {
        auto pc = lb.call_async(cmd, "{}");
        CHECK_THROWS_AS(lb.call(cmd, "{}"), call_with_no_subscription);
    }
    SECTION("a JSON call's body must be a JSON object") {
        lb.subscribe_results(cmd, [](const command_result&) {});
        CHECK_THROWS_AS(lb.call(cmd, "[1,2]", fmt(wire_format::json)), parse_error);
        CHECK_THROWS_AS(lb.call(cmd, "not json", fmt(wire_format::json)), parse_error);
        CHECK_NOTHROW(lb.call(cmd, "", fmt(wire_format::json)));
        CHECK(lb.published().size() == 1);
    }
}

TEST_CASE("loopback call resolves through the wire protocol", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    recorder<invocation> invocations;
    std::atomic<bool> saw_cancelled{false};
    lb.command_register(cmd, [&](const invocation& inv, call_context& ctx) {
        if (ctx.cancelled()) saw_cancelled = true;
        invocations.add(inv);
        return result_of(inv.format, request_number(inv) + 1);
    });
    recorder<command_result> results;
    lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r); });

    const call_handle h = lb.call(cmd, request(f, 41), fmt(f));
    CHECK(h.command() == cmd);
    CHECK(h.message_id().size() == 32);
    settle(lb);

    REQUIRE(invocations.size() == 1);
    CHECK_FALSE(saw_cancelled);
    const invocation inv = invocations.items()[0];
    CHECK(inv.command == cmd);
    CHECK(inv.message_id == h.message_id());
    CHECK(inv.format == f);
    CHECK(inv.attempt == 1);
    CHECK(request_number(inv) == 41);

    REQUIRE(results.size() == 1);
    const command_result r = results.items()[0];
    CHECK(r.ok);
    CHECK(r.status == 200);
    CHECK(r.command == cmd);
    CHECK(r.message_id == h.message_id());
    CHECK(r.format == f);

    const auto pub = lb.published();
    REQUIRE(pub.size() == 2);
    CHECK(pub[0].topic == invoke_t);
    CHECK(pub[1].topic == resolve_t);
    if (f == wire_format::json) {
        CHECK(inv.body == pub[0].payload);  // the whole invoke object
        const auto in = json::parse(pub[0].payload);
        CHECK(in.at("messageId") == h.message_id());
        CHECK(in.at("n") == 41);
        CHECK(pub[0].props.content_type == "application/json");
        const auto out = json::parse(pub[1].payload);
        CHECK(out == json{{"messageId", h.message_id()}, {"pong", 42}});
        CHECK(json::parse(r.body) == out);
        CHECK(pub[1].props.content_type == "application/json");
    } else {
        CHECK(inv.body == request(f, 41));
        CHECK(pub[0].payload == request(f, 41));
        CHECK(pub[0].props.content_type == "application/x-protobuf");
        CHECK(pub[0].props.correlation_data == h.message_id());
        CHECK(pub[1].payload == result_of(f, 42));
        CHECK(pub[1].props.content_type == "application/x-protobuf");
        CHECK(pub[1].props.correlation_data == h.message_id());
        CHECK(r.body == result_of(f, 42));
    }
}

TEST_CASE("loopback command errors reject", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    echo_server server;
    lb.command_register(cmd, server.handler());
    recorder<command_result> results;
    lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r); });

    const auto h404 = lb.call(cmd, request(f, 404), fmt(f));
    const auto h400 = lb.call(cmd, request(f, 400), fmt(f));
    const auto h500 = lb.call(cmd, request(f, 500), fmt(f));
    settle(lb);

    const auto rejects = lb.published(reject_t);
    REQUIRE(rejects.size() == 3);
    REQUIRE(results.size() == 3);
    const auto rs = results.items();
    auto result_for = [&](const std::string& id) {
        for (const auto& r : rs)
            if (r.message_id == id) return r;
        FAIL("no result for " << id);
        return command_result{};
    };
    const auto r404 = result_for(h404.message_id());
    const auto r400 = result_for(h400.message_id());
    const auto r500 = result_for(h500.message_id());
    for (const auto& r : rs) CHECK_FALSE(r.ok);
    CHECK(r404.status == 404);
    CHECK(r404.message == "no such thing");
    CHECK(r400.status == 400);
    CHECK(r400.message == "bad request");
    CHECK(r500.status == 500);
    CHECK(r500.message == "boom");

    if (f == wire_format::json) {
        const auto j = json::parse(r404.body);
        CHECK(j == json{{"messageId", h404.message_id()},
                        {"ok", false},
                        {"status", 404},
                        {"message", "no such thing"},
                        {"detail", "d"}});
        CHECK(json::parse(r500.body) ==
              json{{"messageId", h500.message_id()}, {"ok", false}, {"status", 500}, {"message", "boom"}});
    } else {
        CHECK(r404.body == std::string("\x1a\x01z", 3));
        for (const auto& p : rejects) {
            CHECK(p.props.content_type == "application/x-protobuf");
            CHECK(p.props.user_property("ok") == std::optional<std::string>("false"));
            CHECK(p.props.user_property("status").has_value());
            CHECK(p.props.user_property("message").has_value());
        }
        for (const auto& p : rejects)
            if (p.props.correlation_data == h404.message_id()) {
                CHECK(p.props.user_property("status") == std::optional<std::string>("404"));
                CHECK(p.props.user_property("message") == std::optional<std::string>("no such thing"));
            }
    }
    CHECK(lb.published(resolve_t).empty());
}

TEST_CASE("loopback JSON handler returning something that is not a JSON object rejects with 500",
          "[loopback][commands]") {
    loopback lb;
    lb.command_register(cmd, [](const invocation&, call_context&) { return std::string("[1]"); });
    lb.subscribe_results(cmd, [](const command_result&) {});
    lb.call(cmd, "{}", fmt(wire_format::json));
    lb.run_until_idle();
    const auto rejects = lb.published(reject_t);
    REQUIRE(rejects.size() == 1);
    CHECK(json::parse(rejects[0].payload).at("status") == 500);
}

TEST_CASE("loopback results: unknown ids ignored, each result handed over once", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    echo_server server;
    lb.command_register(cmd, server.handler());
    recorder<std::string> results;
    std::atomic<int> result_attempts{0};
    lb.subscribe_results(cmd, [&](const command_result& r) {
        if (++result_attempts == 1) throw std::runtime_error("result handler fails once");
        results.add(r.message_id);
    });

    const auto h = lb.call(cmd, request(f, 1), fmt(f));
    settle(lb);
    CHECK(results.items() == std::vector<std::string>{h.message_id()});
    CHECK(result_attempts == 2);  // retried like any handler

    // The same resolve again (a redelivery): not handed over again.
    const auto resolve = lb.published(resolve_t).at(0);
    publish_options po;
    po.props = resolve.props;
    lb.publish(resolve_t, resolve.payload, po);
    // A result for a call this loopback never made: ignored.
    publish_options foreign;
    std::string foreign_payload;
    if (f == wire_format::json) {
        foreign_payload = json{{"messageId", "not-ours"}, {"pong", 1}}.dump();
        foreign.props.content_type = "application/json";
    } else {
        foreign_payload = result_of(f, 1);
        foreign.props.content_type = "application/x-protobuf";
        foreign.props.correlation_data = "not-ours";
    }
    lb.publish(resolve_t, foreign_payload, foreign);
    lb.publish(reject_t, foreign_payload, foreign);
    settle(lb);
    CHECK(results.size() == 1);
    CHECK(lb.dead_letters().empty());

    // A result that cannot be decoded goes to the dead letters.
    publish_options undecodable;
    undecodable.props.content_type = f == wire_format::json ? "application/json" : "application/x-protobuf";
    lb.publish(resolve_t, "{not json", undecodable);
    settle(lb);
    REQUIRE(lb.dead_letters().size() == 1);
    CHECK(lb.dead_letters()[0].undecodable);
    CHECK(lb.dead_letters()[0].filter == resolve_t);
}

TEST_CASE("loopback durable dedupe: a repeated invoke is answered from the stored outcome",
          "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    echo_server server;
    lb.command_register(cmd, server.handler());
    lb.subscribe_results(cmd, [](const command_result&) {});

    const auto h_ok = lb.call(cmd, request(f, 7), fmt(f));
    const auto h_err = lb.call(cmd, request(f, 404), fmt(f));
    settle(lb);
    CHECK(server.ran.size() == 2);
    const auto invokes = lb.published(invoke_t);
    const auto first_resolve = lb.published(resolve_t).at(0);
    const auto first_reject = lb.published(reject_t).at(0);
    REQUIRE(invokes.size() == 2);

    for (const auto& inv : invokes) {  // the broker redelivers both invokes
        publish_options po;
        po.props = inv.props;
        lb.publish(invoke_t, inv.payload, po);
    }
    settle(lb);
    CHECK(server.ran.size() == 2);  // not run again
    const auto resolves = lb.published(resolve_t);
    const auto rejects = lb.published(reject_t);
    REQUIRE(resolves.size() == 2);
    REQUIRE(rejects.size() == 2);
    CHECK(resolves[1].payload == first_resolve.payload);
    CHECK(resolves[1].props == first_resolve.props);
    CHECK(rejects[1].payload == first_reject.payload);
    CHECK(rejects[1].props == first_reject.props);
    (void)h_ok;
    (void)h_err;
}

TEST_CASE("loopback undecodable invoke goes to the dead letters", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    auto opts = options_for(mode);
    recorder<std::string> parse_hook;
    opts.hooks.on_parse_error = [&](const message& m, const std::string&) { parse_hook.add(m.topic); };
    loopback lb(opts);
    echo_server server;
    lb.command_register(cmd, server.handler());
    publish_options po;
    if (f == wire_format::json) {
        lb.publish(invoke_t, R"({"n":1})", po);  // no messageId
    } else {
        po.props.content_type = "application/x-protobuf";  // no correlation data
        lb.publish(invoke_t, request(f, 1), po);
    }
    settle(lb);
    CHECK(server.ran.size() == 0);
    REQUIRE(lb.dead_letters().size() == 1);
    CHECK(lb.dead_letters()[0].filter == invoke_t);
    CHECK(parse_hook.items() == std::vector<std::string>{invoke_t});
    CHECK(lb.published().size() == 1);  // nothing answered
}

TEST_CASE("loopback cancel while the handler runs", "[loopback][commands]") {
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(format_name(f));
    recorder<std::string> results;

    SECTION("manual") {
        loopback lb;
        call_handle h;
        std::atomic<bool> callback_ran{false};
        lb.command_register(cmd, [&](const invocation&, call_context& ctx) {
            ctx.on_cancel([&] { callback_ran = true; });
            h.cancel();                       // the caller cancels meanwhile ...
            CHECK(lb.run_one(cancel_t));      // ... and the cancel lane runs beside this one
            CHECK(callback_ran);
            CHECK(ctx.cancelled());
            bool late = false;
            ctx.on_cancel([&] { late = true; });  // registered after the cancel: runs at once
            CHECK(late);
            return result_of(wire_format::json, 1);
        });
        lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r.message_id); });
        h = lb.call(cmd, request(f), fmt(f));
        CHECK(lb.run_until_idle() == 1);  // the invoke (the cancel ran inside it)
        CHECK(callback_ran);
        CHECK(lb.published(cancel_t).size() == 1);
        CHECK(lb.published(resolve_t).empty());
        CHECK(lb.published(reject_t).empty());
        CHECK(results.size() == 0);
    }
    SECTION("threaded") {
        loopback lb(options_for(delivery_mode::threaded));
        latch started, cancelled;
        std::atomic<bool> ctx_cancelled{false};
        lb.command_register(cmd, [&](const invocation&, call_context& ctx) -> std::string {
            // (no Catch assertions on handler threads: Catch2 v2 is not thread-safe)
            ctx.on_cancel([&] { cancelled.open(); });
            started.open();
            cancelled.wait();
            ctx_cancelled = ctx.cancelled();
            throw std::runtime_error("a reject nobody will see");
        });
        lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r.message_id); });
        const auto h = lb.call(cmd, request(f), fmt(f));
        REQUIRE(started.wait());
        h.cancel();
        REQUIRE(cancelled.wait());
        settle(lb);
        CHECK(ctx_cancelled);
        CHECK(lb.published(resolve_t).empty());
        CHECK(lb.published(reject_t).empty());
        CHECK(results.size() == 0);
    }
}

TEST_CASE("loopback cancel before execution prevents it", "[loopback][commands]") {
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(format_name(f));
    echo_server server;

    SECTION("manual") {
        loopback lb;
        lb.command_register(cmd, server.handler());
        lb.subscribe_results(cmd, [](const command_result&) {});
        const auto h = lb.call(cmd, request(f), fmt(f));
        h.cancel();
        CHECK(lb.run_one(cancel_t));  // the cancel overtakes the invoke
        CHECK(lb.run_until_idle() == 1);
        CHECK(server.ran.size() == 0);
        CHECK(lb.published().size() == 2);  // invoke and cancel only

        // A redelivery of the cancelled invoke is not run and not answered either.
        const auto inv = lb.published(invoke_t).at(0);
        publish_options po;
        po.props = inv.props;
        lb.publish(invoke_t, inv.payload, po);
        lb.run_until_idle();
        CHECK(server.ran.size() == 0);
        CHECK(lb.published().size() == 3);
    }
    SECTION("threaded") {
        loopback lb(options_for(delivery_mode::threaded));
        latch first_started, gate;
        recorder<std::string> ran;
        lb.command_register(cmd, [&](const invocation& inv, call_context&) {
            ran.add(inv.message_id);
            if (ran.size() == 1) {  // the first call holds the invoke lane
                first_started.open();
                gate.wait();
            }
            return result_of(inv.format, 1);
        });
        lb.subscribe_results(cmd, [](const command_result&) {});
        latch cancel_seen;
        lb.subscribe(cancel_t, [&](const message&) { cancel_seen.open(); });  // after the server's own
        const auto first = lb.call(cmd, request(f), fmt(f));
        REQUIRE(first_started.wait());
        const auto second = lb.call(cmd, request(f), fmt(f));
        second.cancel();
        REQUIRE(cancel_seen.wait());
        gate.open();
        settle(lb);
        CHECK(ran.items() == std::vector<std::string>{first.message_id()});
        REQUIRE(lb.published(resolve_t).size() == 1);
        CHECK(lb.published(reject_t).empty());
    }
}

TEST_CASE("loopback cancel after the call finished is harmless, a second cancel too",
          "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    echo_server server;
    lb.command_register(cmd, server.handler());
    recorder<std::string> results;
    lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r.message_id); });
    const auto h = lb.call(cmd, request(f), fmt(f));
    settle(lb);
    h.cancel();
    h.cancel();
    settle(lb);
    CHECK(results.items() == std::vector<std::string>{h.message_id()});
    const auto cancels = lb.published(cancel_t);
    REQUIRE(cancels.size() == 2);  // each cancel() publishes; the server ignores them
    CHECK(cancels[1].payload == cancels[0].payload);
    if (f == wire_format::json) {
        CHECK(json::parse(cancels[0].payload) == json{{"messageId", h.message_id()}});
    } else {
        CHECK(cancels[0].props.correlation_data == h.message_id());
        CHECK(cancels[0].props.content_type == "application/x-protobuf");
    }
    CHECK(lb.published().size() == 4);  // invoke, resolve, cancel, cancel
    CHECK(lb.published(resolve_t).size() == 1);
    CHECK(lb.published(reject_t).empty());
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback call_async", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(mode_name(mode) << " " << format_name(f));
    loopback lb(options_for(mode));
    echo_server server;
    lb.command_register(cmd, server.handler());

    auto ok = lb.call_async(cmd, request(f, 5), fmt(f));
    auto err = lb.call_async(cmd, request(f, 404), fmt(f));
    if (mode == delivery_mode::manual) {
        CHECK(ok.result.wait_for(0s) == std::future_status::timeout);  // nothing runs until pumped
        lb.run_until_idle();
    }
    REQUIRE(ok.result.wait_for(10s) == std::future_status::ready);
    REQUIRE(err.result.wait_for(10s) == std::future_status::ready);
    const auto r = ok.result.get();
    CHECK(r.ok);
    CHECK(r.message_id == ok.handle.message_id());
    CHECK(r.format == f);
    if (f == wire_format::json)
        CHECK(json::parse(r.body).at("pong") == 5);
    else
        CHECK(r.body == result_of(f, 5));
    const auto e = err.result.get();
    CHECK_FALSE(e.ok);
    CHECK(e.status == 404);
    CHECK(e.message == "no such thing");
    settle(lb);
}

TEST_CASE("loopback call_async results go to the future only", "[loopback][commands]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    recorder<std::string> results;
    lb.subscribe_results(cmd, [&](const command_result& r) { results.add(r.message_id); });
    auto pc = lb.call_async(cmd, request(wire_format::binary, 1));
    const auto h = lb.call(cmd, request(wire_format::binary, 2));
    lb.run_until_idle();
    CHECK(pc.result.get().ok);
    CHECK(results.items() == std::vector<std::string>{h.message_id()});
}

TEST_CASE("loopback call_async with a completion: called once with the result, or with the error",
          "[loopback][commands]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    std::vector<std::pair<bool, command_result>> outcomes;  // (error, result)
    auto record = [&](std::exception_ptr e, command_result r) { outcomes.emplace_back(e != nullptr, std::move(r)); };
    const auto h = lb.call_async(cmd, request(wire_format::binary, 3), {}, std::nullopt, record);
    const auto late = lb.call_async("cmd/nobody/home", request(wire_format::binary, 1), {},
                                    std::chrono::milliseconds(10), record);
    CHECK(outcomes.empty());  // nothing runs until pumped
    lb.run_until_idle();
    REQUIRE(outcomes.size() == 1);
    CHECK_FALSE(outcomes[0].first);
    CHECK(outcomes[0].second.message_id == h.message_id());
    CHECK(outcomes[0].second.ok);
    lb.advance_clock(std::chrono::milliseconds(10));
    lb.run_until_idle();
    REQUIRE(outcomes.size() == 2);
    CHECK(outcomes[1].first);  // timeout_error
    lb.run_until_idle();
    CHECK(outcomes.size() == 2);  // once each
    CHECK_THROWS_AS(lb.call_async(cmd, request(wire_format::binary, 1), {}, std::nullopt, nullptr),
                    xymqtt::configuration_error);
    (void)late;
}

TEST_CASE("loopback results go to every result handler, with none they wait for one",
          "[loopback][commands][manual]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    recorder<std::string> first, second;
    const auto s1 = lb.subscribe_results(cmd, [&](const command_result& r) { first.add(r.message_id); });
    lb.subscribe_results(cmd, [&](const command_result& r) { second.add(r.message_id); });
    const auto h1 = lb.call(cmd, request(wire_format::json, 1), fmt(wire_format::json));
    lb.run_until_idle();
    CHECK(first.items() == std::vector<std::string>{h1.message_id()});
    CHECK(second.items() == std::vector<std::string>{h1.message_id()});

    lb.unsubscribe(s1);
    const auto h2 = lb.call(cmd, request(wire_format::json, 2), fmt(wire_format::json));
    lb.run_until_idle();
    CHECK(second.items() == std::vector<std::string>{h1.message_id(), h2.message_id()});
    CHECK(first.size() == 1);
}

TEST_CASE("loopback results of calls wait (retried) while no result handler is subscribed",
          "[loopback][commands][manual]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    const auto s = lb.subscribe_results(cmd, [](const command_result&) {});
    const auto h = lb.call(cmd, request(wire_format::json, 1), fmt(wire_format::json));
    lb.unsubscribe(s);
    CHECK(lb.run_until_idle(20) == 20);  // invoke, then the resolve retried: it has nowhere to go
    CHECK(lb.stats().pending == 1);
    recorder<std::string> late;
    lb.subscribe_results(cmd, [&](const command_result& r) { late.add(r.message_id); });
    lb.run_until_idle();
    CHECK(late.items() == std::vector<std::string>{h.message_id()});
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("loopback call_async timeout fails the future and cancels the call", "[loopback][commands]") {
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(format_name(f));

    SECTION("manual: on the loopback's clock") {
        loopback lb;  // no server: nobody answers
        auto pc = lb.call_async(cmd, request(f), fmt(f), std::chrono::milliseconds(1000));
        lb.run_until_idle();
        CHECK(pc.result.wait_for(0s) == std::future_status::timeout);
        lb.advance_clock(std::chrono::milliseconds(999));
        lb.run_until_idle();
        CHECK(pc.result.wait_for(0s) == std::future_status::timeout);
        lb.advance_clock(std::chrono::milliseconds(1));
        lb.run_until_idle();
        REQUIRE(pc.result.wait_for(0s) == std::future_status::ready);
        CHECK_THROWS_AS(pc.result.get(), timeout_error);
        const auto cancels = lb.published(cancel_t);
        REQUIRE(cancels.size() == 1);
        if (f == wire_format::json)
            CHECK(json::parse(cancels[0].payload).at("messageId") == pc.handle.message_id());
        else
            CHECK(cancels[0].props.correlation_data == pc.handle.message_id());
    }
    SECTION("threaded: a server that answers too late") {
        loopback lb(options_for(delivery_mode::threaded));
        latch gate, cancelled;
        lb.command_register(cmd, [&](const invocation& inv, call_context& ctx) {
            ctx.on_cancel([&] { cancelled.open(); });
            gate.wait();
            return result_of(inv.format, 1);
        });
        auto pc = lb.call_async(cmd, request(f), fmt(f), std::chrono::milliseconds(20));
        REQUIRE(pc.result.wait_for(10s) == std::future_status::ready);
        CHECK_THROWS_AS(pc.result.get(), timeout_error);
        REQUIRE(cancelled.wait());  // the timeout's cancel reached the running handler
        gate.open();
        settle(lb);
        CHECK(lb.published(cancel_t).size() == 1);
        CHECK(lb.published(resolve_t).empty());
    }
}

TEST_CASE("loopback invoke expiry: an expired invoke is not executed but rejected with 408",
          "[loopback][commands]") {
    const auto f = GENERATE(wire_format::json, wire_format::binary);
    INFO(format_name(f));
    call_options o = fmt(f);
    o.expiry = std::chrono::seconds(1);

    SECTION("manual") {
        loopback lb;
        echo_server server;
        lb.command_register(cmd, server.handler());
        lb.subscribe_results(cmd, [](const command_result&) {});
        const auto in_time = lb.call(cmd, request(f), o);
        CHECK(lb.published(invoke_t).at(0).props.expiry_seconds == std::optional<std::uint32_t>(1));
        const auto late = lb.call(cmd, request(f), o);
        CHECK(lb.run_one(invoke_t));  // runs in time
        lb.advance_clock(std::chrono::milliseconds(1001));
        lb.run_until_idle();
        CHECK(server.ran.items() == std::vector<std::string>{in_time.message_id()});
        CHECK(lb.stats().expired == 1);
        CHECK(lb.published(resolve_t).size() == 1);
        const auto rejects = lb.published(reject_t);
        REQUIRE(rejects.size() == 1);
        if (f == wire_format::json) {
            const auto j = json::parse(rejects[0].payload);
            CHECK(j.at("messageId") == late.message_id());
            CHECK(j.at("status") == 408);
        } else {
            CHECK(rejects[0].props.correlation_data == late.message_id());
            CHECK(rejects[0].props.user_property("status") == std::optional<std::string>("408"));
        }
    }
    SECTION("threaded") {
        loopback lb(options_for(delivery_mode::threaded));
        latch first_started, gate;
        recorder<std::string> ran;
        lb.command_register(cmd, [&](const invocation& inv, call_context&) {
            ran.add(inv.message_id);
            if (ran.size() == 1) {
                first_started.open();
                gate.wait();
            }
            return result_of(inv.format, 1);
        });
        lb.subscribe_results(cmd, [](const command_result&) {});
        const auto first = lb.call(cmd, request(f), fmt(f));
        REQUIRE(first_started.wait());
        lb.call(cmd, request(f), o);  // waits behind the first ...
        lb.advance_clock(std::chrono::seconds(2));  // ... until it has expired
        gate.open();
        settle(lb);
        CHECK(ran.items() == std::vector<std::string>{first.message_id()});
        CHECK(lb.stats().expired == 1);
        CHECK(lb.published(reject_t).size() == 1);
    }
}

TEST_CASE("loopback shared command group", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    loopback lb(options_for(mode));
    echo_server server;
    command_options o;
    o.group = "g";
    lb.command_register(cmd, server.handler(), o);
    auto pc = lb.call_async(cmd, request(wire_format::json, 3), fmt(wire_format::json));
    settle(lb);
    REQUIRE(pc.result.wait_for(10s) == std::future_status::ready);
    CHECK(pc.result.get().ok);
    CHECK(server.ran.size() == 1);
}

TEST_CASE("loopback fail_next_publish on calls", "[loopback][commands]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    lb.subscribe_results(cmd, [](const command_result&) {});

    lb.fail_next_publish(std::make_exception_ptr(storage_error("disk")), failure_point::future);
    CHECK_THROWS_AS(lb.call(cmd, request(wire_format::binary)), storage_error);  // call() always throws
    lb.fail_next_publish(std::make_exception_ptr(storage_error("disk")), failure_point::thrown);
    CHECK_THROWS_AS(lb.call_async(cmd, request(wire_format::binary)), storage_error);
    lb.fail_next_publish(std::make_exception_ptr(broker_error("refused", 0x97)));
    auto pc = lb.call_async(cmd, request(wire_format::binary));
    REQUIRE(pc.result.wait_for(0s) == std::future_status::ready);
    CHECK_THROWS_AS(pc.result.get(), broker_error);
    CHECK(lb.published().empty());
    lb.run_until_idle();
    CHECK(server.ran.size() == 0);
}

TEST_CASE("loopback destruction fails pending call_async futures, handles outlive it", "[loopback][commands]") {
    const auto mode = GENERATE(delivery_mode::manual, delivery_mode::threaded);
    INFO(mode_name(mode));
    pending_call pc;
    {
        loopback lb(options_for(mode));
        pc = lb.call_async(cmd, "{}", fmt(wire_format::json));  // no server
        settle(lb);
    }
    REQUIRE(pc.result.wait_for(0s) == std::future_status::ready);
    CHECK_THROWS_AS(pc.result.get(), client_closed);
    CHECK_THROWS_AS(pc.handle.cancel(), client_closed);
}

TEST_CASE("loopback unregister stops serving, its queued invokes wait for the next register",
          "[loopback][commands][manual]") {
    loopback lb;
    echo_server server;
    lb.command_register(cmd, server.handler());
    lb.subscribe_results(cmd, [](const command_result&) {});
    const auto first = lb.call(cmd, "{}", fmt(wire_format::json));
    lb.command_unregister(cmd);  // before the invoke ran: it is parked with the subscription
    lb.run_until_idle();
    CHECK(server.ran.size() == 0);
    const auto second = lb.call(cmd, "{}", fmt(wire_format::json));  // nobody subscribed: not delivered
    lb.command_register(cmd, server.handler());
    const auto third = lb.call(cmd, "{}", fmt(wire_format::json));
    lb.run_until_idle();
    CHECK(server.ran.items() == std::vector<std::string>{first.message_id(), third.message_id()});
    (void)second;
}

TEST_CASE("loopback runs the client's command protocol: an invoke naming a Response Topic is answered there, "
          "with its correlation data",
          "[loopback][commands]") {
    // The loopback hosts the client's own command server (commands/), so what a server does for an MQTT 5
    // request/response peer (a Response Topic, Correlation Data) holds in unit tests too.
    loopback lb;
    lb.subscribe_results(cmd, [](const command_result&) {});
    lb.call(cmd, request(wire_format::json, 7), fmt(wire_format::json));  // nobody serves yet: not delivered
    const auto invokes = lb.published(invoke_t);
    REQUIRE(invokes.size() == 1);

    echo_server server;
    lb.command_register(cmd, server.handler());
    publish_options o;
    o.props = invokes.front().props;
    o.props.response_topic = "app/replies/42";
    o.props.correlation_data = "corr-1";
    lb.publish(invoke_t, invokes.front().payload, o).get();
    lb.run_until_idle();

    REQUIRE(server.ran.size() == 1);
    const auto answers = lb.published("app/replies/42/resolve");
    REQUIRE(answers.size() == 1);
    CHECK(answers.front().props.correlation_data == "corr-1");
    CHECK(json::parse(answers.front().payload).dump().find("pong") != std::string::npos);
    CHECK(lb.published(resolve_t).empty());
}
