// The inbox's lanes (runtime/src/inbox/routes.h): which lanes a copy goes to, parking and adoption, and
// handlers leaving.
#include <catch2/catch.hpp>

#include "inbox/routes.h"

using namespace xymqtt;
using xymqtt::detail::routes;
using xymqtt::detail::subscription_identifier;

namespace {

stored_message delivery(const std::string& topic, const std::string& lane = "") {
    stored_message m;
    m.topic = topic;
    m.lane = lane;
    return m;
}

void handler(const message&, effects&) {}

}  // namespace

TEST_CASE("routes: a copy goes to the lanes its subscription identifiers name, else to every matching lane",
          "[routes]") {
    routes r;
    auto all = r.open("a/#", 1).first;
    auto one = r.open("a/b", 1).first;
    r.add_handler(1, *all, handler);
    r.add_handler(2, *one, handler);
    using v = std::vector<std::string>;
    CHECK(r.lanes_for("a/b", {subscription_identifier("a/b")}) == v{"a/b"});
    CHECK(r.lanes_for("a/b", {subscription_identifier("a/#")}) == v{"a/#"});
    CHECK(r.lanes_for("a/b", {subscription_identifier("a/#"), subscription_identifier("a/b")}) == v{"a/#", "a/b"});
    // Identifiers of no subscription of ours (made before identifiers, or replaced): every matching lane.
    CHECK(r.lanes_for("a/b", {}) == v{"a/#", "a/b"});
    CHECK(r.lanes_for("a/b", {12345}) == v{"a/#", "a/b"});
    CHECK(r.lanes_for("a/c", {}) == v{"a/#"});
    CHECK(r.lanes_for("x", {}) == v{""});  // parked
    // The identifiers are the same in every process, within MQTT's range, and differ between filters.
    CHECK(subscription_identifier("a/b") == subscription_identifier(std::string("a/") + "b"));
    CHECK(subscription_identifier("a/b") != subscription_identifier("a/#"));
    for (const char* f : {"", "a", "#", "$share/g/a/+/b"}) {
        CHECK(subscription_identifier(f) >= 1);
        CHECK(subscription_identifier(f) <= 268435455u);
    }
}

TEST_CASE("routes: deliveries with no lane are parked, in order, until a matching lane opens", "[routes]") {
    routes r;
    r.park("0001", delivery("a/1"));          // stored for no lane (none matched when it arrived)
    r.park("0002", delivery("b/1", "b/#"));   // stored for a lane that is not open yet
    r.park("0003", delivery("a/2", "x/#"));   // stored for another lane
    CHECK(r.route("0004", delivery("a/3")) == nullptr);
    CHECK(r.parked() == 4);
    auto [a, relabel] = r.open("a/+", 1);
    // The ones stored for no lane and matching it join, relabelled; the one stored for x/# stays.
    REQUIRE(relabel.size() == 2);
    CHECK(relabel[0].id == "0001");
    CHECK(relabel[1].id == "0004");
    CHECK(decode_record(*relabel[0].value).lane == "a/+");
    REQUIRE(a->queue.size() == 2);
    CHECK(a->queue.begin()->first == "0001");
    CHECK(r.parked() == 2);
    auto b = r.open("b/#", 1);
    CHECK(b.second.empty());  // stored for it already: nothing to relabel
    CHECK(b.first->queue.count("0002"));
    CHECK(r.parked() == 1);
    // A live lane takes what is routed to it.
    CHECK(r.route("0005", delivery("a/4", "a/+")) == a);
    CHECK(a->queue.size() == 3);
    r.done(*a, "0005");
    CHECK(a->queue.size() == 2);
    r.erase("0003");  // dead-lettered while parked
    CHECK(r.parked() == 0);
}

TEST_CASE("routes: the last handler leaving stops the lane and parks its deliveries", "[routes]") {
    routes r;
    auto l = r.open("t/#", 1).first;
    r.add_handler(1, *l, handler);
    r.add_handler(2, *l, handler);
    r.route("0001", delivery("t/1", "t/#"));
    r.route("0002", delivery("t/2", "t/#"));
    CHECK(r.handlers_of("t/#").size() == 2);
    auto first = r.remove_handler(1);
    REQUIRE(first);
    CHECK(first->filter == "t/#");
    CHECK(first->stopped == nullptr);
    CHECK(r.find("t/#") == l.get());
    auto last = r.remove_handler(2);
    REQUIRE(last);
    CHECK(last->stopped == l.get());
    CHECK(l->stopping);
    CHECK(l->queue.empty());
    CHECK(r.parked() == 2);
    CHECK(r.find("t/#") == nullptr);
    CHECK(r.live_filters().empty());
    CHECK_FALSE(r.remove_handler(2));
    CHECK(r.lanes_for("t/1", {}) == std::vector<std::string>{""});
    // A new subscription opens a new lane, which takes them back in order; the stopped one is retired.
    auto again = r.open("t/#", 1).first;
    CHECK(again != l);
    REQUIRE(again->queue.size() == 2);
    CHECK(again->queue.begin()->first == "0001");
    int lanes = 0;
    r.for_each([&](detail::lane&) { ++lanes; });
    CHECK(lanes == 2);
    // A retired lane is joined once its thread has left its loop, and only then.
    l->thread = std::thread([] {});
    r.reap_retired();
    lanes = 0;
    r.for_each([&](detail::lane&) { ++lanes; });
    CHECK(lanes == 2);
    l->finished = true;
    r.reap_retired();
    lanes = 0;
    r.for_each([&](detail::lane&) { ++lanes; });
    CHECK(lanes == 1);
    CHECK_FALSE(l->thread.joinable());
}
