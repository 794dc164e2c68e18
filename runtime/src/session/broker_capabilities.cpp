#include "session/broker_capabilities.h"

#include <functional>

namespace xymqtt::detail {

namespace {

struct capability {
    const char* name;
    // A finding when the broker lacks or reduces the capability, nothing when it has it.
    std::function<std::optional<capability_finding>(const connack_capabilities&, const capability_needs&)> check;
};

// The capabilities the runtime needs, in the order they are reported.
const std::vector<capability>& capabilities() {
    static const std::vector<capability> list = {
        {"maximum QoS",
         [](const connack_capabilities& g, const capability_needs&) -> std::optional<capability_finding> {
             if (!g.maximum_qos || *g.maximum_qos >= 2) return std::nullopt;
             return capability_finding{true, std::to_string(*g.maximum_qos) +
                                                 " granted; events and commands are sent with QoS 2"};
         }},
        {"receive maximum",
         [](const connack_capabilities& g, const capability_needs&) -> std::optional<capability_finding> {
             if (!g.receive_maximum || *g.receive_maximum >= 1) return std::nullopt;
             return capability_finding{true, "0 granted; the broker would take no publish in flight"};
         }},
        {"shared subscriptions",
         [](const connack_capabilities& g, const capability_needs& n) -> std::optional<capability_finding> {
             if (!n.shared_subscriptions || !g.shared_subscriptions || *g.shared_subscriptions != 0) return std::nullopt;
             return capability_finding{true, "not available; a command served in a group needs them ($share/)"};
         }},
        {"session expiry",
         [](const connack_capabilities& g, const capability_needs& n) -> std::optional<capability_finding> {
             if (!g.session_expiry || *g.session_expiry >= n.session_expiry) return std::nullopt;
             if (*g.session_expiry == 0)
                 return capability_finding{true, "0 s granted; the broker would forget the session, and what is "
                                                 "sent to this client while it is away, at every disconnect"};
             return capability_finding{false, std::to_string(*g.session_expiry) + " s granted of " +
                                                  std::to_string(n.session_expiry) +
                                                  " s asked; messages for this client are kept only that long while it is away"};
         }},
    };
    return list;
}

}  // namespace

std::vector<capability_finding> check_capabilities(const connack_capabilities& granted, const capability_needs& needs) {
    std::vector<capability_finding> found;
    for (const auto& c : capabilities())
        if (auto f = c.check(granted, needs)) {
            f->text = std::string(c.name) + ": " + f->text;
            found.push_back(std::move(*f));
        }
    return found;
}

}  // namespace xymqtt::detail
