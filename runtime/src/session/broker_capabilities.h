// What the runtime needs of a broker, checked against each MQTT 5 CONNACK.
//
// The list is declarative (broker_capabilities.cpp, one row per capability): a broker that lacks one is
// refused at connect with a message naming the capability, what it granted and why the runtime needs it,
// and the client tries its next server URI. MQTT 3.1.1 brokers announce nothing: there is nothing to
// check, and the guarantees rest on the broker's configuration (README, "Scaling out").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace xymqtt::detail {

/// The CONNACK properties the check reads; absent means the MQTT 5 default.
struct connack_capabilities {
    std::optional<std::uint8_t> maximum_qos;              ///< 0x24; absent: 2
    std::optional<std::uint16_t> receive_maximum;         ///< 0x21; absent: 65535
    std::optional<std::uint8_t> shared_subscriptions;     ///< 0x2A; absent: available
    std::optional<std::uint32_t> session_expiry;          ///< 0x11; absent: the interval asked for
};

/// What this client asks of the broker.
struct capability_needs {
    std::uint32_t session_expiry = 0;  ///< the Session Expiry Interval of the CONNECT, seconds
    bool shared_subscriptions = false;  ///< a command is served in a group ($share/ filters)
};

/// One row of the check's outcome.
struct capability_finding {
    bool fatal = false;   ///< the broker cannot give the guarantees: do not use it
    std::string text;     ///< e.g. "maximum QoS: 1 granted; events and commands are sent with QoS 2"
};

/// Checks `granted` against `needs`.
/// @return one finding per capability that is lacking (fatal) or reduced (a warning); empty if none.
std::vector<capability_finding> check_capabilities(const connack_capabilities& granted, const capability_needs& needs);

}  // namespace xymqtt::detail
