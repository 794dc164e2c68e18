// Plain TCP sockets on 127.0.0.1 for the tests of the runtime's socket code: a listening socket standing in
// for a broker's port, and connections to a port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>

namespace xymqtt::test {

/// @return a socket connected to 127.0.0.1:`port`.
inline int connect_loopback(int port) {
    const int c = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    REQUIRE(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    return c;
}

/// A listening socket on 127.0.0.1, on a port of the system's choice; closed when it goes.
struct listener {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = 0;
    listener() {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
        REQUIRE(listen(fd, 16) == 0);
        socklen_t len = sizeof(a);
        REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port = ntohs(a.sin_port);
    }
    ~listener() { close(fd); }
    listener(const listener&) = delete;
    listener& operator=(const listener&) = delete;
    int connect_one() const { return connect_loopback(port); }
};

}  // namespace xymqtt::test
