// The generated stubs over xymqtt::client and a real broker: XYMQTT_TEST_BROKER=tcp://host:port, or a
// private Mosquitto started for this process when it is unset. A client that cannot connect fails.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <string>

#include <xymqtt/client.h>
#include <xymqtt/exception.h>

#include "examples/publisher.xymqtt.h"
#include "library_service.h"
#include "support/broker.h"

using namespace std::chrono_literals;
using namespace xymqtt::examples;

namespace {

std::string unique_suffix() {
    std::random_device rd;
    return std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000);
}

/// A connected client with its own store in a temporary directory.
class broker_client {
public:
    explicit broker_client(const std::string& name) {
        const std::string uri = xymqtt::test::shared_broker_uri();
        dir_ = std::filesystem::temp_directory_path() / ("xymqtt-gen-" + name + "-" + unique_suffix());
        std::filesystem::create_directories(dir_);
        xymqtt::client_options options;
        options.server_uri = uri;
        options.client_id = "xymqtt-gen-" + name + "-" + unique_suffix();
        options.store_dir = dir_.string();
        client_ = std::make_unique<xymqtt::client>(options);
        client_->connect();
        if (!client_->wait_connected(10s)) FAIL("cannot connect to " << uri << ": " << client_->stats().last_error);
    }
    ~broker_client() {
        if (client_) {
            try {
                client_->close();
            } catch (...) {
            }
            client_.reset();
        }
        std::error_code ec;
        if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
    }
    xymqtt::client& operator*() { return *client_; }

private:
    std::filesystem::path dir_;
    std::unique_ptr<xymqtt::client> client_;
};

class PingService final : public Publisher::Service {
public:
    bool fail = false;
    PingResult ping(const PingRequest&, xymqtt::call_context&) override {
        if (fail) throw xymqtt::command_error(503, "try later");
        PingResult result;
        result.set_pong(true);
        return result;
    }
};

Publisher::Options options_for(const std::string& system, xymqtt::wire_format format) {
    Publisher::Options options;
    options.system = system;  // a system of its own, so that old sessions do not interfere
    options.format = format;
    return options;
}

// The server's SUBSCRIBE is asynchronous: an invoke sent before it reaches the broker finds no
// subscriber. Calls until one is answered (20 s at most).
bool ping_until_served(Publisher::Client& client) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
        auto probe = client.call_ping_async(PingRequest{}, 1s);
        try {
            if (probe.outcome.get().ok()) return true;
        } catch (const xymqtt::timeout_error&) {
        }
    }
    return false;
}

}  // namespace

TEST_CASE("a tick published through the broker reaches the subscriber", "[generated][broker]") {
    const auto format = GENERATE(xymqtt::wire_format::binary, xymqtt::wire_format::json);
    broker_client publisher_side("pub"), subscriber_side("sub");
    const auto options = options_for("gen-test-" + unique_suffix(), format);

    Publisher::Client client(*subscriber_side, options);
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Tick> received;
    client.subscribe_tick([&](const Tick& tick) {
        std::lock_guard<std::mutex> lk(mu);
        received.push_back(tick);
        cv.notify_all();
    });

    Publisher::Server server(*publisher_side, options);
    Tick tick;
    tick.set_timestamp("2024-05-01T12:00:00.000Z");
    tick.set_count(41);
    // The SUBSCRIBE is asynchronous: publish until a tick arrives (earlier ones found no subscription).
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    bool arrived = false;
    while (!arrived && std::chrono::steady_clock::now() < deadline) {
        REQUIRE(server.publish_tick(tick).wait_for(10s) == std::future_status::ready);
        std::unique_lock<std::mutex> lk(mu);
        arrived = cv.wait_for(lk, 500ms, [&] { return !received.empty(); });
    }
    REQUIRE(arrived);
    std::lock_guard<std::mutex> lk(mu);
    CHECK(received.front().count() == 41);
    CHECK(received.front().timestamp() == "2024-05-01T12:00:00.000Z");
}

TEST_CASE("ping resolves and rejects through the broker", "[generated][broker]") {
    const auto format = GENERATE(xymqtt::wire_format::binary, xymqtt::wire_format::json);
    broker_client server_side("srv"), caller_side("cli");
    const auto options = options_for("gen-test-" + unique_suffix(), format);

    PingService service;
    Publisher::Server server(*server_side, options);
    server.serve(service);
    Publisher::Client client(*caller_side, options);
    REQUIRE(ping_until_served(client));

    auto ok = client.call_ping_async(PingRequest{}, 10s);
    // The outcome is a plain future: a caller that polls it sees it ready (a deferred one never is).
    REQUIRE(ok.outcome.wait_for(10s) == std::future_status::ready);
    const auto resolved = ok.outcome.get();
    REQUIRE(resolved.ok());
    CHECK(resolved.result->pong());
    CHECK(resolved.message_id == ok.handle.message_id());

    service.fail = true;
    std::promise<Publisher::PingRejection> rejected;
    client.subscribe_ping_results([](const std::string&, const PingResult&) {},
                                  [&](const Publisher::PingRejection& r) { rejected.set_value(r); });
    // The reject subscription reached the broker before the answered call's invoke (Paho sends in order).
    const auto handle = client.call_ping(PingRequest{});
    auto future = rejected.get_future();
    REQUIRE(future.wait_for(10s) == std::future_status::ready);
    const auto rejection = future.get();
    CHECK(rejection.message_id == handle.message_id());
    CHECK(rejection.status == 503);
    CHECK(rejection.message == "try later");
}

