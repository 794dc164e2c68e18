// Implements the Orders server and exercises it through the generated client over the loopback.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <xymqtt/exception.h>
#include <xymqtt/testing/loopback.h>

#include "shop/catalog.xymqtt.h"
#include "shop/catalog.xymqtt_mock.h"
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

namespace catalog = shop::catalog::v1;

// An AIP-style resource service: products by name, in memory.
class CatalogService final : public catalog::Catalog::Service {
public:
    explicit CatalogService(catalog::Catalog::ServerInterface& events) : events_(events) {}

    catalog::Product get(const catalog::GetProductRequest& request, xymqtt::call_context&) override {
        return find<catalog::Catalog::GetError>(request.name());
    }
    catalog::ListProductsResponse list(const catalog::ListProductsRequest&, xymqtt::call_context&) override {
        catalog::ListProductsResponse response;
        for (const auto& [name, product] : products_) *response.add_products() = product;
        return response;
    }
    catalog::Product create(const catalog::CreateProductRequest& request, xymqtt::call_context&) override {
        const auto& product = request.product();
        if (products_.count(product.name()))
            throw catalog::Catalog::CreateError(409, "exists", refused(catalog::Refused::ALREADY_EXISTS));
        products_[product.name()] = product;
        changed("created", product);
        return product;
    }
    catalog::Product update(const catalog::UpdateProductRequest& request, xymqtt::call_context&) override {
        auto product = find<catalog::Catalog::UpdateError>(request.product().name());
        for (const auto& path : request.update_mask().paths())
            if (path == "price") *product.mutable_price() = request.product().price();
        products_[product.name()] = product;
        changed("updated", product);
        return product;
    }
    google::protobuf::Empty delete_(const catalog::DeleteProductRequest& request, xymqtt::call_context&) override {
        const auto product = find<catalog::Catalog::DeleteError>(request.name());
        products_.erase(request.name());
        changed("deleted", product);
        return {};
    }

private:
    static catalog::Refused refused(catalog::Refused::Reason reason) {
        catalog::Refused r;
        r.set_reason(reason);
        return r;
    }
    // Each command rejects with its own typed error.
    template <class Error>
    catalog::Product find(const std::string& name) const {
        const auto it = products_.find(name);
        if (it == products_.end()) throw Error(404, name + " not found", refused(catalog::Refused::NOT_FOUND));
        return it->second;
    }
    void changed(const std::string& what, const catalog::Product& product) {
        catalog::ProductChanged event;
        event.set_class_(what);
        *event.mutable_product() = product;
        events_.publish_changed(event);
    }

    catalog::Catalog::ServerInterface& events_;
    std::map<std::string, catalog::Product> products_;
};

void run_catalog(xymqtt::testing::loopback& lb) {
    catalog::Catalog::Server server(lb, "acme");
    CatalogService service(server);
    server.serve(service);
    catalog::Catalog::Client client(lb, "acme");
    std::vector<std::string> changes;
    client.subscribe_changed(
        [&](const catalog::ProductChanged& e) { changes.push_back(e.class_() + " " + e.product().name()); });

    catalog::CreateProductRequest create;
    auto* product = create.mutable_product();
    product->set_name("products/tea");
    product->mutable_price()->set_currency("EUR");
    product->mutable_price()->set_units(4);
    (*product->mutable_labels())["origin"] = "assam";
    product->set_count(12);
    auto created = client.call_create_async(create);
    auto again = client.call_create_async(create);
    lb.run_until_idle();
    const auto c = created.outcome.get();
    check(c.ok() && c.result->labels().at("origin") == "assam" && c.result->count() == 12,
          "create resolves with the map and the oneof");
    const auto a = again.outcome.get();
    check(!a.ok() && a.rejection->status == 409 && a.rejection->details &&
              a.rejection->details->reason() == catalog::Refused::ALREADY_EXISTS,
          "a second create is rejected with typed details");

    catalog::UpdateProductRequest update;
    update.mutable_product()->set_name("products/tea");
    update.mutable_product()->mutable_price()->set_units(5);
    update.mutable_update_mask()->add_paths("price");
    auto updated = client.call_update_async(update);
    catalog::DeleteProductRequest remove;
    remove.set_name("products/tea");
    auto deleted = client.call_delete_async(remove);
    auto gone = client.call_delete_async(remove);
    lb.run_until_idle();
    const auto u = updated.outcome.get();
    check(u.ok() && u.result->price().units() == 5 && u.result->count() == 12, "update applies the field mask");
    check(deleted.outcome.get().ok(), "delete (rpc Delete, served by delete_) resolves");
    const auto g = gone.outcome.get();
    check(!g.ok() && g.rejection->status == 404 && g.rejection->details &&
              g.rejection->details->reason() == catalog::Refused::NOT_FOUND,
          "deleting a missing product is rejected with typed details");
    check(changes == std::vector<std::string>{"created products/tea", "updated products/tea", "deleted products/tea"},
          "changed events carry the keyword field token");
    check(client.delete_topic() == "acme/catalog/cmd/delete", "topic from the keyword token {namespace}");
}

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
    run_catalog(lb);
    return failures == 0 ? 0 : 1;
}
