/// @file protobuf_codec.h
/// Protocol Buffers messages as xymqtt payloads: JSON or protobuf bytes, as a wire_format says.
///
/// Generated stubs encode and decode every request, result, reject details and event with these
/// functions; they are public so that hand-written code can do the same. Part of the library
/// `xymqtt::protobuf` (the core `xymqtt::xymqtt` does not depend on protobuf).
#pragma once

#include <exception>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include <google/protobuf/message.h>

#include "xymqtt/content_type.h"
#include "xymqtt/message.h"
#include "xymqtt/transport.h"

/// Protocol Buffers messages as payloads (library `xymqtt::protobuf`).
namespace xymqtt::protobuf {

/// Encodes a message in the given format.
/// @param message the message to encode.
/// @param format json: JSON with lowerCamelCase field names and every primitive field printed, even
///        at its default value; binary: the protobuf bytes.
/// @return the payload.
/// @throw xymqtt::error if the message cannot be encoded (e.g. required fields missing).
std::string encode(const google::protobuf::Message& message, wire_format format);

/// Decodes a payload into `message`. JSON fields the message does not know (such as `messageId`,
/// merged into command payloads by the wire protocol) are ignored.
/// @param payload the payload, as encode() makes it.
/// @param format the payload's encoding.
/// @param message the message to fill; what it held before is replaced.
/// @throw xymqtt::parse_error if the payload is not a valid encoding of the message.
void decode(const std::string& payload, wire_format format, google::protobuf::Message* message);

/// Options of an event publish in the given format: the MQTT 5 content type names the encoding
/// (content_type::json or content_type::protobuf), so subscribers can decode without knowing it.
/// @param format the payload's encoding.
/// @return publish options with `props.content_type` set.
publish_options event_options(wire_format format);

/// The encoding of a delivered event, read from its MQTT 5 content type.
/// @param delivery the delivered message.
/// @param fallback the format assumed when the content type is neither content_type::json nor
///        content_type::protobuf (e.g. under MQTT 3.1.1, which carries no properties).
/// @return json or binary as the content type says, else `fallback`.
wire_format event_format(const message& delivery, wire_format fallback);

/// A call_async completion that fulfils `promise` as the outcome arrives: with `Outcome::decode(result)`,
/// or with the error (timeout_error, client_closed, broker_error, or decode's parse_error). Generated
/// stubs use it, so that their typed outcome is a plain std::future that `wait_for` reports ready.
/// @tparam Outcome a type with a static `Outcome decode(const command_result&)`.
/// @param promise shared with the future the caller holds.
/// @return the completion to pass to transport::call_async.
template <class Outcome>
call_completion fulfil(std::shared_ptr<std::promise<Outcome>> promise) {
    return [promise = std::move(promise)](std::exception_ptr error, command_result result) {
        try {
            if (error) std::rethrow_exception(error);
            promise->set_value(Outcome::decode(result));
        } catch (...) {
            promise->set_exception(std::current_exception());
        }
    };
}

}  // namespace xymqtt::protobuf