TEST_CASE("the AIP-style contract through the broker: Delete served by delete_(), typed rejects",
          "[generated][broker][aip]") {
    namespace lib = xymqtt::examples::library;
    const auto format = GENERATE(xymqtt::wire_format::binary, xymqtt::wire_format::json);
    broker_client server_side("lib-srv"), caller_side("lib-cli");
    lib::Books::Options options;
    options.env = "gen-test-" + unique_suffix();
    options.format = format;
    library_test::library_service service;
    lib::Books::Server server(*server_side, options);
    server.serve(service);
    lib::Books::Client client(*caller_side, options);
    lib::CreateBookRequest create;
    create.set_parent("shelves/s1");
    create.set_book_id("b1");
    create.mutable_book()->set_title("Dune");
    // The server's SUBSCRIBE is asynchronous: call until the first one is answered.
    bool created = false;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!created && std::chrono::steady_clock::now() < deadline) {
        auto probe = client.call_create_async(create, 1s);
        try {
            const auto outcome = probe.outcome.get();
            created = outcome.ok() || (outcome.rejection && outcome.rejection->status == 409);
        } catch (const xymqtt::timeout_error&) {
        }
    }
    REQUIRE(created);

    lib::DeleteBookRequest del;
    del.set_name("shelves/s1/books/b1");
    auto deleted = client.call_delete_async(del, 10s);
    REQUIRE(deleted.outcome.wait_for(10s) == std::future_status::ready);
    CHECK(deleted.outcome.get().ok());
    auto gone = client.call_delete_async(del, 10s);
    const auto rejected = gone.outcome.get();
    REQUIRE(rejected.rejection);
    CHECK(rejected.rejection->status == 404);
    REQUIRE(rejected.rejection->details);
    CHECK(rejected.rejection->details->reason() == lib::BookRefused::NOT_FOUND);
    CHECK(rejected.rejection->details->field() == "name");
}

TEST_CASE("a service's Options choose per-client result topics for its calls on a client whose default is shared",
          "[generated][broker][routing]") {
    broker_client server_side("srv"), caller_side("cli"), watcher_side("watch");
    auto options = options_for("gen-route-" + unique_suffix(), xymqtt::wire_format::binary);
    PingService service;
    Publisher::Server server(*server_side, options);
    server.serve(service);
    options.results = xymqtt::result_routing::per_client;  // this service's calls only
    Publisher::Client client(*caller_side, options);

    // Nothing may reach the shared result topics; everything reaches the caller's own.
    std::mutex mu;
    std::vector<std::string> shared, routed;
    (*watcher_side).subscribe(client.ping_topic() + "/+", [&](const xymqtt::message& m) {
        if (m.topic != client.ping_topic() + "/invoke") {
            std::lock_guard<std::mutex> lk(mu);
            shared.push_back(m.topic);
        }
    });
    (*watcher_side).subscribe("xymqtt/results/+/" + client.ping_topic() + "/+", [&](const xymqtt::message& m) {
        std::lock_guard<std::mutex> lk(mu);
        routed.push_back(m.topic);
    });
    // The watcher's subscriptions are in place once it receives its own markers on both.
    const auto ready_shared = client.ping_topic() + "/ready",
               ready_routed = "xymqtt/results/watch/" + client.ping_topic() + "/ready";
    const auto marked = [&] {
        std::lock_guard<std::mutex> lk(mu);
        return std::count(shared.begin(), shared.end(), ready_shared) > 0 &&
               std::count(routed.begin(), routed.end(), ready_routed) > 0;
    };
    for (auto until = std::chrono::steady_clock::now() + 20s; !marked() && std::chrono::steady_clock::now() < until;) {
        (*watcher_side).publish(ready_shared, "").get();
        (*watcher_side).publish(ready_routed, "").get();
        for (auto t = std::chrono::steady_clock::now() + 200ms; !marked() && std::chrono::steady_clock::now() < t;)
            std::this_thread::yield();
    }
    REQUIRE(marked());
    {
        std::lock_guard<std::mutex> lk(mu);
        shared.clear();
    }
    REQUIRE(ping_until_served(client));

    std::promise<std::string> resolved;
    client.subscribe_ping_results([&](const std::string& id, const PingResult&) { resolved.set_value(id); },
                                  [](const Publisher::PingRejection&) {});
    const auto handle = client.call_ping(PingRequest{});
    auto future = resolved.get_future();
    REQUIRE(future.wait_for(10s) == std::future_status::ready);
    CHECK(future.get() == handle.message_id());
    const auto expected = "xymqtt/results/" + (*caller_side).options().client_id + "/" + client.ping_topic() + "/resolve";
    const auto seen = [&] {
        std::lock_guard<std::mutex> lk(mu);
        return std::count(routed.begin(), routed.end(), expected);
    };
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (seen() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    CHECK(seen() >= 2);  // the probe that was answered, and the call
    std::lock_guard<std::mutex> lk(mu);
    CHECK(std::count(shared.begin(), shared.end(), ready_shared) == std::ptrdiff_t(shared.size()));  // markers only
}
