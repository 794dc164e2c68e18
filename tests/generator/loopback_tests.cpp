// Behaviour of the generated stubs over xymqtt::testing::loopback (no broker): events, commands,
// rejects, cancel, retries, undecodable payloads, topic tokens, both wire formats.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <xymqtt/exception.h>
#include <xymqtt/testing/loopback.h>

#include "examples/inventory.xymqtt.h"
#include "library_service.h"
#include "examples/publisher.xymqtt.h"
#include "testing/echo.xymqtt.h"
#include "testing/keywords.xymqtt.h"

using namespace xymqtt::examples;
namespace inv = xymqtt::examples::inventory;
using xymqtt::testing::loopback;
using xymqtt::wire_format;

namespace {

Tick make_tick(std::int64_t count) {
    Tick tick;
    tick.set_timestamp("2024-05-01T12:00:00.000Z");
    tick.set_count(count);
    return tick;
}

Publisher::Options with_format(wire_format format) {
    Publisher::Options options;
    options.format = format;
    return options;
}

const char* format_name(wire_format format) { return format == wire_format::json ? "json" : "binary"; }

/// A ping service whose behaviour a test can replace.
class PingService final : public Publisher::Service {
public:
    std::function<PingResult(const PingRequest&, xymqtt::call_context&)> behaviour;
    int calls = 0;

    PingResult ping(const PingRequest& request, xymqtt::call_context& context) override {
        ++calls;
        if (behaviour) return behaviour(request, context);
        PingResult result;
        result.set_pong(true);
        return result;
    }
};

class InventoryService final : public inv::Inventory::Service {
public:
    inv::Reservation reserve(const inv::ReserveRequest& request, xymqtt::call_context&) override {
        if (request.sku() != "apple") {
            inv::ReserveRejected details;
            details.set_reason(inv::ReserveRejected::UNKNOWN_SKU);
            details.mutable_available()->set_amount(0);
            throw inv::Inventory::ReserveError(404, "unknown sku " + request.sku(), details);
        }
        inv::Reservation reservation;
        reservation.set_reservation_id("r-1");
        (*reservation.mutable_by_warehouse())["north"].set_amount(request.quantity().amount());
        reservation.mutable_expires_at()->set_seconds(1700000000);
        return reservation;
    }
    inv::StockReport get_stock(const inv::GetStockRequest& request, xymqtt::call_context&) override {
        inv::StockReport report;
        for (const auto& sku : request.skus()) report.add_items()->set_sku(sku);
        report.mutable_age()->set_seconds(5);
        return report;
    }
};

}  // namespace

TEST_CASE("default tokens give xy-mqtt's topics", "[generated][topics]") {
    loopback lb;
    Publisher::Client client(lb);
    Publisher::Server server(lb);
    CHECK(client.tick_topic() == "evt/publisher/tick");
    CHECK(client.ping_topic() == "cmd/publisher/ping");
    CHECK(server.tick_topic() == "evt/publisher/tick");
    CHECK(server.ping_topic() == "cmd/publisher/ping");

    Publisher::Options options;
    options.system = "other";
    CHECK(Publisher::Client(lb, options).tick_topic() == "evt/other/tick");
    CHECK(std::string(Publisher::service_full_name) == "xymqtt.examples.Publisher");
}

TEST_CASE("invalid token values are refused at construction", "[generated][topics]") {
    loopback lb;
    for (const char* bad : {"", "a/b", "a+b", "a#"}) {
        INFO(bad);
        CHECK_THROWS_AS(inv::Inventory::Client(lb, bad), xymqtt::invalid_topic);
        CHECK_THROWS_AS(inv::Inventory::Server(lb, bad), xymqtt::invalid_topic);
        Publisher::Options options;
        options.system = bad;
        CHECK_THROWS_AS(Publisher::Client(lb, options), xymqtt::invalid_topic);
    }
    inv::Inventory::Client client(lb, "prod");
    CHECK(client.reserve_topic() == "prod/inventory/cmd/reserve");
    CHECK(client.stock_changed_topic() == "prod/inventory/evt/stock_changed/+");
}

