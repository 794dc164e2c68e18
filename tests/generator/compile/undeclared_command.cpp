// Calling a command the schema does not declare.
#include "examples/publisher.xymqtt.h"

using namespace xymqtt::examples;

void call(xymqtt::transport& transport) {
    Publisher::Client client(transport);
#ifdef XYMQTT_NEGATIVE
    client.call_pong(PingRequest{});
#else
    client.call_ping(PingRequest{});
#endif
}
