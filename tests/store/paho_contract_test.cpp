// The Paho C behaviour that the runtime's persistence adapter (runtime/src/session/paho_persistence.h) relies on,
// pinned against a scripted MQTT peer on loopback: a broker cannot be made to send these exact packet
// sequences (a DUP resend within a connection, a PUBREL for an unknown id), so this peer does. These tests
// fail if a Paho upgrade changes any of it:
//  - MQTT 5, inbound QoS 2: Paho writes `r5-<id>` (with the DUP bit as received) before the message
//    callback, sends PUBREC only after the callback returns, delivers nothing more under an id it holds,
//    removes `r5-<id>` at PUBREL, answers a PUBREL for an unknown id with PUBCOMP, and restores no inbound
//    flow that keys() does not list: a new client delivers the broker's resend;
//  - MQTT 5, outbound QoS 2: a new client restores `s5-<id>`, sends it again with DUP set under the same
//    id once the session is present, and removes it at PUBCOMP;
//  - MQTT 3.1.1, inbound QoS 2: Paho delivers at PUBREL and removes `r-<id>` after the callback.
// The packet id of a received message is reachable only through c_struct(), compiled in for Paho's own
// unit tests (as in runtime/src/session/session.cpp).
#define UNIT_TESTS 1
#include <mqtt/message.h>
#undef UNIT_TESTS

#include <arpa/inet.h>
#include <mqtt/async_client.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "session/paho_persistence.h"
#include "store/session_records_file.h"
#include "store_test_util.h"

using xymqtt::detail::paho_persistence;
using xymqtt::detail::session_records_file;
using store_test::temp_dir;
using namespace std::chrono_literals;

namespace {

// One MQTT connection at a time, scripted by the test: accept, then read and write whole packets.
class scripted_peer {
public:
    scripted_peer() {
        listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_, 4) != 0 ||
            ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            throw std::runtime_error("scripted peer: cannot listen");
        port_ = ntohs(a.sin_port);
    }
    ~scripted_peer() {
        drop();
        ::close(listen_);
    }
    std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

    /// Accepts the next connection, reads its CONNECT and answers CONNACK.
    void accept(bool session_present, int version) {
        drop();
        pollfd p{listen_, POLLIN, 0};
        if (::poll(&p, 1, 10000) != 1) throw std::runtime_error("scripted peer: no connection");
        conn_ = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
        version_ = version;
        const auto connect = read_packet();
        REQUIRE((connect[0] & 0xf0) == 0x10);
        std::string ack{char(0x20), 0, char(session_present ? 1 : 0), 0};
        if (version == 5) ack.push_back(0);  // no properties
        ack[1] = char(ack.size() - 2);
        send(ack);
    }
    /// Closes the connection (as a broker that goes away does).
    void drop() {
        if (conn_ >= 0) ::close(conn_);
        conn_ = -1;
    }

    void publish_qos2(int id, const std::string& topic, const std::string& payload, bool dup) {
        std::string body = u16(int(topic.size())) + topic + u16(id);
        if (version_ == 5) body.push_back(0);
        body += payload;
        send(packet(char(0x34 | (dup ? 0x08 : 0)), body));
    }
    void pubrel(int id) { send(packet(char(0x62), ack_body(id))); }
    void pubrec(int id) { send(packet(char(0x50), ack_body(id))); }
    void pubcomp(int id) { send(packet(char(0x70), ack_body(id))); }

