// Implements the Orders server and exercises it through the generated client over the loopback.
#include <cstdio>
#include <string>
#include <vector>

#include <xymqtt/exception.h>
#include <xymqtt/testing/loopback.h>

#include "shop/orders.xymqtt.h"
#include "shop/orders.xymqtt_mock.h"  // the mocks header compiles from an install too

namespace {

int failures = 0;

void check(bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++failures;
}

class OrdersServer final : public shop::Orders::Service {
public:
    explicit OrdersServer(shop::Orders::ServerInterface& events) : events_(events) {}

    shop::OrderPlaced place(const shop::PlaceOrder& order, xymqtt::call_context&) override {
        if (order.quantity() == 0) throw xymqtt::command_error(400, "quantity must be positive");
        shop::OrderPlaced placed;
        placed.set_order_id("o-" + order.sku());
        placed.mutable_at()->set_seconds(1700000000);
        events_.publish_placed(placed);
        return placed;
    }

private:
    shop::Orders::ServerInterface& events_;
};

}  // namespace

int main() {
    xymqtt::testing::loopback lb;
    shop::Orders::Server server(lb, "acme");
    OrdersServer service(server);
    server.serve(service);

    shop::Orders::Client client(lb, "acme");
    std::vector<std::string> placed;
    client.subscribe_placed([&](const shop::OrderPlaced& event) { placed.push_back(event.order_id()); });

    shop::PlaceOrder order;
    order.set_sku("apple");
    order.set_quantity(3);
    auto ok = client.call_place_async(order);
    order.set_quantity(0);
    auto refused = client.call_place_async(order);
    lb.run_until_idle();

    const auto outcome = ok.outcome.get();
    check(outcome.ok() && outcome.result->order_id() == "o-apple", "place resolves");
    const auto rejection = refused.outcome.get();
    check(!rejection.ok() && rejection.rejection->status == 400, "place rejects with 400");
    check(placed == std::vector<std::string>{"o-apple"}, "placed event delivered");
    check(client.place_topic() == "acme/orders/cmd/place", "topic from the required token");
    return failures == 0 ? 0 : 1;
}
