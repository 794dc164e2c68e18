// The acknowledgement gate (runtime/src/session/ack_gate.h) between a socket in the part of Paho and a
// listening socket in the part of the broker: which bytes pass, which wait, and what a cut drops.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "loopback_socket.h"
#include "session/ack_gate.h"

using namespace std::chrono_literals;
using xymqtt::detail::ack_gate;
using xymqtt::test::connect_loopback;
using xymqtt::test::listener;

namespace {

struct fd_guard {
    int fd = -1;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

void send_all(int fd, const std::string& bytes) {
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size()));
}

// Reads what arrives within `wait` (returns early once `want` bytes came). "" and closed: end of stream.
std::string read_some(int fd, std::size_t want, std::chrono::milliseconds wait, bool* closed = nullptr) {
    std::string got;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (got.size() < want) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, int(left.count())) <= 0) break;
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            if (closed) *closed = true;
            break;
        }
        got.append(buf, std::size_t(n));
    }
    return got;
}

std::string packet(std::uint8_t first, const std::string& body) {
    std::string p(1, char(first));
    p += char(body.size());  // bodies here are under 128 bytes
    return p + body;
}
std::string pubrec(int id) { return packet(0x50, std::string{char(id >> 8), char(id & 0xff)}); }
std::string puback(int id) { return packet(0x40, std::string{char(id >> 8), char(id & 0xff)}); }
std::string pubcomp(int id) { return packet(0x70, std::string{char(id >> 8), char(id & 0xff)}); }
std::string pubrel(int id) { return packet(0x62, std::string{char(id >> 8), char(id & 0xff)}); }
const std::string pingreq = packet(0xc0, "");

// A gate joined to a listener of the test (the broker's part) and a socket of the test (Paho's part).
struct rig {
    listener broker_side;
    fd_guard paho, broker;
    ack_gate gate{[](xymqtt::log_level, const std::string&) {}};
    rig() { join(); }
    void join() {
        gate.prepare("127.0.0.1", broker_side.port, 2000ms);
        const int b = ::accept(broker_side.fd, nullptr, nullptr);
        REQUIRE(b >= 0);
        if (broker.fd >= 0) ::close(broker.fd);
        broker.fd = b;
        if (paho.fd >= 0) ::close(paho.fd);
        paho.fd = connect_loopback(gate.port());
        // Joined once a packet has come through.
        send_all(paho.fd, pingreq);
        REQUIRE(read_some(broker.fd, pingreq.size(), 5s) == pingreq);
    }
};

}  // namespace

TEST_CASE("ack gate: an acknowledgement waits for its release, and what Paho wrote after it waits too", "[ack_gate]") {
    rig r;
    const auto conn = r.gate.hold(7);
    const std::string before = pubrel(3) + pubrec(6);  // not held: an outbound flow's PUBREL, another id
    send_all(r.paho.fd, before + pubrec(7) + pingreq);
    CHECK(read_some(r.broker.fd, before.size(), 5s) == before);
    // Nothing of the rest may come while 7 is held (a bounded wait: what must not happen has no event).
    CHECK(read_some(r.broker.fd, 1, 300ms).empty());
    CHECK(r.gate.held() == 1);
    r.gate.release(conn, 7);
    CHECK(read_some(r.broker.fd, pubrec(7).size() + pingreq.size(), 5s) == pubrec(7) + pingreq);
    CHECK(r.gate.held() == 0);
}

TEST_CASE("ack gate: PUBACK and PUBCOMP are held as PUBREC is, across split writes", "[ack_gate]") {
    rig r;
    const auto conn = r.gate.hold(300);
    r.gate.hold(301);
    const std::string a = puback(300), c = pubcomp(301);
    send_all(r.paho.fd, a.substr(0, 1));  // the type byte alone, then the rest
    send_all(r.paho.fd, a.substr(1, 2));
    send_all(r.paho.fd, a.substr(3) + c);
    CHECK(read_some(r.broker.fd, 1, 300ms).empty());
    r.gate.release(conn, 300);
    CHECK(read_some(r.broker.fd, a.size(), 5s) == a);
    CHECK(read_some(r.broker.fd, 1, 300ms).empty());  // 301 still held
    r.gate.release(conn, 301);
    CHECK(read_some(r.broker.fd, c.size(), 5s) == c);
}