TEST_CASE("a published tick reaches the subscriber", "[generated][events]") {
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    Publisher::Server server(lb, with_format(format));
    Publisher::Client client(lb, with_format(format));

    std::vector<Tick> received;
    std::vector<std::string> topics;
    client.subscribe_tick([&](const Tick& tick) { received.push_back(tick); });
    client.subscribe_tick([&](const Tick&, const xymqtt::message& delivery) { topics.push_back(delivery.topic); });

    server.publish_tick(make_tick(7)).get();
    server.publish_tick(make_tick(8)).get();
    lb.run_until_idle();

    REQUIRE(received.size() == 2);
    CHECK(received[0].timestamp() == "2024-05-01T12:00:00.000Z");
    CHECK(received[0].count() == 7);
    CHECK(received[1].count() == 8);
    CHECK(topics == std::vector<std::string>{"evt/publisher/tick", "evt/publisher/tick"});

    const auto published = lb.published("evt/publisher/tick");
    REQUIRE(published.size() == 2);
    if (format == wire_format::json) {
        CHECK(published[0].props.content_type == "application/json");
        // proto3 JSON: lowerCamelCase names; 64-bit integers as strings.
        CHECK(published[0].payload == R"({"timestamp":"2024-05-01T12:00:00.000Z","count":"7"})");
    } else {
        CHECK(published[0].props.content_type == "application/x-protobuf");
        CHECK(published[0].payload == make_tick(7).SerializeAsString());
    }
}

TEST_CASE("events are decoded by their content type, else by the client's format", "[generated][events]") {
    loopback lb;
    Publisher::Server json_server(lb, with_format(wire_format::json));
    Publisher::Client binary_client(lb, with_format(wire_format::binary));
    std::vector<std::int64_t> counts;
    binary_client.subscribe_tick([&](const Tick& tick) { counts.push_back(tick.count()); });
    json_server.publish_tick(make_tick(1));
    lb.run_until_idle();
    CHECK(counts == std::vector<std::int64_t>{1});

    // xy-mqtt's own JSON (no content type, numeric count, a messageId) reaches a JSON client.
    loopback lb2;
    Publisher::Client json_client(lb2, with_format(wire_format::json));
    std::vector<Tick> ticks;
    json_client.subscribe_tick([&](const Tick& tick) { ticks.push_back(tick); });
    lb2.publish("evt/publisher/tick", R"({"timestamp":"2024-05-01T12:00:00.000Z","count":3,"messageId":"m-1"})");
    lb2.run_until_idle();
    REQUIRE(ticks.size() == 1);
    CHECK(ticks[0].count() == 3);
    CHECK(lb2.dead_letters().empty());
}

TEST_CASE("an undecodable event goes to the dead letters and does not block the next", "[generated][events]") {
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    Publisher::Server server(lb, with_format(format));
    Publisher::Client client(lb, with_format(format));
    int handled = 0;
    client.subscribe_tick([&](const Tick&) { ++handled; });

    xymqtt::publish_options options;
    lb.publish("evt/publisher/tick", format == wire_format::json ? "{not json" : "\xff\xff\xff\xff", options);
    server.publish_tick(make_tick(2));
    lb.run_until_idle();

    CHECK(handled == 1);
    const auto dead = lb.dead_letters();
    REQUIRE(dead.size() == 1);
    CHECK(dead[0].undecodable);
    CHECK(dead[0].msg.topic == "evt/publisher/tick");
}

