/// @file exception.h
/// The errors xymqtt raises.
///
/// Misuse and configuration errors are thrown synchronously, before anything is stored or sent.
/// Outcomes that arrive later (a broker refusing a publish, a call timing out) fail the future that
/// stands for them with one of these types.
#pragma once

#include <stdexcept>
#include <string>

namespace xymqtt {

/// Base of every xymqtt error. Thrown as itself for an empty handler given to subscribe,
/// subscribe_results or command_register, and by protobuf::encode.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Invalid options or arguments: empty client id, unsupported MQTT version, a store path that cannot be
/// used or a store another process holds, a bad XYMQTT_LOG_LEVEL.
class configuration_error : public error {
public:
    using error::error;
};

/// A topic name, topic filter or topic token that MQTT (or xymqtt) does not allow.
class invalid_topic : public error {
public:
    using error::error;
};

/// An MQTT 5 property that MQTT does not allow: a string property (content type, response topic, user
/// property) that is not valid UTF-8 or holds U+0000, a response topic with wildcards, a value over
/// 65,535 bytes. A broker drops the connection of a client that sends one.
class invalid_property : public error {
public:
    using error::error;
};

/// A message larger than MQTT allows, or than the broker announced it takes (MQTT 5 Maximum Packet
/// Size, in its CONNACK). A broker drops the connection of a client that sends one.
class message_too_large : public error {
public:
    using error::error;
};

/// The store failed: disk full, map full that could not grow, permissions, corruption.
/// Nothing was acknowledged for the operation that raised it.
class storage_error : public error {
public:
    /// @param what the message what() returns.
    /// @param code the underlying engine's error code (LMDB or SQLite) or errno, 0 if none.
    explicit storage_error(const std::string& what, int code = 0) : error(what), code_(code) {}
    /// @return the underlying engine's error code (LMDB or SQLite) or errno, 0 if none.
    int code() const noexcept { return code_; }

private:
    int code_;
};

/// The disk or the store's map is full and could not grow. Nothing of the failed write is stored;
/// the operation can be retried once space returns.
class storage_full : public storage_error {
public:
    using storage_error::storage_error;
};

/// The broker refused an operation with an MQTT reason code (MQTT 5) or return code.
class broker_error : public error {
public:
    /// @param what the message what() returns.
    /// @param reason_code the MQTT reason code (MQTT 5) or return code (MQTT 3.1.1).
    broker_error(const std::string& what, int reason_code) : error(what), reason_code_(reason_code) {}
    /// @return the MQTT reason code, e.g. 0x87 (not authorized).
    int reason_code() const noexcept { return reason_code_; }

private:
    int reason_code_;
};

/// A payload that cannot be decoded. Thrown by a handler (or a generated decoder) to say the message
/// is poison: it goes to dead letters at once instead of being retried.
class parse_error : public error {
public:
    using error::error;
};

/// `command_register` of a command that is already registered on this client.
class command_already_registered : public error {
public:
    using error::error;
};

/// `call` without local subscriptions to both `<command>/resolve` and `<command>/reject`:
/// results may arrive while the caller is offline and would have nowhere to go.
class call_with_no_subscription : public error {
public:
    using error::error;
};

/// An awaited outcome did not arrive in time.
class timeout_error : public error {
public:
    using error::error;
};

/// The client was closed while the operation was pending.
class client_closed : public error {
public:
    using error::error;
};

/// Thrown by a command handler to reject a call with a status and message of its choice.
/// Any other exception rejects with status 500 and the exception's message.
class command_error : public error {
public:
    /// @param status HTTP-like status published in the reject (e.g. 400, 404, 409).
    /// @param message human-readable reason published in the reject.
    /// @param body optional encoded reject details: a JSON object (JSON format, merged into the
    ///        reject payload) or the bytes of the schema's reject message (binary format).
    command_error(int status, const std::string& message, std::string body = {})
        : error(message), status_(status), body_(std::move(body)) {}
    /// @return the status published in the reject.
    int status() const noexcept { return status_; }
    /// @return the encoded reject details; empty if none.
    const std::string& body() const noexcept { return body_; }

private:
    int status_;
    std::string body_;
};

}  // namespace xymqtt
