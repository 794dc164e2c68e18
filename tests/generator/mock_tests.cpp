// The generated trompeloeil mocks: code written against the interfaces is tested without a transport,
// and a mocked Service is served by the real generated Server over the loopback.
#include <catch2/catch.hpp>
#include <catch2/trompeloeil.hpp>

#include <future>
#include <string>

#include "examples/inventory.xymqtt_mock.h"
#include "examples/library.xymqtt_mock.h"
#include "examples/publisher.xymqtt_mock.h"

using namespace xymqtt::examples;
namespace inv = xymqtt::examples::inventory;
using trompeloeil::_;

namespace {

// Application code under test: written against the interfaces only.
class Heartbeat {
public:
    explicit Heartbeat(Publisher::ServerInterface& events) : events_(events) {}
    void beat() {
        Tick tick;
        tick.set_timestamp("t0");
        tick.set_count(++count_);
        events_.publish_tick(tick).get();
    }

private:
    Publisher::ServerInterface& events_;
    std::int64_t count_ = 0;
};

bool is_alive(Publisher::ClientInterface& publisher) {
    auto pending = publisher.call_ping_async(PingRequest{}, std::chrono::milliseconds(500));
    const auto outcome = pending.outcome.get();
    return outcome.ok() && outcome.result->pong();
}

std::future<void> ready() {
    std::promise<void> done;
    done.set_value();
    return done.get_future();
}

}  // namespace

TEST_CASE("a mocked server interface records published events", "[generated][mocks]") {
    MockPublisherServer events;
    trompeloeil::sequence seq;
    REQUIRE_CALL(events, publish_tick(_)).WITH(_1.count() == 1).IN_SEQUENCE(seq).RETURN(ready());
    REQUIRE_CALL(events, publish_tick(_)).WITH(_1.count() == 2).IN_SEQUENCE(seq).RETURN(ready());
    Heartbeat heartbeat(events);
    heartbeat.beat();
    heartbeat.beat();
}

TEST_CASE("a mocked client interface answers calls", "[generated][mocks]") {
    MockPublisherClient publisher;
    REQUIRE_CALL(publisher, call_ping_async(_, _))
        .WITH(_2 == std::optional<std::chrono::milliseconds>(500))
        .RETURN([] {
            std::promise<Publisher::PingOutcome> promise;
            Publisher::PingOutcome outcome;
            outcome.message_id = "m-1";
            outcome.result.emplace().set_pong(true);
            promise.set_value(outcome);
            return Publisher::PendingPing{xymqtt::call_handle("cmd/publisher/ping", "m-1", nullptr),
                                          promise.get_future()};
        }());
    CHECK(is_alive(publisher));
}

TEST_CASE("a mocked client interface captures subscriptions", "[generated][mocks]") {
    MockPublisherClient publisher;
    Publisher::TickHandler captured;
    REQUIRE_CALL(publisher, subscribe_tick(_)).LR_SIDE_EFFECT(captured = _1).RETURN(42u);
    std::int64_t seen = 0;
    // The convenience overload (event only), called through the interface, lands in the mocked virtual.
    Publisher::ClientInterface& client = publisher;
    CHECK(client.subscribe_tick([&](const Tick& tick) { seen = tick.count(); }) == 42u);
    Tick tick;
    tick.set_count(5);
    captured(tick, xymqtt::message{});
    CHECK(seen == 5);
}

TEST_CASE("a mocked service is served by the real server over the loopback", "[generated][mocks]") {
    xymqtt::testing::loopback lb;
    inv::MockInventoryService service;
    inv::Inventory::Server server(lb, "test");
    server.serve(service);
    inv::Inventory::Client client(lb, "test");

    inv::Reservation reservation;
    reservation.set_reservation_id("r-9");
    REQUIRE_CALL(service, reserve(_, _)).WITH(_1.sku() == "apple" && _1.account_id() == "acc-1").RETURN(reservation);
    FORBID_CALL(service, get_stock(_, _));

    inv::ReserveRequest request;
    request.set_sku("apple");
    request.set_account_id("acc-1");
    auto pending = client.call_reserve_async(request);
    lb.run_until_idle();
    const auto outcome = pending.outcome.get();
    REQUIRE(outcome.ok());
    CHECK(outcome.result->reservation_id() == "r-9");
}

TEST_CASE("a mocked handler can reject with typed details", "[generated][mocks]") {
    xymqtt::testing::loopback lb;
    inv::MockInventoryService service;
    inv::Inventory::Server server(lb, "test");
    server.serve(service);
    inv::Inventory::Client client(lb, "test");

    inv::ReserveRejected details;
    details.set_reason(inv::ReserveRejected::OUT_OF_STOCK);
    details.mutable_available()->set_amount(1);
    REQUIRE_CALL(service, reserve(_, _)).THROW(inv::Inventory::ReserveError(409, "out of stock", details));

    std::vector<inv::Inventory::ReserveRejection> rejections;
    client.subscribe_reserve_results([](const std::string&, const inv::Reservation&) { FAIL("resolved"); },
                                     [&](const inv::Inventory::ReserveRejection& r) { rejections.push_back(r); });
    client.call_reserve(inv::ReserveRequest{});
    lb.run_until_idle();
    REQUIRE(rejections.size() == 1);
    CHECK(rejections[0].status == 409);
    REQUIRE(rejections[0].details);
    CHECK(rejections[0].details->reason() == inv::ReserveRejected::OUT_OF_STOCK);
    CHECK(rejections[0].details->available().amount() == 1);
}

TEST_CASE("a mocked delete_() handler (rpc Delete) is served by the real server", "[generated][mocks][aip]") {
    namespace lib = xymqtt::examples::library;
    xymqtt::testing::loopback lb;
    lib::MockBooksService service;
    lib::Books::Server server(lb);
    server.serve(service);
    lib::Books::Client client(lb);
    REQUIRE_CALL(service, delete_(_, _)).WITH(_1.name() == "shelves/s1/books/b1").RETURN(google::protobuf::Empty{});
    lib::DeleteBookRequest request;
    request.set_name("shelves/s1/books/b1");
    auto pending = client.call_delete_async(request);
    lb.run_until_idle();
    CHECK(pending.outcome.get().ok());
}

TEST_CASE("a mocked AsyncService answers through the responder it is given", "[generated][mocks][deferred]") {
    xymqtt::testing::loopback lb;
    inv::MockInventoryAsyncService service;
    inv::Inventory::Server server(lb, "test");
    server.serve(service);
    inv::Inventory::Client client(lb, "test");

    inv::ReserveRejected details;
    details.set_reason(inv::ReserveRejected::OUT_OF_STOCK);
    REQUIRE_CALL(service, reserve(_, _, _))
        .SIDE_EFFECT(_3.reject(inv::Inventory::ReserveError(409, "out of stock", details)));
    auto pending = client.call_reserve_async(inv::ReserveRequest{});
    lb.run_until_idle();
    const auto outcome = pending.outcome.get();
    REQUIRE(outcome.rejection);
    CHECK(outcome.rejection->status == 409);
    REQUIRE(outcome.rejection->details);
    CHECK(outcome.rejection->details->reason() == inv::ReserveRejected::OUT_OF_STOCK);
}