TEST_CASE("a handler that throws has its event retried", "[generated][events]") {
    loopback lb;
    Publisher::Server server(lb);
    Publisher::Client client(lb);
    std::vector<std::uint32_t> attempts;
    client.subscribe_tick([&](const Tick&, const xymqtt::message& delivery) {
        attempts.push_back(delivery.attempt);
        if (delivery.attempt < 3) throw std::runtime_error("not yet");
    });
    server.publish_tick(make_tick(1));
    lb.run_until_idle();
    CHECK(attempts == std::vector<std::uint32_t>{1, 2, 3});
    CHECK(lb.dead_letters().empty());
}

TEST_CASE("unsubscribe stops deliveries", "[generated][events]") {
    loopback lb;
    Publisher::Server server(lb);
    Publisher::Client client(lb);
    int handled = 0;
    const auto id = client.subscribe_tick([&](const Tick&) { ++handled; });
    server.publish_tick(make_tick(1));
    lb.run_until_idle();
    client.unsubscribe(id);
    server.publish_tick(make_tick(2));
    lb.run_until_idle();
    CHECK(handled == 1);
}

TEST_CASE("ping resolves through the results subscription", "[generated][commands]") {
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    PingService service;
    Publisher::Server server(lb, with_format(format));
    server.serve(service);
    Publisher::Client client(lb, with_format(format));

    std::vector<std::string> resolved;
    int rejected = 0;
    client.subscribe_ping_results(
        [&](const std::string& message_id, const PingResult& result) {
            CHECK(result.pong());
            resolved.push_back(message_id);
        },
        [&](const Publisher::PingRejection&) { ++rejected; });

    const xymqtt::call_handle handle = client.call_ping(PingRequest{});
    CHECK(handle.command() == "cmd/publisher/ping");
    lb.run_until_idle();

    CHECK(service.calls == 1);
    CHECK(rejected == 0);
    CHECK(resolved == std::vector<std::string>{handle.message_id()});
    const auto resolves = lb.published("cmd/publisher/ping/resolve");
    REQUIRE(resolves.size() == 1);
    if (format == wire_format::json) {
        CHECK_THAT(resolves[0].payload, Catch::Contains(R"("pong":true)"));
        CHECK_THAT(resolves[0].payload, Catch::Contains(handle.message_id()));
    }
}

TEST_CASE("call without a results subscription is refused", "[generated][commands]") {
    loopback lb;
    Publisher::Client client(lb);
    CHECK_THROWS_AS(client.call_ping(PingRequest{}), xymqtt::call_with_no_subscription);
}

