/// @file message.h
/// A message as the runtime stores, sends and delivers it: topic, payload bytes and MQTT 5 properties.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace xymqtt {

/// How a command's payloads are encoded on the wire.
enum class wire_format : std::uint8_t {
    json,    ///< xy-mqtt's format: a JSON object with `messageId` merged in.
    binary,  ///< Protocol Buffers bytes; message id and reject details in MQTT 5 properties.
};

/// The MQTT 5 properties xymqtt carries. Ignored (not sent) under MQTT 3.1.1.
struct message_properties {
    std::string content_type;      ///< Content Type: the payload's encoding, e.g. content_type::json.
    std::string correlation_data;  ///< Correlation Data (bytes); binary commands carry the message id here.
    std::string response_topic;    ///< Response Topic: where an answer is expected; no wildcards.
    /// Message expiry in seconds; the broker discards the message when it runs out.
    std::optional<std::uint32_t> expiry_seconds;
    std::vector<std::pair<std::string, std::string>> user;  ///< User Properties, in order; names may repeat.

    /// @param key the property's name.
    /// @return the value of the first user property named `key`, if any.
    std::optional<std::string> user_property(const std::string& key) const {
        for (const auto& kv : user)
            if (kv.first == key) return kv.second;
        return std::nullopt;
    }
    /// @param o the properties to compare with.
    /// @return true if every property, user properties in order included, is equal.
    bool operator==(const message_properties& o) const {
        return content_type == o.content_type && correlation_data == o.correlation_data &&
               response_topic == o.response_topic && expiry_seconds == o.expiry_seconds && user == o.user;
    }
};

/// A delivered message, as a subscription handler sees it.
struct message {
    std::string topic;         ///< The topic it was published to.
    std::string payload;       ///< The payload bytes, as published.
    message_properties props;  ///< Its MQTT 5 properties.
    /// Store id of this delivery (ordered, unique within the store).
    std::string id;
    /// 1 on the first attempt, 2 on the first retry, and so on (also across restarts).
    std::uint32_t attempt = 1;
    /// When the message was committed to the inbox, in milliseconds since the Unix epoch.
    std::int64_t received_at_ms = 0;
};

/// Options of one publish. Every publish is QoS 2.
struct publish_options {
    message_properties props;  ///< MQTT 5 properties to send with the message.
    bool retain = false;       ///< Ask the broker to keep it as the topic's retained message.
};

/// Checks properties for sending, before anything is stored: a property the broker refuses would drop
/// the connection each time the outbox sends it.
/// @param props the properties to check: strings valid UTF-8 without U+0000 and at most 65,535 bytes,
///        correlation data at most 65,535 bytes, a response topic that is a valid topic name.
/// @throw xymqtt::invalid_property naming the property and the problem.
void validate_properties(const message_properties& props);

}  // namespace xymqtt
