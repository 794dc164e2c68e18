#include "outbox/packet_size.h"

namespace xymqtt::detail {

namespace {

std::size_t varint_bytes(std::size_t n) { return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4; }

}  // namespace

std::size_t publish_packet_size(const stored_message& m, bool v5) {
    std::size_t rest = 2 + m.topic.size() + 2 + m.payload.size();
    if (v5) {
        std::size_t props = 0;
        if (!m.props.content_type.empty()) props += 3 + m.props.content_type.size();
        if (!m.props.correlation_data.empty()) props += 3 + m.props.correlation_data.size();
        if (!m.props.response_topic.empty()) props += 3 + m.props.response_topic.size();
        if (m.props.expiry_seconds) props += 5;
        for (const auto& [k, v] : m.props.user) props += 5 + k.size() + v.size();
        rest += varint_bytes(props) + props;
    }
    return 1 + varint_bytes(rest) + rest;
}

}  // namespace xymqtt::detail