TEST_CASE("call_async gives a typed outcome", "[generated][commands]") {
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    PingService service;
    Publisher::Server server(lb);
    server.serve(service);
    Publisher::Client client(lb, with_format(format));

    Publisher::PendingPing pending = client.call_ping_async(PingRequest{});
    // A plain future: not ready until the loopback delivers the result, then ready for wait_for too.
    CHECK(pending.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
    lb.run_until_idle();
    REQUIRE(pending.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
    const Publisher::PingOutcome outcome = pending.outcome.get();
    CHECK(outcome.ok());
    CHECK(outcome.message_id == pending.handle.message_id());
    REQUIRE(outcome.result);
    CHECK(outcome.result->pong());
    CHECK_FALSE(outcome.rejection);
}

TEST_CASE("a handler's command_error rejects with its status, other exceptions with 500", "[generated][commands]") {
    loopback lb;
    PingService service;
    Publisher::Server server(lb);
    server.serve(service);
    Publisher::Client client(lb);

    std::vector<Publisher::PingRejection> rejections;
    client.subscribe_ping_results([](const std::string&, const PingResult&) { FAIL("resolved"); },
                                  [&](const Publisher::PingRejection& r) { rejections.push_back(r); });

    service.behaviour = [](const PingRequest&, xymqtt::call_context&) -> PingResult {
        throw xymqtt::command_error(409, "busy");
    };
    const auto first = client.call_ping(PingRequest{});
    lb.run_until_idle();
    service.behaviour = [](const PingRequest&, xymqtt::call_context&) -> PingResult {
        throw std::runtime_error("random failure");
    };
    const auto second = client.call_ping(PingRequest{});
    lb.run_until_idle();

    REQUIRE(rejections.size() == 2);
    CHECK(rejections[0].message_id == first.message_id());
    CHECK(rejections[0].status == 409);
    CHECK(rejections[0].message == "busy");
    CHECK(rejections[1].message_id == second.message_id());
    CHECK(rejections[1].status == 500);
    CHECK(rejections[1].message == "random failure");

    auto pending = client.call_ping_async(PingRequest{});
    lb.run_until_idle();
    const auto outcome = pending.outcome.get();
    CHECK_FALSE(outcome.ok());
    REQUIRE(outcome.rejection);
    CHECK(outcome.rejection->status == 500);
}

TEST_CASE("typed reject details reach the caller", "[generated][commands]") {
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    InventoryService service;
    inv::Inventory::Server server(lb, "prod");
    server.serve(service);
    inv::Inventory::Options options;
    options.format = format;
    inv::Inventory::Client client(lb, "prod", options);

    inv::ReserveRequest request;
    request.set_sku("pear");
    request.set_guest_email("guest@example.com");
    auto pending = client.call_reserve_async(request);
    lb.run_until_idle();
    const auto outcome = pending.outcome.get();
    REQUIRE_FALSE(outcome.ok());
    REQUIRE(outcome.rejection);
    CHECK(outcome.rejection->status == 404);
    CHECK(outcome.rejection->message == "unknown sku pear");
    REQUIRE(outcome.rejection->details);
    CHECK(outcome.rejection->details->reason() == inv::ReserveRejected::UNKNOWN_SKU);

    request.set_sku("apple");
    request.mutable_quantity()->set_amount(2.5);
    request.mutable_hold_for()->set_seconds(60);
    auto ok = client.call_reserve_async(request);
    lb.run_until_idle();
    const auto resolved = ok.outcome.get();
    REQUIRE(resolved.ok());
    CHECK(resolved.result->reservation_id() == "r-1");
    CHECK(resolved.result->by_warehouse().at("north").amount() == 2.5);
    CHECK(resolved.result->expires_at().seconds() == 1700000000);
}

TEST_CASE("a cancelled call publishes no outcome", "[generated][commands]") {
    loopback lb;
    PingService service;
    Publisher::Server server(lb);
    server.serve(service);
    Publisher::Client client(lb);
    int outcomes = 0;
    client.subscribe_ping_results([&](const std::string&, const PingResult&) { ++outcomes; },
                                  [&](const Publisher::PingRejection&) { ++outcomes; });

    SECTION("cancelled while the handler runs") {
        xymqtt::call_handle handle;
        bool on_cancel_ran = false;
        service.behaviour = [&](const PingRequest&, xymqtt::call_context& context) {
            context.on_cancel([&] { on_cancel_ran = true; });
            handle.cancel();
            lb.run_one("cmd/publisher/ping/cancel");
            CHECK(context.cancelled());
            return PingResult{};
        };
        handle = client.call_ping(PingRequest{});
        lb.run_until_idle();
        CHECK(service.calls == 1);
        CHECK(on_cancel_ran);
    }
    SECTION("cancelled before the invoke is handled") {
        const auto handle = client.call_ping(PingRequest{});
        handle.cancel();
        lb.run_one("cmd/publisher/ping/cancel");
        lb.run_until_idle();
    }
    CHECK(outcomes == 0);
    CHECK(lb.published("cmd/publisher/ping/resolve").empty());
    CHECK(lb.published("cmd/publisher/ping/reject").empty());
}

TEST_CASE("an undecodable invoke is rejected with 400", "[generated][commands]") {
    loopback lb;
    PingService service;
    Publisher::Server server(lb);
    server.serve(service);
    Publisher::Client client(lb);
    std::vector<int> statuses;
    client.subscribe_ping_results([&](const std::string&, const PingResult&) { statuses.push_back(200); },
                                  [&](const Publisher::PingRejection& r) { statuses.push_back(r.status); });
    xymqtt::call_options options;
    options.format = wire_format::binary;
    lb.call("cmd/publisher/ping", "\xff\xff\xff\xff", options);
    lb.run_until_idle();
    CHECK(service.calls == 0);
    CHECK(statuses == std::vector<int>{400});
}

TEST_CASE("an undecodable result fails the awaited outcome with parse_error", "[generated][commands]") {
    loopback lb;
    // A server of another implementation answering garbage.
    lb.command_register("cmd/publisher/ping", [](const xymqtt::invocation&, xymqtt::call_context&) {
        return std::string("\xff\xff\xff\xff");
    });
    Publisher::Client client(lb);
    auto pending = client.call_ping_async(PingRequest{});
    lb.run_until_idle();
    CHECK_THROWS_AS(pending.outcome.get(), xymqtt::parse_error);
}

TEST_CASE("schema expiry and share group are applied", "[generated][commands]") {
    loopback lb;
    InventoryService service;
    inv::Inventory::Server server(lb, "prod");
    server.serve(service);
    const auto filters = lb.subscribed_filters();
    CHECK(std::find(filters.begin(), filters.end(), "$share/inventory/prod/inventory/cmd/reserve/invoke") != filters.end());
    CHECK(std::find(filters.begin(), filters.end(), "prod/inventory/cmd/get_stock/invoke") != filters.end());

    inv::Inventory::Client client(lb, "prod");
    inv::ReserveRequest request;
    request.set_sku("apple");
    auto pending = client.call_reserve_async(request);
    lb.advance_clock(std::chrono::seconds(61));  // the schema's expiry_seconds is 60
    lb.run_until_idle();
    CHECK(lb.stats().expired == 1);
    CHECK(lb.published("prod/inventory/cmd/reserve/resolve").empty());
}

TEST_CASE("serve is all or nothing, and stop unregisters", "[generated][commands]") {
    loopback lb;
    InventoryService service;
    inv::Inventory::Server server(lb, "prod");
    lb.command_register("prod/inventory/cmd/get_stock",
                        [](const xymqtt::invocation&, xymqtt::call_context&) { return std::string(); });
    CHECK_THROWS_AS(server.serve(service), xymqtt::command_already_registered);
    auto filters = lb.subscribed_filters();
    CHECK(std::find(filters.begin(), filters.end(), "$share/inventory/prod/inventory/cmd/reserve/invoke") == filters.end());

    lb.command_unregister("prod/inventory/cmd/get_stock");
    server.serve(service);
    server.stop();
    filters = lb.subscribed_filters();
    CHECK(std::find(filters.begin(), filters.end(), "prod/inventory/cmd/get_stock/invoke") == filters.end());
    server.serve(service);  // again, after stop
}

TEST_CASE("a field token takes its value from the event", "[generated][events][topics]") {
    loopback lb;
    inv::Inventory::Server server(lb, "prod");
    inv::Inventory::Client client(lb, "prod");
    std::vector<std::string> topics;
    client.subscribe_stock_changed([&](const inv::StockChanged& event, const xymqtt::message& delivery) {
        CHECK(event.delta() == -3);
        CHECK(event.item().tags_size() == 2);
        CHECK(event.item().location().shelf() == 4);
        topics.push_back(delivery.topic);
    });
    inv::StockChanged event;
    event.set_warehouse("north");
    event.set_delta(-3);
    event.mutable_item()->add_tags("fruit");
    event.mutable_item()->add_tags("fresh");
    event.mutable_item()->mutable_location()->set_shelf(4);
    (*event.mutable_item()->mutable_attributes())["colour"] = "red";
    server.publish_stock_changed(event);
    lb.run_until_idle();
    CHECK(topics == std::vector<std::string>{"prod/inventory/evt/stock_changed/north"});

    event.set_warehouse("");
    CHECK_THROWS_AS(server.publish_stock_changed(event), xymqtt::invalid_topic);
    event.set_warehouse("a/b");
    CHECK_THROWS_AS(server.publish_stock_changed(event), xymqtt::invalid_topic);
}

TEST_CASE("code from xymqtt_generate() at build time works too", "[generated][cmake]") {
    namespace echo = xymqtt::testing::echo;
    class EchoService final : public echo::Echo::Service {
    public:
        echo::Echoed echo(const echo::Shout& shout, xymqtt::call_context&) override {
            if (shout.text().empty()) {
                echo::EchoRefused why;
                why.set_why("nothing to echo");
                throw echo::Echo::EchoError(422, "empty", why);
            }
            echo::Echoed echoed;
            echoed.set_text(shout.text());
            echoed.set_times(static_cast<std::uint32_t>(shout.words_size()));
            return echoed;
        }
    } service;
    loopback lb;
    echo::Echo::Options options;
    options.format = wire_format::json;
    echo::Echo::Server server(lb, "room-1", options);
    server.serve(service);
    echo::Echo::Client client(lb, "room-1", options);

    echo::Shout shout;
    shout.set_text("hello");
    shout.add_words("hel");
    shout.add_words("lo");
    (*shout.mutable_counts())["l"] = 2;
    auto ok = client.call_echo_async(shout);
    auto refused = client.call_echo_async(echo::Shout{});
    lb.run_until_idle();
    const auto echoed = ok.outcome.get();
    REQUIRE(echoed.ok());
    CHECK(echoed.result->text() == "hello");
    CHECK(echoed.result->times() == 2);
    const auto rejected = refused.outcome.get();
    REQUIRE(rejected.rejection);
    CHECK(rejected.rejection->status == 422);
    REQUIRE(rejected.rejection->details);
    CHECK(rejected.rejection->details->why() == "nothing to echo");
}

TEST_CASE("names that are C++ keywords are escaped as protoc escapes fields: rpc Delete serves delete_()",
          "[generated][keywords]") {
    namespace kw = xymqtt::testing::keywords;
    class LibraryService final : public kw::Library::Service {
    public:
        std::vector<std::string> deleted;
        kw::Shelf get(const kw::GetShelfRequest& request, xymqtt::call_context&) override {
            kw::Shelf shelf;
            shelf.set_name(request.name());
            shelf.set_class_("fiction");
            return shelf;
        }
        kw::Empty delete_(const kw::DeleteShelfRequest& request, xymqtt::call_context&) override {
            deleted.push_back(request.name());
            return {};
        }
    } service;
    loopback lb;
    kw::Library::Options options;
    options.default_ = "annex";  // the token `default`
    kw::Library::Server server(lb, "ns-1", options);  // the required token `namespace`
    server.serve(service);
    kw::Library::Client client(lb, "ns-1", options);
    CHECK(client.delete_topic() == "test/ns-1/annex/cmd/delete");
    CHECK(client.deleted_topic() == "test/ns-1/annex/evt/deleted/+");

    std::vector<std::string> classes;
    client.subscribe_deleted([&](const kw::Shelf& shelf) { classes.push_back(shelf.class_()); });
    kw::GetShelfRequest get;
    get.set_name("a");
    auto got = client.call_get_async(get);
    kw::DeleteShelfRequest del;
    del.set_name("a");
    auto gone = client.call_delete_async(del);
    lb.run_until_idle();
    REQUIRE(got.outcome.get().ok());
    REQUIRE(gone.outcome.get().ok());
    CHECK(service.deleted == std::vector<std::string>{"a"});

    kw::Shelf shelf;
    shelf.set_name("a");
    shelf.set_class_("fiction");
    server.publish_deleted(shelf).get();  // the field token {class} comes from class_()
    lb.run_until_idle();
    CHECK(classes == std::vector<std::string>{"fiction"});
    REQUIRE(lb.published("test/ns-1/annex/evt/deleted/fiction").size() == 1);
}

TEST_CASE("an AIP-style contract: Get, List, Create, Update, Delete with typed rejects and a field token",
          "[generated][aip]") {
    namespace lib = xymqtt::examples::library;
    const auto format = GENERATE(wire_format::binary, wire_format::json);
    INFO(format_name(format));
    loopback lb;
    library_test::library_service service;
    lib::Books::Options options;
    options.format = format;
    lib::Books::Server server(lb, options);
    server.serve(service);
    lib::Books::Client client(lb, options);
    auto await = [&](auto pending) {
        lb.run_until_idle();
        REQUIRE(pending.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
        return pending.outcome.get();
    };

    lib::CreateBookRequest create;
    create.set_parent("shelves/s1");
    create.set_book_id("b1");
    create.mutable_book()->set_title("Dune");
    create.mutable_book()->set_author("Herbert");
    const auto created = await(client.call_create_async(create));
    REQUIRE(created.ok());
    CHECK(created.result->name() == "shelves/s1/books/b1");
    CHECK(created.result->create_time().seconds() > 0);  // a well-known type, through both wires
    const auto again = await(client.call_create_async(create));
    REQUIRE(again.rejection);
    CHECK(again.rejection->status == 409);
    REQUIRE(again.rejection->details);
    CHECK(again.rejection->details->reason() == lib::BookRefused::ALREADY_EXISTS);
    CHECK(again.rejection->details->field() == "book_id");

    create.set_book_id("b2");
    create.mutable_book()->set_title("Emma");
    REQUIRE(await(client.call_create_async(create)).ok());
    lib::ListBooksRequest list;
    list.set_parent("shelves/s1");
    list.set_page_size(1);
    const auto first = await(client.call_list_async(list));
    REQUIRE(first.ok());
    REQUIRE(first.result->books_size() == 1);
    CHECK(first.result->books(0).title() == "Dune");
    list.set_page_token(first.result->next_page_token());
    const auto second = await(client.call_list_async(list));
    REQUIRE(second.ok());
    REQUIRE(second.result->books_size() == 1);
    CHECK(second.result->books(0).title() == "Emma");

    lib::UpdateBookRequest update;
    update.mutable_book()->set_name("shelves/s1/books/b1");
    update.mutable_book()->set_title("Dune Messiah");
    update.mutable_book()->set_author("not applied: outside the mask");
    update.mutable_update_mask()->add_paths("title");
    const auto updated = await(client.call_update_async(update));
    REQUIRE(updated.ok());
    CHECK(updated.result->title() == "Dune Messiah");
    CHECK(updated.result->author() == "Herbert");

    lib::DeleteBookRequest del;
    del.set_name("shelves/s1/books/b1");
    REQUIRE(await(client.call_delete_async(del)).ok());  // rpc Delete, served by delete_()
    const auto gone = await(client.call_delete_async(del));
    REQUIRE(gone.rejection);
    CHECK(gone.rejection->status == 404);
    REQUIRE(gone.rejection->details);
    CHECK(gone.rejection->details->reason() == lib::BookRefused::NOT_FOUND);
    lib::GetBookRequest get;
    get.set_name("shelves/s1/books/b1");
    CHECK(await(client.call_get_async(get)).rejection->status == 404);

    std::vector<std::string> shelves;
    client.subscribe_changed([&](const lib::BookChanged& e) { shelves.push_back(e.shelf()); });
    lib::BookChanged changed;
    changed.set_shelf("s1");
    changed.set_deleted(true);
    server.publish_changed(changed).get();
    lb.run_until_idle();
    CHECK(shelves == std::vector<std::string>{"s1"});
    CHECK(lb.published("dev/library/evt/book_changed/s1").size() == 1);  // {shelf} from the event
}

TEST_CASE("a command's concurrency comes from the schema, and the generated Options override it",
          "[generated][concurrency]") {
    namespace kw = xymqtt::testing::keywords;
    // The loopback runs calls one at a time; what is checked here is what the stub asks of the transport.
    class recording : public loopback {
    public:
        std::map<std::string, unsigned> concurrency;
        void command_register(const std::string& command, xymqtt::command_handler handler,
                              xymqtt::command_options opts) override {
            concurrency[command] = opts.concurrency;
            loopback::command_register(command, std::move(handler), opts);
        }
    };
    class LibraryService final : public kw::Library::Service {
    public:
        kw::Shelf get(const kw::GetShelfRequest&, xymqtt::call_context&) override { return {}; }
        kw::Empty delete_(const kw::DeleteShelfRequest&, xymqtt::call_context&) override { return {}; }
    } service;

    recording schema_default;
    kw::Library::Server(schema_default, "ns").serve(service);
    CHECK(schema_default.concurrency.at("test/ns/main/cmd/get") == 3);  // `concurrency: 3` in the schema
    CHECK(schema_default.concurrency.at("test/ns/main/cmd/delete") == 1);

    recording overridden;
    kw::Library::Options options;
    options.get_concurrency = 8;
    options.delete_concurrency = 2;
    kw::Library::Server(overridden, "ns", options).serve(service);
    CHECK(overridden.concurrency.at("test/ns/main/cmd/get") == 8);
    CHECK(overridden.concurrency.at("test/ns/main/cmd/delete") == 2);

    loopback lb;
    options.get_concurrency = 0;
    kw::Library::Server refused(lb, "ns", options);
    CHECK_THROWS_AS(refused.serve(service), xymqtt::configuration_error);
}

TEST_CASE("an AsyncService answers through typed responders, later and from another thread",
          "[generated][deferred]") {
    // The handlers keep their responders; the test answers them from a thread of its own.
    class DeferredInventory final : public inv::Inventory::AsyncService {
    public:
        std::vector<std::pair<inv::ReserveRequest, inv::Inventory::ReserveResponder>> reservations;
        void reserve(const inv::ReserveRequest& request, xymqtt::call_context&,
                     inv::Inventory::ReserveResponder respond) override {
            reservations.emplace_back(request, respond);
        }
        void get_stock(const inv::GetStockRequest&, xymqtt::call_context&,
                       inv::Inventory::GetStockResponder respond) override {
            respond.reject(503, "stock unknown");  // answered at once
        }
    } service;
    loopback lb;
    inv::Inventory::Server server(lb, "prod");
    server.serve(service);
    inv::Inventory::Client client(lb, "prod");

    inv::ReserveRequest apple, pear;
    apple.set_sku("apple");
    pear.set_sku("pear");
    auto ok = client.call_reserve_async(apple);
    auto refused = client.call_reserve_async(pear);
    auto stock = client.call_get_stock_async(inv::GetStockRequest{});
    lb.run_until_idle();
    REQUIRE(service.reservations.size() == 2);
    CHECK(stock.outcome.get().rejection->status == 503);
    CHECK(ok.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);  // not answered yet

    std::thread later([&] {
        for (auto& [request, respond] : service.reservations) {
            if (request.sku() == "apple") {
                inv::Reservation reservation;
                reservation.set_reservation_id("r-1");
                respond.resolve(reservation);
            } else {
                inv::ReserveRejected details;
                details.set_reason(inv::ReserveRejected::UNKNOWN_SKU);
                respond.reject(inv::Inventory::ReserveError(404, "unknown sku", details));
            }
        }
    });
    later.join();
    lb.run_until_idle();
    const auto resolved = ok.outcome.get();
    REQUIRE(resolved.ok());
    CHECK(resolved.result->reservation_id() == "r-1");
    const auto rejected = refused.outcome.get();
    REQUIRE(rejected.rejection);
    CHECK(rejected.rejection->status == 404);
    REQUIRE(rejected.rejection->details);
    CHECK(rejected.rejection->details->reason() == inv::ReserveRejected::UNKNOWN_SKU);
}
