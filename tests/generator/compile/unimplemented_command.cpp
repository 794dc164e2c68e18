// A service implementation that misses a command cannot be served (the class stays abstract).
#include "examples/inventory.xymqtt.h"

using namespace xymqtt::examples::inventory;

class InventoryService final : public Inventory::Service {
public:
    Reservation reserve(const ReserveRequest&, xymqtt::call_context&) override { return {}; }
#ifndef XYMQTT_NEGATIVE
    StockReport get_stock(const GetStockRequest&, xymqtt::call_context&) override { return {}; }
#endif
};

void serve(xymqtt::transport& transport) {
    InventoryService service;
    Inventory::Server(transport, "prod").serve(service);
}
