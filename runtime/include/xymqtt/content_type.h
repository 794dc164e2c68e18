/// @file content_type.h
/// The MQTT 5 content types that name the encoding of a payload (see wire_format).
#pragma once

/// The MQTT 5 content types of xymqtt's payloads.
namespace xymqtt::content_type {

/// Content type of JSON payloads (wire_format::json).
inline constexpr const char* json = "application/json";
/// Content type of Protocol Buffers payloads (wire_format::binary).
inline constexpr const char* protobuf = "application/x-protobuf";

}  // namespace xymqtt::content_type
