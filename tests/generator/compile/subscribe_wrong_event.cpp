// Subscribing to an event with a handler for another message type.
#include "examples/publisher.xymqtt.h"

using namespace xymqtt::examples;

void subscribe(xymqtt::transport& transport) {
    Publisher::Client client(transport);
#ifdef XYMQTT_NEGATIVE
    client.subscribe_tick([](const PingResult&) {});
#else
    client.subscribe_tick([](const Tick&) {});
    client.subscribe_tick([](const Tick&, const xymqtt::message&) {});
#endif
}
