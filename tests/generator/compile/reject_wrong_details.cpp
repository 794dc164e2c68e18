// Rejecting a call with details of a type other than the command's declared reject type.
#include "examples/inventory.xymqtt.h"

using namespace xymqtt::examples::inventory;

class InventoryService final : public Inventory::Service {
public:
    Reservation reserve(const ReserveRequest&, xymqtt::call_context&) override {
#ifdef XYMQTT_NEGATIVE
        throw Inventory::ReserveError(409, "out of stock", StockReport{});
#else
        throw Inventory::ReserveError(409, "out of stock", ReserveRejected{});
#endif
    }
    StockReport get_stock(const GetStockRequest&, xymqtt::call_context&) override { return {}; }
};