    /// Reads the next packet: @return its type (high nibble) and packet id.
    std::pair<int, int> expect_ack() {
        const auto p = read_packet();
        return {static_cast<unsigned char>(p[0]) >> 4, packet_id(p, 0)};
    }
    /// Reads the next packet, a PUBLISH: @return its packet id and DUP flag.
    std::pair<int, bool> expect_publish() {
        const auto p = read_packet();
        REQUIRE((static_cast<unsigned char>(p[0]) >> 4) == 3);
        const std::size_t at = header_length(p);
        const int topic_len = (static_cast<unsigned char>(p[at]) << 8) | static_cast<unsigned char>(p[at + 1]);
        return {packet_id(p, std::size_t(2 + topic_len)), (p[0] & 0x08) != 0};
    }
    /// @return true if a packet arrives within `wait` (for checks that something is NOT sent yet).
    bool readable(std::chrono::milliseconds wait) {
        pollfd p{conn_, POLLIN, 0};
        return ::poll(&p, 1, int(wait.count())) == 1;
    }

private:
    static std::string u16(int v) { return {char(v >> 8), char(v & 0xff)}; }
    std::string ack_body(int id) const { return version_ == 5 ? u16(id) + std::string(1, '\0') : u16(id); }
    static std::string packet(char type, const std::string& body) {
        std::string out(1, type);
        std::size_t n = body.size();
        do {
            char b = char(n % 128);
            n /= 128;
            out.push_back(n ? char(b | 0x80) : b);
        } while (n);
        return out + body;
    }
    static std::size_t header_length(const std::string& p) {
        std::size_t at = 1;
        while (static_cast<unsigned char>(p[at]) & 0x80) ++at;
        return at + 1;
    }
    static int packet_id(const std::string& p, std::size_t offset) {
        const std::size_t at = header_length(p) + offset;
        return (static_cast<unsigned char>(p[at]) << 8) | static_cast<unsigned char>(p[at + 1]);
    }
    void send(const std::string& s) {
        REQUIRE(::send(conn_, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size()));
    }
    char read_byte() {
        pollfd p{conn_, POLLIN, 0};
        if (::poll(&p, 1, 10000) != 1) throw std::runtime_error("scripted peer: nothing received");
        char c = 0;
        if (::recv(conn_, &c, 1, 0) != 1) throw std::runtime_error("scripted peer: connection closed");
        return c;
    }
    std::string read_packet() {
        std::string p(1, read_byte());
        std::size_t len = 0, shift = 0;
        char b = 0;
        do {
            b = read_byte();
            p.push_back(b);
            len |= std::size_t(b & 0x7f) << shift;
            shift += 7;
        } while (b & 0x80);
        for (std::size_t i = 0; i < len; ++i) p.push_back(read_byte());
        return p;
    }

    int listen_ = -1;
    int conn_ = -1;
    int version_ = 5;
    std::uint16_t port_ = 0;
};

// What the persistence saw and what the application was given, in order.
struct trace {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::string> events;
    void add(const std::string& e) {
        std::lock_guard<std::mutex> lk(mu);
        events.push_back(e);
        cv.notify_all();
    }
    std::vector<std::string> snapshot() {
        std::lock_guard<std::mutex> lk(mu);
        return events;
    }
    bool wait_for(const std::string& e) {
        std::unique_lock<std::mutex> lk(mu);
        return cv.wait_for(lk, 10s, [&] {
            for (const auto& x : events)
                if (x == e) return true;
            return false;
        });
    }
};

// The runtime's adapter, with each put and remove of an inbound or outbound record traced.
class traced_persistence : public paho_persistence {
public:
    traced_persistence(session_records_file& records, trace& t) : paho_persistence(records, false, nullptr), t_(t) {}
    void put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) override {
        const bool dup = !bufs.empty() && bufs[0].size() > 0 && (bufs[0].data()[0] & 0x08);
        if (key.rfind("r", 0) == 0 || key.rfind("s", 0) == 0) t_.add("put " + key + (dup ? " dup" : ""));
        paho_persistence::put(key, bufs);
    }
    void remove(const mqtt::string& key) override {
        paho_persistence::remove(key);
        if (key.rfind("r", 0) == 0 || key.rfind("s5-", 0) == 0 || key.rfind("s-", 0) == 0) t_.add("remove " + key);
    }

private:
    trace& t_;
};

