// The adaptive Nagle pieces on real loopback TCP sockets: claiming this client's own socket among the
// process's sockets to the broker (whose host and port come from the server URI), and the governor that
// lifts TCP_NODELAY only while messages stream.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <thread>

#include "loopback_socket.h"
#include "session/nagle_governor.h"
#include "support/eventually.h"
#include "session/tcp_nodelay.h"

using namespace std::chrono_literals;
using xymqtt::detail::nagle_governor;
using xymqtt::detail::parse_server_uri;
using xymqtt::detail::peer_socket;
using xymqtt::test::listener;
using xymqtt::test::eventually;

namespace {

int nodelay_of(int fd) {
    int v = -1;
    socklen_t len = sizeof(v);
    REQUIRE(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0);
    return v ? 1 : 0;
}

}  // namespace

TEST_CASE("the server URI names the broker's host and port, whose sockets are looked for", "[nagle][uri]") {
    struct parsed {
        bool ok = false;
        std::string scheme, host;
        int port = -1;
    };
    const auto parse = [](const std::string& uri) {
        parsed p;
        p.ok = parse_server_uri(uri, p.scheme, p.host, p.port);
        return p;
    };
    const auto check = [&](const std::string& uri, const std::string& scheme, const std::string& host, int port) {
        INFO(uri);
        const auto p = parse(uri);
        REQUIRE(p.ok);
        CHECK(p.scheme == scheme);
        CHECK(p.host == host);
        CHECK(p.port == port);
    };
    SECTION("host and port, with a path or not") {
        check("tcp://127.0.0.1:1883", "tcp", "127.0.0.1", 1883);
        check("mqtt://broker.example.com:18830", "mqtt", "broker.example.com", 18830);
        check("ssl://broker:8884/", "ssl", "broker", 8884);
        check("ws://broker:80/mqtt", "ws", "broker", 80);
        check("tcp://broker:01883", "tcp", "broker", 1883);
        check("tcp://broker:65535", "tcp", "broker", 65535);
    }
    SECTION("no port: the scheme's default") {
        check("tcp://broker", "tcp", "broker", 1883);
        check("mqtt://broker/", "mqtt", "broker", 1883);
        check("ws://broker/mqtt", "ws", "broker", 1883);
        check("ssl://broker", "ssl", "broker", 8883);
        check("mqtts://broker", "mqtts", "broker", 8883);
        check("wss://broker/mqtt", "wss", "broker", 8883);
    }
    SECTION("IPv6 literals without their brackets, a zone kept") {
        check("ssl://[::1]:8883", "ssl", "::1", 8883);
        check("tcp://[::1]", "tcp", "::1", 1883);
        check("mqtts://[2001:db8::17]", "mqtts", "2001:db8::17", 8883);
        check("tcp://[::ffff:127.0.0.1]:1884/", "tcp", "::ffff:127.0.0.1", 1884);
        check("tcp://[fe80::1%eth0]:1883", "tcp", "fe80::1%eth0", 1883);
    }
    SECTION("userinfo is no part of the host") {
        check("tcp://user@broker:1883", "tcp", "broker", 1883);
        check("mqtt://user:secret@broker", "mqtt", "broker", 1883);
        check("ssl://user:secret@[::1]:8884", "ssl", "::1", 8884);
    }
    SECTION("malformed URIs are refused") {
        for (const char* bad : {"not a uri", "broker:1883", "tcp:broker:1883", "//broker:1883", "://broker:1883",
                                "tcp://", "tcp:///mqtt", "tcp://broker:", "tcp://broker:0", "tcp://broker:65536",
                                "tcp://broker:99999999999", "tcp://broker:18x3", "tcp://broker:-1", "tcp://bro ker:1883",
                                "tcp://[::1", "tcp://[::1]x:1883", "tcp://broker:1883:1", "tcp://[fe80::1%]:1883",
                                "tcp://[fe80::1%e th0]:1883"}) {
            INFO(bad);
            CHECK_FALSE(parse(bad).ok);
        }
    }
}

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
