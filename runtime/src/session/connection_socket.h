// The current connection's own socket, which Paho does not expose: found at the CONNACK (tcp_nodelay.h),
// tuned (TCP_NODELAY, adaptive Nagle), and shut down alone when an acknowledgement must not leave on it.
//
//  - cut() never misses the connection: with no socket claimed (a message that came with the CONNACK, or a
//    socket that could not be told apart), it shuts down every socket to the broker that no other client of
//    the process has claimed.
//  - claim() and cut() are one at a time: a cut never finds the socket claimed but not yet recorded.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "session/tcp_nodelay.h"
#include "xymqtt/client_options.h"

namespace xymqtt::detail {

class nagle_governor;

class connection_socket {
public:
    /// @param opts tcp_nodelay and adaptive_nagle (read only, outliving this)
    /// @param log told what could not be tuned
    connection_socket(const client_options& opts, std::function<void(log_level, const std::string&)> log);
    ~connection_socket();

    /// Claims the socket of the connection just made to `host`:`port`, and tunes it.
    /// @param adaptive_nagle false: TCP_NODELAY throughout (a relay in between coalesces already)
    void claim(const std::string& host, int port, bool adaptive_nagle = true);
    /// Lets go of the claim (a new connection is being made, or this one is lost).
    void release();
    /// Shuts the connection to `host`:`port` down. @return whether a socket was found.
    bool cut(const std::string& host, int port);
    /// Adaptive Nagle stops watching the connection's stream.
    void detach_nagle();
    /// A message arrived (adaptive Nagle watches the stream).
    void on_message();
    /// @return the arrival streams adaptive Nagle coalesced.
    std::size_t nagle_streams() const;

private:
    const client_options& opts_;
    std::function<void(log_level, const std::string&)> log_;
    std::unique_ptr<nagle_governor> nagle_;  // with tcp_nodelay and adaptive_nagle
    std::mutex mu_;
    peer_socket own_;
};

}  // namespace xymqtt::detail
