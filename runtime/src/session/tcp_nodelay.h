// TCP_NODELAY for Paho's connection. Paho C 1.3 never sets it, so each small QoS 2 packet waits for the
// peer's delayed ACK (~40 ms): request/response latency goes from sub-millisecond to ~88 ms.
#pragma once

#include <sys/types.h>

#include <string>

namespace xymqtt::detail {

/// This client's own socket to the broker, for settings that must not touch another connection.
/// Paho offers no access to its socket: claim() looks through /proc/self/fd for sockets connected to
/// the broker and takes the one that no other live claim in this process holds. It keeps a duplicate of
/// the descriptor, so the socket it names cannot change when Paho closes its descriptor and the number is
/// reused (Paho shuts its socket down before closing it, so the duplicate does not keep the connection up).
class peer_socket {
public:
    /// @return the claim, or an empty one when no socket to `host`:`port` is unclaimed, or several are
    ///         (connections being made at the same time, or not made by this runtime): then which one is
    ///         this client's cannot be told.
    static peer_socket claim(const std::string& host, int port);

    peer_socket() = default;
    peer_socket(peer_socket&& o) noexcept;
    peer_socket& operator=(peer_socket&& o) noexcept;
    peer_socket(const peer_socket&) = delete;
    peer_socket& operator=(const peer_socket&) = delete;
    ~peer_socket();  ///< Closes the duplicate and releases the claim.

    explicit operator bool() const { return fd_ >= 0; }
    /// @return a second handle on the same claim (the claim ends when the last handle goes).
    peer_socket share() const;
    /// @return false if the socket refused (e.g. it is closed).
    bool set_nodelay(bool on) const;
    /// Shuts the connection down in both directions: nothing more leaves on it, and Paho sees it lost.
    /// @return false if there is no socket or it refused.
    bool shutdown() const;

private:
    void release() noexcept;
    int fd_ = -1;
    ino_t inode_ = 0;
};

/// Sets TCP_NODELAY on every TCP socket of this process connected to `host`:`port`.
/// Paho offers no access to its socket, so the sockets are found through /proc/self/fd and matched by
/// peer address; sockets of other connections are left alone.
/// @return the number of sockets set (0 if none was found).
int set_tcp_nodelay_to_peer(const std::string& host, int port);

/// @return whether a TCP socket of this process connected to `host`:`port` has local port `local_port`:
///         whether the other end of a connection accepted on `host`:`port` is in this process.
bool has_socket_to_peer_from(const std::string& host, int port, int local_port);

/// Shuts down (both directions) every TCP socket of this process connected to `host`:`port` that no
/// peer_socket claims, so that nothing more, such as an acknowledgement for a message that could not be
/// stored, can leave. For a connection whose socket has not been claimed yet: the connections of other
/// clients that claimed theirs are left alone.
/// @return the number of sockets shut down.
int shutdown_unclaimed_sockets_to_peer(const std::string& host, int port);

/// Splits an MQTT server URI ("tcp://host:port", "ssl://[::1]:8883", "mqtt://host") into scheme, host
/// and port: RFC 3986 syntax (liburiparser), userinfo dropped, IP-literal brackets stripped (an IPv6
/// zone, "[fe80::1%eth0]", kept on the host), port 8883 by default for ssl, mqtts and wss, else 1883.
/// @return false if it is not of that form (no "scheme://", no host, a port out of 1..65535, bad syntax).
bool parse_server_uri(const std::string& uri, std::string& scheme, std::string& host, int& port);

}  // namespace xymqtt::detail
