// Calling a command with a request of another type.
#include "examples/inventory.xymqtt.h"

using namespace xymqtt::examples::inventory;

void call(xymqtt::transport& transport) {
    Inventory::Client client(transport, "prod");
#ifdef XYMQTT_NEGATIVE
    client.call_reserve_async(GetStockRequest{});
#else
    client.call_reserve_async(ReserveRequest{});
#endif
}
