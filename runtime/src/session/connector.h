// One connect to the broker through Paho: the servers to try, the CONNECT as the options make it (protocol
// version, no clean start, session expiry, receive maximum, credentials, TLS), and what the CONNACK grants.
//
// Guarantees:
//  - Every CONNECT asks to keep the session (no clean start; MQTT 5: the Session Expiry Interval of the
//    options) and never lets Paho reconnect by itself: the session sees "session present" every time.
//  - A URI that is not one, or plain MQTT with TLS settings (which would send credentials in clear), is a
//    configuration_error at construction.
//  - A failed connect says why in words: Paho's stage, "not authorized" for refused credentials, OpenSSL's
//    reason for a refused handshake.
//  - A broker that lacks a capability the runtime needs (broker_capabilities.h) is reported in the CONNACK's
//    outcome (`lacks`), never used silently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xymqtt/client_options.h"

namespace mqtt {
class async_client;
class connect_options_builder;
class exception;
}  // namespace mqtt

namespace xymqtt::detail {

class ca_bundle;

class connector {
public:
    struct server {
        std::string uri, host;
        int port = 0;
        bool tls = false;
    };
    /// What a CONNACK granted.
    struct connack {
        bool session_present = false;
        std::size_t receive_maximum = 0;   ///< MQTT 5: 65535 unless it says less; 3.1.1: the configured figure
        std::uint32_t max_packet_size = 0;  ///< 0: none
        bool subscription_ids = false;      ///< the broker takes MQTT 5 subscription identifiers
        std::string lacks;                  ///< capabilities the runtime needs and the broker lacks ("": none)
    };

    /// @return the servers of the options, in order. @throw configuration_error
    static std::vector<server> servers_of(const client_options& opts);

    /// @param opts the client's options (read only, outliving the connector)
    /// @param warn told of capabilities a broker reduces (not fatal)
    /// @throw configuration_error (servers_of; a CA directory that cannot be read)
    connector(const client_options& opts, std::function<void(const std::string&)> warn);
    ~connector();
    connector(const connector&) = delete;
    connector& operator=(const connector&) = delete;

    const std::vector<server>& servers() const { return servers_; }
    /// Connects `cli` and waits for the CONNACK.
    /// @param shared whether the client subscribes shared filters (the broker must offer them)
    /// @throw mqtt::exception if the connect fails or times out (why_failed says why in words)
    connack connect(mqtt::async_client& cli, bool shared);
    /// @return why the connect failed, in words.
    std::string why_failed(const mqtt::exception& e);

private:
    std::string check_broker(const void* connack_properties, bool shared) const;

    const client_options& opts_;
    std::function<void(const std::string&)> warn_;
    std::vector<server> servers_;
    std::unique_ptr<ca_bundle> ca_bundle_;  // tls_options::ca_path as one file, for Paho
    std::unique_ptr<mqtt::connect_options_builder> builder_;
    std::mutex tls_error_mu_;  // Paho calls the TLS error handler on its own threads
    std::string tls_error_;    // OpenSSL's reason for the last refused handshake
};

}  // namespace xymqtt::detail
