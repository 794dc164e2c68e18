// The size of a PUBLISH on the wire: what a broker's Maximum Packet Size limits.
#pragma once

#include <cstddef>

#include "xymqtt/store.h"

namespace xymqtt::detail {

/// @return the size of the QoS 2 PUBLISH packet that carries `m` (MQTT 5 when `v5`), as a broker's Maximum
/// Packet Size counts it: fixed header, topic, packet id, properties, payload.
std::size_t publish_packet_size(const stored_message& m, bool v5);

}  // namespace xymqtt::detail
