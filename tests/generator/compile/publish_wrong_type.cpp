// Publishing an event with a message type other than the one the schema declares.
#include "examples/publisher.xymqtt.h"

using namespace xymqtt::examples;

void publish(xymqtt::transport& transport) {
    Publisher::Server server(transport);
#ifdef XYMQTT_NEGATIVE
    server.publish_tick(PingResult{});
#else
    server.publish_tick(Tick{});
#endif
}