TEST_CASE("ack gate: bytes from the broker pass at once, while an acknowledgement is held", "[ack_gate]") {
    rig r;
    r.gate.hold(9);
    send_all(r.paho.fd, pubrec(9));
    const std::string down = packet(0x34, std::string("\0\x01t\0\x0a", 5) + "payload");
    send_all(r.broker.fd, down);
    CHECK(read_some(r.paho.fd, down.size(), 5s) == down);
}

TEST_CASE("ack gate: a cut ends the connection, and what it held never leaves", "[ack_gate]") {
    rig r;
    const auto conn = r.gate.hold(11);
    send_all(r.paho.fd, pingreq + pubrec(11));
    CHECK(read_some(r.broker.fd, pingreq.size(), 5s) == pingreq);
    r.gate.cut();
    bool broker_closed = false, paho_closed = false;
    CHECK(read_some(r.broker.fd, 64, 5s, &broker_closed).empty());
    CHECK(broker_closed);
    read_some(r.paho.fd, 64, 5s, &paho_closed);
    CHECK(paho_closed);
    r.gate.release(conn, 11);  // too late: the connection is gone
    CHECK(r.gate.held() == 0);
}

TEST_CASE("ack gate: a release for an earlier connection lets nothing of the new one go", "[ack_gate]") {
    rig r;
    const auto first = r.gate.hold(5);
    r.join();  // a new connection: the broker may use packet id 5 again for another message
    const auto second = r.gate.hold(5);
    CHECK(first != second);
    send_all(r.paho.fd, pubrec(5));
    r.gate.release(first, 5);
    CHECK(read_some(r.broker.fd, 1, 300ms).empty());
    r.gate.release(second, 5);
    CHECK(read_some(r.broker.fd, pubrec(5).size(), 5s) == pubrec(5));
}

TEST_CASE("ack gate: Paho closing its socket drops what is held", "[ack_gate]") {
    rig r;
    const auto conn = r.gate.hold(12);
    send_all(r.paho.fd, pubrec(12));
    ::close(r.paho.fd);
    r.paho.fd = -1;
    bool closed = false;
    CHECK(read_some(r.broker.fd, 64, 5s, &closed).empty());
    CHECK(closed);
    r.gate.release(conn, 12);
}

TEST_CASE("ack gate: a connection from another process is closed, and the prepared one stays for this process", "[ack_gate]") {
    listener broker_side;
    ack_gate gate{[](xymqtt::log_level, const std::string&) {}};
    gate.prepare("127.0.0.1", broker_side.port, 2000ms);
    fd_guard broker;
    broker.fd = ::accept(broker_side.fd, nullptr, nullptr);
    REQUIRE(broker.fd >= 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // Another process: its connection must be closed without a byte from the broker's side.
        const int s = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<std::uint16_t>(gate.port()));
        if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) ::_exit(2);
        ::send(s, "\xc0\x00", 2, MSG_NOSIGNAL);
        pollfd p{s, POLLIN, 0};
        char c;
        // Closed with the PINGREQ unread: a reset, or an end of stream.
        const bool closed = ::poll(&p, 1, 5000) == 1 && ::recv(s, &c, 1, 0) <= 0;
        ::_exit(closed ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    fd_guard paho;
    paho.fd = connect_loopback(gate.port());
    send_all(paho.fd, pingreq);
    CHECK(read_some(broker.fd, pingreq.size(), 5s) == pingreq);  // the child's PINGREQ never came
}

TEST_CASE("ack gate: a broker that refuses is reported in words", "[ack_gate]") {
    int port = 0;
    {
        listener l;  // a port that was free a moment ago, closed again
        port = l.port;
    }
    ack_gate gate{[](xymqtt::log_level, const std::string&) {}};
    bool threw = false;
    try {
        gate.prepare("127.0.0.1", port, 2000ms);
    } catch (const std::runtime_error& e) {
        threw = true;
        CHECK(std::string(e.what()).find("refused") != std::string::npos);
    }
    CHECK(threw);
}
