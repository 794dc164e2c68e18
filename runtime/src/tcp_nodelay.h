// TCP_NODELAY for Paho's connection. Paho C 1.3 never sets it, so each small QoS 2 packet waits for the
// peer's delayed ACK (~40 ms): request/response latency goes from sub-millisecond to ~88 ms.
#pragma once

#include <string>

namespace xymqtt::detail {

/// Sets TCP_NODELAY on every TCP socket of this process connected to `host`:`port`.
/// Paho offers no access to its socket, so the sockets are found through /proc/self/fd and matched by
/// peer address; sockets of other connections are left alone.
/// @return the number of sockets set (0 if none was found).
int set_tcp_nodelay_to_peer(const std::string& host, int port);

/// Shuts down (both directions) every TCP socket of this process connected to `host`:`port`, so that
/// nothing more, such as an acknowledgement for a message that could not be stored, can leave.
/// @return the number of sockets shut down.
int shutdown_sockets_to_peer(const std::string& host, int port);

/// Splits an MQTT server URI ("tcp://host:port", "ssl://[::1]:8883", "mqtt://host") into host and port.
/// @return false if it is not of that form.
bool parse_server_uri(const std::string& uri, std::string& scheme, std::string& host, int& port);

}  // namespace xymqtt::detail
