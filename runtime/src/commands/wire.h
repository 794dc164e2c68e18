// Command payloads on the wire: xy-mqtt's JSON objects, or protobuf bytes with MQTT 5 properties.
#pragma once

#include <exception>

#include <chrono>
#include <optional>
#include <string>

#include "xymqtt/content_type.h"
#include "xymqtt/message.h"
#include "xymqtt/transport.h"

namespace xymqtt::wire {

inline constexpr const char* content_type_json = ::xymqtt::content_type::json;
inline constexpr const char* content_type_protobuf = ::xymqtt::content_type::protobuf;

/// Longest message id accepted from a peer (invoke, cancel or result): ids are keys of the results and
/// calls tables, and LMDB's keys are at most 511 bytes. The runtime's own ids are 32 bytes.
inline constexpr std::size_t max_message_id = 256;
inline bool valid_message_id(const std::string& id) { return !id.empty() && id.size() <= max_message_id; }

/// The four topics of a command.

inline std::string invoke_topic(const std::string& command) { return command + "/invoke"; }
inline std::string resolve_topic(const std::string& command) { return command + "/resolve"; }
inline std::string reject_topic(const std::string& command) { return command + "/reject"; }
inline std::string cancel_topic(const std::string& command) { return command + "/cancel"; }

/// The checks of command_register, the same for every transport: a valid command topic, a share group
/// that is a single topic level, a concurrency within 1 to max_concurrency.
/// @throw invalid_topic, configuration_error
void validate_command(const std::string& command, const command_options& opts);

/// A payload and its properties, ready to publish.
struct outgoing {
    std::string payload;
    message_properties props;
};

/// A command handler's outcome on the wire: the resolve of `result`, or the reject that `error` stands for
/// (command_error: its status, message and details; parse_error: 400; anything else: 500).
/// @param rejected set to whether it is a reject
outgoing encode_outcome(wire_format f, const std::string& message_id, std::exception_ptr error,
                        const std::string& result, bool& rejected);

/// A decoded invoke. `body` as invocation::body documents.
struct decoded_invoke {
    std::string message_id;
    wire_format format = wire_format::json;
    std::string body;
};

/// parse_error that still knows the call's message id (so the server can reject with 400).
class undecodable_invoke : public std::runtime_error {
public:
    undecodable_invoke(const std::string& what, std::string id, wire_format f)
        : std::runtime_error(what), message_id(std::move(id)), format(f) {}
    std::string message_id;  ///< Empty if none could be recovered.
    wire_format format;
};

/// @return binary if the content type says protobuf, JSON otherwise (xy-mqtt sets none).
wire_format detect_format(const message_properties& props);

outgoing encode_invoke(wire_format f, const std::string& message_id, const std::string& body,
                       std::optional<std::chrono::seconds> expiry);
/// @throw undecodable_invoke
decoded_invoke decode_invoke(const std::string& payload, const message_properties& props);

outgoing encode_resolve(wire_format f, const std::string& message_id, const std::string& body);
outgoing encode_reject(wire_format f, const std::string& message_id, int status, const std::string& message,
                       const std::string& body);
outgoing encode_cancel(wire_format f, const std::string& message_id);

/// @return the message id of a cancel or result, or nothing if it carries none.
std::optional<std::string> decode_message_id(const std::string& payload, const message_properties& props);

/// Decodes a resolve (`rejected` false) or reject. @throw parse_error
command_result decode_result(const std::string& command, bool rejected, const std::string& payload,
                             const message_properties& props);

}  // namespace xymqtt::wire
