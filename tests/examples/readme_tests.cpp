// The code shown in README.md ("The typed workflow"), compiled and run here so that it stays true.
// Keep the two in step: a block of the README is the code between the matching "README:" markers.
#include <catch2/catch.hpp>
#include <catch2/trompeloeil.hpp>

#include <chrono>
#include <iostream>
#include <string>

#include <xymqtt/client.h>
#include <xymqtt/exception.h>
#include <xymqtt/testing/loopback.h>

#include "examples/publisher.xymqtt.h"
#include "examples/publisher.xymqtt_mock.h"

using namespace std::chrono_literals;

namespace readme {

// README: implement the service
using namespace xymqtt::examples;  // the schema's package: Publisher, Tick, PingRequest, PingResult

class PingService final : public Publisher::Service {
public:
    PingResult ping(const PingRequest&, xymqtt::call_context& context) override {
        context.on_cancel([] { std::cout << "ping cancelled\n"; });  // runs if the caller cancels
        if (busy_) throw xymqtt::command_error(503, "busy");         // -> cmd/publisher/ping/reject
        PingResult result;
        result.set_pong(true);
        return result;                                                // -> cmd/publisher/ping/resolve
    }
    bool busy_ = false;
};

int serve() {
    xymqtt::client_options options;
    options.server_uri = "tcp://127.0.0.1:1883";
    options.client_id = "ping_server";          // stable: it names the broker session and the store
    options.store_dir = "./.xymqtt/ping_server";
    PingService service;                        // must outlive its registration
    xymqtt::client client(options);
    Publisher::Server server(client);           // default token: system = "publisher"
    server.serve(service);                      // subscribes cmd/publisher/ping/invoke and /cancel
    client.connect();                           // connects (and reconnects) in the background

    Tick tick;
    tick.set_timestamp("2024-05-01T12:00:00.000Z");
    tick.set_count(1);
    server.publish_tick(tick).get();            // stored, then sent: ready when QoS 2 completes
    // ... run until asked to stop; then client.close()
    return 0;
}
// README: end

// README: call it
int call() {
    xymqtt::client_options options;
    options.client_id = "ping_client";
    options.store_dir = "./.xymqtt/ping_client";
    xymqtt::client client(options);
    Publisher::Client publisher(client);

    // Events: a handler that throws gets the same tick again later; the broker queues ticks for
    // this session while the program is down.
    publisher.subscribe_tick([](const Tick& tick) { std::cout << "tick " << tick.count() << "\n"; });

    // Commands, xy-mqtt's way: results arrive through a subscription (also after a restart).
    publisher.subscribe_ping_results(
        [](const std::string& message_id, const PingResult& result) {
            std::cout << message_id << (result.pong() ? " pong\n" : " no pong\n");
        },
        [](const Publisher::PingRejection& rejection) {
            std::cout << rejection.message_id << " rejected " << rejection.status << " " << rejection.message << "\n";
        });
    client.connect();
    xymqtt::call_handle call = publisher.call_ping(PingRequest());  // returns once stored on disk
    std::cout << "called " << call.message_id() << "\n";
    call.cancel();                                                  // best effort

    // Or await the outcome with a future (no subscription needed; cancelled on timeout).
    Publisher::PendingPing pending = publisher.call_ping_async(PingRequest(), 5s);
    Publisher::PingOutcome outcome = pending.outcome.get();  // throws xymqtt::timeout_error
    std::cout << (outcome.ok() ? "pong" : outcome.rejection->message) << "\n";
    client.close();
    return 0;
}
// README: end

}  // namespace readme

// README: test it
using namespace xymqtt::examples;
using trompeloeil::_;

// No broker: the loopback runs the real generated Server and Client in memory.
TEST_CASE("the ping service answers pong, or rejects when busy") {
    xymqtt::testing::loopback lb;
    readme::PingService service;
    Publisher::Server server(lb);
    server.serve(service);
    Publisher::Client client(lb);

    auto pending = client.call_ping_async(PingRequest());
    lb.run_until_idle();  // runs the invoke, then delivers the resolve
    const Publisher::PingOutcome outcome = pending.outcome.get();
    REQUIRE(outcome.ok());
    CHECK(outcome.result->pong());

    service.busy_ = true;
    auto rejected = client.call_ping_async(PingRequest());
    lb.run_until_idle();
    const Publisher::PingOutcome no = rejected.outcome.get();
    REQUIRE_FALSE(no.ok());
    CHECK(no.rejection->status == 503);
    CHECK(lb.published("cmd/publisher/ping/reject").size() == 1);
}

// Code that uses the service is written against Publisher::ClientInterface ...
bool is_alive(Publisher::ClientInterface& publisher) {
    auto pending = publisher.call_ping_async(PingRequest(), std::chrono::milliseconds(500));
    const auto outcome = pending.outcome.get();
    return outcome.ok() && outcome.result->pong();
}

// ... so that a test can hand it the generated trompeloeil mock.
TEST_CASE("is_alive is false when ping is rejected") {
    MockPublisherClient publisher;
    REQUIRE_CALL(publisher, call_ping_async(_, _)).RETURN([] {
        std::promise<Publisher::PingOutcome> promise;
        Publisher::PingOutcome outcome;
        outcome.rejection = Publisher::PingRejection{"m-1", 503, "busy"};
        promise.set_value(outcome);
        return Publisher::PendingPing{xymqtt::call_handle(), promise.get_future()};
    }());
    CHECK_FALSE(is_alive(publisher));
}
// README: end

TEST_CASE("the README's client and server code compiles") {
    // Not run (they need a broker and leave stores behind); taking their addresses keeps them built.
    CHECK(&readme::serve != nullptr);
    CHECK(&readme::call != nullptr);
}
