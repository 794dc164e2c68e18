// Omitting a topic token that has no default ({env} of the inventory service).
#include "examples/inventory.xymqtt.h"

using namespace xymqtt::examples::inventory;

void connect(xymqtt::transport& transport) {
    Inventory::Options options;
    options.system = "stock";
#ifdef XYMQTT_NEGATIVE
    Inventory::Client client(transport, options);
#else
    Inventory::Client client(transport, "prod", options);
#endif
}
