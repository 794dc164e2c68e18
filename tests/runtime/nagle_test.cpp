// The adaptive Nagle pieces on real loopback TCP sockets: claiming this client's own socket among the
// process's sockets to the broker, and the governor that lifts TCP_NODELAY only while messages stream.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "nagle_governor.h"
#include "support/eventually.h"
#include "tcp_nodelay.h"

using namespace std::chrono_literals;
using xymqtt::detail::nagle_governor;
using xymqtt::detail::peer_socket;
using xymqtt::test::eventually;

namespace {

// A listening socket on 127.0.0.1 standing in for the broker's port, and connections to it.
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
    int connect_one() const {
        const int c = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        REQUIRE(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
        return c;
    }
};

int nodelay_of(int fd) {
    int v = -1;
    socklen_t len = sizeof(v);
    REQUIRE(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0);
    return v ? 1 : 0;
}

}  // namespace

TEST_CASE("a client claims the one unclaimed socket to the broker, and none when it cannot tell which", "[nagle]") {
    listener broker;
    const int a = broker.connect_one();
    auto first = peer_socket::claim("127.0.0.1", broker.port);
    REQUIRE(first);
    REQUIRE(nodelay_of(a) == 0);
    REQUIRE(first.set_nodelay(true));
    CHECK(nodelay_of(a) == 1);  // the claim is that socket
    CHECK_FALSE(peer_socket::claim("127.0.0.1", broker.port));  // the only socket is claimed

    const int b = broker.connect_one();
    auto second = peer_socket::claim("127.0.0.1", broker.port);
    REQUIRE(second);
    REQUIRE(second.set_nodelay(true));
    CHECK(nodelay_of(b) == 1);

    const int c = broker.connect_one();
    const int d = broker.connect_one();
    CHECK_FALSE(peer_socket::claim("127.0.0.1", broker.port));  // two unclaimed: either could be ours
    CHECK(nodelay_of(c) == 0);
    CHECK(nodelay_of(d) == 0);
    close(d);
    auto third = peer_socket::claim("127.0.0.1", broker.port);
    REQUIRE(third);
    REQUIRE(third.set_nodelay(true));
    CHECK(nodelay_of(c) == 1);

    CHECK_FALSE(peer_socket::claim("127.0.0.1", broker.port + 1 == 65536 ? 1 : broker.port + 1));
    first = peer_socket();  // released: its socket can be claimed again
    REQUIRE(peer_socket::claim("127.0.0.1", broker.port));
    close(a);
    close(b);
    close(c);
}

TEST_CASE("a claim keeps naming its socket after Paho closes it and the descriptor number is reused", "[nagle]") {
    listener broker;
    const int a = broker.connect_one();
    auto own = peer_socket::claim("127.0.0.1", broker.port);
    REQUIRE(own);
    shutdown(a, SHUT_WR);  // as Paho closes a connection
    close(a);
    const int next = broker.connect_one();  // most likely gets a's number
    own.set_nodelay(true);
    CHECK(nodelay_of(next) == 0);  // another connection's socket is not touched
    close(next);
}

TEST_CASE("the governor lifts TCP_NODELAY while messages stream and sets it again when they stop", "[nagle]") {
    listener broker;
    const int a = broker.connect_one();
    nagle_governor governor(nagle_governor::settings{});
    governor.attach(peer_socket::claim("127.0.0.1", broker.port));
    CHECK(nodelay_of(a) == 1);  // attached: TCP_NODELAY until a stream

    SECTION("a stream turns Nagle on, and its end turns it off") {
        std::atomic<bool> streaming{true};
        std::thread producer([&] {
            while (streaming) {
                governor.on_message();
                std::this_thread::sleep_for(20us);  // ~50 messages a millisecond at most
            }
        });
        CHECK(eventually([&] { return governor.nagle() && nodelay_of(a) == 0; }, 5s));
        streaming = false;
        producer.join();
        CHECK(eventually([&] { return !governor.nagle() && nodelay_of(a) == 1; }, 5s));
        CHECK(governor.streams() >= 1);
    }
    SECTION("sparse messages leave TCP_NODELAY on") {
        for (int i = 0; i < 40; ++i) {
            governor.on_message();
            std::this_thread::sleep_for(5ms);  // the input's pace: 1 message in 5 ticks
        }
        CHECK(governor.streams() == 0);
        CHECK(nodelay_of(a) == 1);
    }
    SECTION("detaching in a stream sets TCP_NODELAY again and lets the socket go") {
        for (int i = 0; !governor.nagle() && i < 100000; ++i) {
            governor.on_message();
            if (i % 10 == 9) std::this_thread::sleep_for(100us);
        }
        REQUIRE(governor.nagle());
        REQUIRE(nodelay_of(a) == 0);
        governor.detach();
        CHECK(nodelay_of(a) == 1);
        CHECK_FALSE(governor.nagle());
        for (int i = 0; i < 1000; ++i) governor.on_message();  // no socket: nothing to govern
        CHECK(nodelay_of(a) == 1);
    }
    close(a);
}
