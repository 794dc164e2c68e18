// Omitting a required token named after a C++ keyword ({namespace}, passed as namespace_).
#include "testing/keywords.xymqtt.h"

using namespace xymqtt::testing::keywords;

void connect(xymqtt::transport& transport) {
#ifdef XYMQTT_NEGATIVE
    Library::Client client(transport);
#else
    Library::Client client(transport, "tenant-a");
#endif
}
