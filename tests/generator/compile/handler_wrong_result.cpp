// A command handler that returns something other than the command's result type.
#include "examples/publisher.xymqtt.h"

using namespace xymqtt::examples;

class PingService final : public Publisher::Service {
public:
#ifdef XYMQTT_NEGATIVE
    Tick ping(const PingRequest&, xymqtt::call_context&) override { return {}; }
#else
    PingResult ping(const PingRequest&, xymqtt::call_context&) override { return {}; }
#endif
};

void serve(xymqtt::transport& transport) {
    PingService service;
    Publisher::Server(transport).serve(service);
}
