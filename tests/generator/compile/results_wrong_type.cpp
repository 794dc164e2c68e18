// Subscribing to a command's results with a resolve handler for another command's result type.
#include "examples/inventory.xymqtt.h"

using namespace xymqtt::examples::inventory;

void subscribe(xymqtt::transport& transport) {
    Inventory::Client client(transport, "prod");
#ifdef XYMQTT_NEGATIVE
    client.subscribe_reserve_results([](const std::string&, const StockReport&) {},
                                      [](const Inventory::ReserveRejection&) {});
#else
    client.subscribe_reserve_results([](const std::string&, const Reservation&) {},
                                      [](const Inventory::ReserveRejection&) {});
#endif
}
