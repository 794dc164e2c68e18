// Messages between the store's form (stored_message) and Paho's (mqtt::message and its properties).
#pragma once

#include <memory>

#include "xymqtt/message.h"
#include "xymqtt/store.h"

namespace mqtt {
class message;
class properties;
}  // namespace mqtt

namespace xymqtt::detail {

/// @return the MQTT 5 properties a message arrived with.
message_properties from_paho(const mqtt::properties& p);

/// @return the QoS 2 PUBLISH of `m`, with its MQTT 5 properties when `v5`. Its Message Expiry Interval
///         counts from when the message was accepted (`m.created_ms`, at `now_ms`), not from when it is
///         sent: what is left of it, at least 1 s.
std::shared_ptr<mqtt::message> to_paho(const stored_message& m, bool v5, std::int64_t now_ms);

}  // namespace xymqtt::detail
