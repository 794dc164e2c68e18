#include "session/paho_message.h"

#include <mqtt/message.h>

#include <algorithm>
#include <climits>
#include <cstdint>

namespace xymqtt::detail {

message_properties from_paho(const mqtt::properties& p) {
    message_properties out;
    if (p.contains(mqtt::property::CONTENT_TYPE))
        out.content_type = mqtt::get<std::string>(p, mqtt::property::CONTENT_TYPE);
    if (p.contains(mqtt::property::CORRELATION_DATA))
        out.correlation_data = mqtt::get<mqtt::binary>(p, mqtt::property::CORRELATION_DATA);
    if (p.contains(mqtt::property::RESPONSE_TOPIC))
        out.response_topic = mqtt::get<std::string>(p, mqtt::property::RESPONSE_TOPIC);
    if (p.contains(mqtt::property::MESSAGE_EXPIRY_INTERVAL))
        out.expiry_seconds = mqtt::get<uint32_t>(p, mqtt::property::MESSAGE_EXPIRY_INTERVAL);
    const auto n = p.count(mqtt::property::USER_PROPERTY);
    for (size_t i = 0; i < n; ++i) {
        auto kv = mqtt::get<mqtt::string_pair>(p, mqtt::property::USER_PROPERTY, i);
        out.user.emplace_back(std::get<0>(kv), std::get<1>(kv));
    }
    return out;
}

std::shared_ptr<mqtt::message> to_paho(const stored_message& m, bool v5, std::int64_t now_ms) {
    auto msg = std::make_shared<mqtt::message>(m.topic, m.payload, 2, m.retain);
    if (!v5) return msg;
    mqtt::properties props;
    if (!m.props.content_type.empty()) props.add({mqtt::property::CONTENT_TYPE, m.props.content_type});
    if (!m.props.correlation_data.empty())
        props.add({mqtt::property::CORRELATION_DATA, mqtt::binary(m.props.correlation_data)});
    if (!m.props.response_topic.empty()) props.add({mqtt::property::RESPONSE_TOPIC, m.props.response_topic});
    if (m.props.expiry_seconds) {
        const auto elapsed_s = std::max<std::int64_t>(0, (now_ms - m.created_ms) / 1000);
        const auto left = std::max<std::int64_t>(1, std::int64_t(*m.props.expiry_seconds) - elapsed_s);
        props.add({mqtt::property::MESSAGE_EXPIRY_INTERVAL, static_cast<int32_t>(std::min<std::int64_t>(left, INT32_MAX))});
    }
    for (const auto& [k, v] : m.props.user) props.add({mqtt::property::USER_PROPERTY, k, v});
    msg->set_properties(props);
    return msg;
}

}  // namespace xymqtt::detail
