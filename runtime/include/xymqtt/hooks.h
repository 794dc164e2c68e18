/// @file hooks.h
/// Callbacks through which an application watches a client at work.
///
/// Every hook is optional; `client_options::hooks` holds them. They report connections, the packets
/// sent and received, each handler run, retry and dead letter, storage errors nobody else could be told
/// of, and log lines. They run on xymqtt's or Paho's threads, some inside Paho's callbacks while Paho
/// holds its global lock, so a hook must not block for long. An exception a hook throws is caught and
/// logged (one thrown by `on_log` is dropped).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "xymqtt/logging.h"
#include "xymqtt/message.h"

namespace xymqtt {

/// Callbacks, all optional. They run on xymqtt's or Paho's threads and must not block for long;
/// exceptions they throw are caught and logged. Some may run inside Paho's callbacks, where Paho holds
/// its global lock (`on_packet_send` and `on_log`, for example): from hooks, do not call `close`,
/// `subscribe` or `unsubscribe`, which wait for Paho.
struct hooks {
    /// Every successful connection. `session_present` is false when the broker had no session.
    std::function<void(bool session_present)> on_connect;
    /// Every successful connection, before on_connect: the server URI connected to (one of
    /// client_options::server_uris, or client_options::server_uri).
    std::function<void(const std::string& server_uri)> on_server;
    /// A connection after the first one (after a loss).
    std::function<void()> on_reconnect;
    /// Connected with no stored session at the broker (first start, or the broker forgot it);
    /// subscriptions are renewed and the outbox is sent again.
    std::function<void()> on_init;
    /// The connection was lost; the client reconnects by itself.
    std::function<void(const std::string& cause)> on_connection_lost;
    /// A publish was handed to Paho for sending.
    std::function<void(const std::string& topic, const std::string& payload)> on_packet_send;
    /// A publish arrived from the broker (before it is committed).
    std::function<void(const std::string& topic, const std::string& payload)> on_packet_receive;
    /// A handler is about to run for a message (every attempt).
    std::function<void(const message&)> on_message;
    /// A handler threw; the message is retried after `delay`.
    std::function<void(const message&, const std::string& error, std::chrono::milliseconds delay)> on_message_retry;
    /// A message could not be decoded; it went to dead letters.
    std::function<void(const message&, const std::string& error)> on_parse_error;
    /// A message went to dead letters (undecodable, or out of attempts).
    std::function<void(const message&, const std::string& reason)> on_dead_letter;
    /// A storage error that no caller could be told of (e.g. while removing a completed publish).
    std::function<void(const std::string& error)> on_storage_error;
    /// Log lines. Credentials never appear in them. When unset, the client writes them to stderr from
    /// the level log_level_from_env() gives (warnings and errors by default; XYMQTT_LOG_LEVEL=off: none).
    std::function<void(log_level, const std::string&)> on_log;
};

}  // namespace xymqtt