// A records file, the traced adapter over it, and the scripted peer; clients connect through connected().
struct contract {
    temp_dir tmp;
    session_records_file records{tmp.store_dir(), false};
    trace t;
    traced_persistence p{records, t};
    scripted_peer peer;

    /// A new Paho client over the same persistence (as the runtime makes one per connection), connected to
    /// the peer, which answers with `session_present`.
    std::shared_ptr<mqtt::async_client> connected(int version, bool session_present,
                                                  std::function<void(mqtt::const_message_ptr)> on_message = {}) {
        mqtt::create_options co(version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
        auto c = std::make_shared<mqtt::async_client>(peer.uri(), "contract", co, &p);
        if (on_message) c->set_message_callback(std::move(on_message));
        auto b = mqtt::connect_options_builder().mqtt_version(version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
        if (version == 5) {
            b.clean_start(false);
            b.properties({{mqtt::property::SESSION_EXPIRY_INTERVAL, 3600}});
        } else {
            b.clean_session(false);
        }
        auto tok = c->connect(b.finalize());
        peer.accept(session_present, version);
        REQUIRE(tok->wait_for(10s));
        return c;
    }
};

bool before(const std::vector<std::string>& ev, const std::string& a, const std::string& b) {
    std::size_t ia = ev.size(), ib = ev.size();
    for (std::size_t i = 0; i < ev.size(); ++i) {
        if (ev[i] == a && ia == ev.size()) ia = i;
        if (ev[i] == b && ib == ev.size()) ib = i;
    }
    return ia < ib && ib < ev.size();
}

}  // namespace

TEST_CASE("Paho contract: MQTT 5 inbound QoS 2, record before callback, PUBREC after, resends and PUBREL",
          "[store][paho][contract]") {
    contract k;
    auto& [tmp, records, t, p, peer] = k;
    std::atomic<int> delivered{0};
    scripted_peer* peer_ptr = &peer;
    std::atomic<bool> pubrec_during_callback{false};
    auto c = k.connected(5, false, [&](mqtt::const_message_ptr m) {
        ++delivered;
        t.add("callback " + std::to_string(m->c_struct().msgid) + " " + m->get_payload_str());
        // Paho must not have acknowledged yet: the commit happens here.
        if (delivered.load() == 1) pubrec_during_callback = peer_ptr->readable(300ms);
        p.release_inbound(m->c_struct().msgid);  // as the client does after the inbox commit
    });

    peer.publish_qos2(7, "t", "m", false);
    CHECK(peer.expect_ack() == std::make_pair(5, 7));  // PUBREC
    CHECK_FALSE(pubrec_during_callback);
    CHECK(before(t.snapshot(), "put r5-7", "callback 7 m"));

    peer.publish_qos2(7, "t", "m", true);  // a resend within the connection: not delivered again
    CHECK(peer.expect_ack() == std::make_pair(5, 7));
    peer.pubrel(7);
    CHECK(peer.expect_ack() == std::make_pair(7, 7));  // PUBCOMP
    CHECK(delivered == 1);
    CHECK(t.wait_for("put r5-7 dup"));
    CHECK(t.wait_for("remove r5-7"));
    CHECK_FALSE(records.get("r5-7"));

    peer.pubrel(99);  // a flow this client does not know (finished before a reconnect)
    CHECK(peer.expect_ack() == std::make_pair(7, 99));

    // A flow committed, then the connection breaks before PUBREL: a new client restores nothing inbound
    // and delivers the broker's resend, which the persistence recognises.
    peer.publish_qos2(8, "t", "n", false);
    CHECK(peer.expect_ack() == std::make_pair(5, 8));
    REQUIRE(records.get("r5-8"));
    peer.drop();
    p.new_connection();
    std::atomic<bool> resend_recognised{false};
    auto c2 = k.connected(5, true, [&](mqtt::const_message_ptr m) {
        ++delivered;
        resend_recognised = p.take_resend(m->c_struct().msgid, m->get_topic(), m->get_payload_str());
    });
    peer.publish_qos2(8, "t", "n", true);
    CHECK(peer.expect_ack() == std::make_pair(5, 8));
    CHECK(delivered == 3);  // 7, 8, and the resend of 8
    CHECK(resend_recognised);
    peer.pubrel(8);
    CHECK(peer.expect_ack() == std::make_pair(7, 8));
    CHECK_FALSE(records.get("r5-8"));
    c2->disconnect(0)->wait_for(5s);
}

TEST_CASE("Paho contract: MQTT 5 outbound QoS 2 is restored and sent again with DUP under its own id",
          "[store][paho][contract]") {
    contract k;
    auto& [tmp, records, t, p, peer] = k;
    int id = 0;
    {
        auto c = k.connected(5, false);
        auto m = mqtt::make_message("t", "out", 2, false);
        mqtt::properties props;  // the properties the outbox sends, which the record check must read past
        props.add({mqtt::property::CONTENT_TYPE, "text/plain"});
        props.add({mqtt::property::MESSAGE_EXPIRY_INTERVAL, 60});
        props.add({mqtt::property::USER_PROPERTY, "k", "v"});
        props.add({mqtt::property::CORRELATION_DATA, mqtt::binary("c")});
        props.add({mqtt::property::RESPONSE_TOPIC, "r"});
        m->set_properties(props);
        c->publish(m);
        const auto [pid, dup] = peer.expect_publish();
        id = pid;
        CHECK_FALSE(dup);
        CHECK(records.get("s5-" + std::to_string(id)));
        CHECK(p.carries(id, "t", "out"));  // Paho's record is read as the publish it is
        CHECK_FALSE(p.carries(id, "t", "other"));
        CHECK_FALSE(p.carries(id + 1, "t", "out"));
        p.map_packet(id, 42);  // as the client does once Paho took the publish
        peer.drop();           // no PUBREC: the flow is open
    }
    std::atomic<int> completed{-1};
    p.on_complete([&](int done) { completed = done; });
    auto c = k.connected(5, true);
    // The new client's restore kept the adapter's mapping (it deletes records it cannot read as packets).
    CHECK(p.resumable() == std::map<int, std::uint64_t>{{id, 42}});
    const auto [again, dup] = peer.expect_publish();
    CHECK(again == id);
    CHECK(dup);
    peer.pubrec(id);
    CHECK(peer.expect_ack() == std::make_pair(6, id));  // PUBREL
    peer.pubcomp(id);
    CHECK(t.wait_for("remove s5-" + std::to_string(id)));
    CHECK(completed == id);
    CHECK_FALSE(records.get("s5-" + std::to_string(id)));
    c->disconnect(0)->wait_for(5s);
}

TEST_CASE("Paho contract: MQTT 3.1.1 inbound QoS 2 is delivered at PUBREL and its record removed after",
          "[store][paho][contract]") {
    contract k;
    auto& [tmp, records, t, p, peer] = k;
    std::atomic<int> delivered{0};
    auto c = k.connected(4, false, [&](mqtt::const_message_ptr m) {
        ++delivered;
        t.add("callback " + std::to_string(m->c_struct().msgid) + " " + m->get_payload_str());
    });
    peer.publish_qos2(3, "t", "m", false);
    CHECK(peer.expect_ack() == std::make_pair(5, 3));  // PUBREC, before any delivery
    CHECK(delivered == 0);
    CHECK(records.get("r-3"));
    peer.pubrel(3);
    CHECK(peer.expect_ack() == std::make_pair(7, 3));  // PUBCOMP
    CHECK(t.wait_for("remove r-3"));
    CHECK(delivered == 1);
    CHECK(before(t.snapshot(), "callback 3 m", "remove r-3"));
    c->disconnect(0)->wait_for(5s);
}
