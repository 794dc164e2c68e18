// Security: TLS with a CA and certificates made by the test (openssl) against Mosquitto TLS listeners;
// server certificate and host name verification on by default; mutual TLS; username/password with an
// ACL whose refusals surface as errors; credentials never in logs or in the store.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <mutex>
#include <fstream>

#include <sqlite3.h>

#include "rel_util.h"
#include "support/child_process.h"
#include "support/test_pki.h"
#include "tcp_proxy.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

namespace {

struct tls_broker {
    test_pki certs;
    std::uint16_t good = free_port(), other = free_port(), mutual = free_port();
    std::unique_ptr<broker> b;
    tls_broker() {
        b = std::make_unique<broker>(certs.listener(good, "server", false) + certs.listener(other, "other", false) +
                                     certs.listener(mutual, "server", true));
        REQUIRE(eventually([&] { return port_open(good) && port_open(other) && port_open(mutual); }, 10s));
    }
};

// Tries to connect; returns "" when connected, else the client's last error.
std::string try_connect(client_options o, std::chrono::milliseconds timeout = 10s) {
    client c(std::move(o));
    c.connect();
    // Connected, or the first attempt failed (a refusal is reported at once): no fixed wait.
    eventually([&] { return c.is_connected() || !c.stats().last_error.empty(); }, timeout);
    if (c.is_connected()) return "";
    const auto e = c.stats().last_error;
    return e.empty() ? std::string("not connected") : e;
}

}  // namespace

TEST_CASE("TLS: verified by default, and wrong CA, wrong host name and missing client certificate refused",
          "[security][tls]") {
    tls_broker t;
    temp_dir dir("tls");
    auto opts = [&](const std::string& name, const std::string& host, std::uint16_t port) {
        auto o = options_for(dir, name, "ssl://" + host + ":" + std::to_string(port));
        o.tls = tls_options{};
        o.tls->ca_file = t.certs.path("ca.crt");
        return o;
    };
    CHECK(tls_options{}.verify_host);    // the defaults themselves
    CHECK(tls_options{}.verify_server);

    SECTION("the right CA and host name connect, and messages flow") {
        auto o = opts("ok", "localhost", t.good);
        auto c = connected(o);
        recorder got;
        const std::string topic = "rel/" + o.client_id + "/tls";
        c->subscribe(topic, [&](const message& m) { got.add(m.payload); });
        publish_until_heard(*c, topic, "over-tls", got, 500ms);
    }
    SECTION("a CA that did not sign the server certificate is refused") {
        auto o = opts("wrongca", "localhost", t.good);
        o.tls->ca_file = t.certs.path("wrong-ca.crt");
        const auto e = try_connect(o);
        INFO(e);
        CHECK_FALSE(e.empty());
        CHECK(e.find("certificate verify failed") != std::string::npos);  // OpenSSL's reason, not just "Failure"
        report_line("TLS wrong CA refused: " + e);
    }
    SECTION("no CA file: the system's CAs do not know the test CA") {
        auto o = opts("sysca", "localhost", t.good);
        o.tls->ca_file.clear();
        CHECK_FALSE(try_connect(o).empty());
    }
    SECTION("a certificate for another host name is refused (host name verification is on by default)") {
        const auto e = try_connect(opts("otherhost", "localhost", t.other));
        INFO(e);
        CHECK_FALSE(e.empty());  // Paho checks the host name after the handshake and gives no reason
        report_line("TLS certificate for another host refused: " + e);
        // The same server reached as 127.0.0.1 while its certificate names only "localhost".
        CHECK_FALSE(try_connect(opts("byip", "127.0.0.1", t.good)).empty());
        // Proof that it is the host name check that refuses: turned off, the same connection works.
        auto off = opts("nohostcheck", "localhost", t.other);
        off.tls->verify_host = false;
        CHECK(try_connect(off).empty());
    }
    SECTION("mutual TLS: without a client certificate refused, with one accepted") {
        // TLS 1.3: the client's side of the handshake is done before the server's alert comes, so Paho
        // sees a closed connection and no TLS reason.
        CHECK_FALSE(try_connect(opts("nocert", "localhost", t.mutual)).empty());
        auto o = opts("cert", "localhost", t.mutual);
        o.tls->cert_file = t.certs.path("client.crt");
        o.tls->key_file = t.certs.path("client.key");
        CHECK(try_connect(o).empty());
    }
}

namespace {

// Mosquitto with a password file and an ACL: alice may read and write allowed/#, only read readonly/#.
struct acl_fixture {
    temp_dir dir{"acl"};
    std::string pw = dir / "passwd", acl = dir / "acl";
    std::string secret = "S3cret-pw-" + make_message_id().substr(0, 8);
    std::unique_ptr<broker> b;
    std::mutex log_mu;
    std::string logs;
    std::unique_ptr<client> c;
    std::string ok_topic;
    recorder got;

    client_options opts(const std::string& name) {
        auto o = options_for(dir, name, b->uri());
        o.username = "alice";
        o.password = secret;
        o.hooks.on_log = [this](log_level, const std::string& s) {
            std::lock_guard<std::mutex> lk(log_mu);
            logs += s + "\n";
        };
        return o;
    }
    acl_fixture() {
        write_file(pw, "");
        run_checked({"mosquitto_passwd", "-b", pw, "alice", secret}, dir.path());
        write_file(acl, "user alice\ntopic readwrite allowed/#\ntopic read readonly/#\n");
        ::chmod(pw.c_str(), 0644);
        ::chmod(acl.c_str(), 0644);
        b = std::make_unique<broker>("allow_anonymous false\npassword_file " + pw + "\nacl_file " + acl + "\n");
        c = connected(opts("alice"));
        ok_topic = "allowed/" + c->options().client_id;
        c->subscribe(ok_topic, [this](const message& m) { got.add(m.payload); });
        publish_until_heard(*c, ok_topic, "allowed", got, 500ms);
    }
};

}  // namespace

TEST_CASE("ACL: a denied publish fails with broker_error 0x87, never a silent success", "[security][acl]") {
    acl_fixture f;
    for (const std::string topic : {"denied/x", "readonly/x"}) {
        auto fut = f.c->publish(topic, "nope");
        REQUIRE(fut.wait_for(10s) == std::future_status::ready);
        try {
            fut.get();
            FAIL("ACL-denied publish to " << topic << " reported success");
        } catch (const broker_error& e) {
            CHECK(e.reason_code() == 0x87);
            CHECK(std::string(e.what()).find("not authorized") != std::string::npos);
        }
    }
    f.c->publish(f.ok_topic, "still-flowing").get();  // the stream is not blocked
    CHECK(f.got.wait_size(2, 10s));
}

namespace {

// Outbound publish records ("s5-<id>") in the Paho records of a SQLite store, read beside the client.
int outbound_records(const std::string& store_dir) {
    sqlite3* db = nullptr;
    int n = -1;
    if (sqlite3_open_v2((store_dir + "/paho.sqlite3").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 1000);
        sqlite3_stmt* st = nullptr;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM paho_record WHERE key LIKE 's5-%'", -1, &st, nullptr) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

}  // namespace

TEST_CASE("ACL: a denied publish whose refusal a cut withheld still fails when Paho resumes it", "[security][acl]") {
    // Paho resumes the flow under its packet id on the next connection; the broker refuses it there with a
    // PUBREC that Paho reports for no flow it restored. Taken for a completion, it passed for success.
    acl_fixture f;
    tcp_proxy proxy{f.b->port()};
    auto o = f.opts("alice-proxied");
    o.server_uri = proxy.uri();
    o.store_type = store_kind::sqlite;
    o.reconnect_min = 20ms;
    o.reconnect_max = 200ms;
    auto c = connected(o);
    proxy.stall(true);  // the PUBLISH leaves Paho but reaches no broker
    auto fut = c->publish("denied/x", "nope");
    REQUIRE(eventually([&] { return outbound_records(o.store_dir) == 1; }, 10s));  // Paho's flow is open
    REQUIRE(proxy.cut_all_and_wait());
    proxy.stall(false);
    REQUIRE(fut.wait_for(20s) == std::future_status::ready);
    try {
        fut.get();
        FAIL("ACL-denied publish resumed after a cut reported success");
    } catch (const broker_error& e) {
        CHECK(e.reason_code() == 0x87);
    }
    std::lock_guard<std::mutex> lk(f.log_mu);
    CHECK(f.logs.find("1 flows resumed by Paho") != std::string::npos);  // the path under test was taken
}

TEST_CASE("ACL: an invoke the ACL denies fails the call with broker_error, not a timeout", "[security][acl]") {
    // The refused invoke is dead-lettered by the publish path, which fails the awaited result at once
    // with the broker's reason code.
    acl_fixture f;
    auto p = f.c->call_async("denied/cmd", "x", {}, 5s);
    std::string outcome;
    try {
        p.result.get();
        outcome = "success";
    } catch (const broker_error& e) {
        outcome = "broker_error " + std::to_string(e.reason_code());
    } catch (const timeout_error&) {
        outcome = "timeout";
    }
    INFO("call_async outcome: " << outcome);
    CHECK(outcome == "broker_error 135");
}

TEST_CASE("ACL: a denied invoke rejects a call() at its result handler, and its dead letter replays as a publish",
          "[security][acl]") {
    // call() has no future: without a reject from the runtime its caller would never hear of the refusal.
    acl_fixture f;
    std::mutex mu;
    std::vector<command_result> results;
    std::atomic<int> dead{0};
    auto o = f.opts("caller");
    o.hooks.on_dead_letter = [&](const message&, const std::string&) { ++dead; };
    auto c = connected(o);
    c->subscribe_results("denied/cmd", [&](const command_result& r) {
        std::lock_guard<std::mutex> lk(mu);
        results.push_back(r);
    });
    const auto h = c->call("denied/cmd", "x");
    REQUIRE(eventually([&] {
        std::lock_guard<std::mutex> lk(mu);
        return !results.empty();
    }, 20s));
    {
        std::lock_guard<std::mutex> lk(mu);
        CHECK(results[0].message_id == h.message_id());
        CHECK_FALSE(results[0].ok);
        CHECK(results[0].status == 403);
        CHECK(results[0].message.find("not authorized") != std::string::npos);
    }
    CHECK(dead.load() == 1);
    const auto dls = c->dead_letters();
    REQUIRE(dls.size() == 1);
    CHECK(dls[0].record.outgoing);
    CHECK(dls[0].record.topic == "denied/cmd/invoke");
    // Replayed, it is published again (and refused again by the ACL), not handled as an arrival.
    REQUIRE(c->replay_dead_letter(dls[0].id));
    REQUIRE(eventually([&] { return dead.load() == 2; }, 20s));
    CHECK(c->wait_outbox_empty(10s));
    CHECK(c->stats().dead_letters == 1);
    CHECK(c->wait_inbox_empty(10s));
    std::lock_guard<std::mutex> lk(mu);
    CHECK(results.size() == 1);  // the call was answered once; the second reject names a finished call
}

TEST_CASE("ACL: per-client result topics the caller may not read fail its calls with broker_error, and new calls at once",
          "[security][acl]") {
    // Mosquitto's acl_file never refuses a SUBSCRIBE (it filters deliveries); its dynamic security plugin
    // does. Anonymous clients may use allowed/#, and not xymqtt/results/#.
    const std::string plugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
    INFO("Debian's mosquitto package ships the dynamic security plugin at " << plugin);
    REQUIRE(std::ifstream(plugin).good());
    temp_dir dir("dynsec");
    write_file(dir / "dynsec.json", R"({
  "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anonymous", "roles": [{"rolename": "caller"}]}],
  "anonymousGroup": "anonymous",
  "roles": [{"rolename": "caller", "acls": [
    {"acltype": "publishClientSend", "topic": "allowed/#", "allow": true},
    {"acltype": "subscribePattern", "topic": "allowed/#", "allow": true}]}]
})");
    ::chmod((dir / "dynsec.json").c_str(), 0666);
    broker b("plugin " + plugin + "\nplugin_opt_config_file " + (dir / "dynsec.json") + "\n");
    auto o = options_for(dir, "caller", b.uri());
    o.results = result_routing::per_client;
    auto c = connected(o);
    try {
        // Refused at once if the broker's refusal of the SUBSCRIBE this first call sends (before its invoke)
        // is back before the call is stored; else its future fails.
        auto first = c->call_async("allowed/cmd", "x", {}, 20s);
        first.result.get();
        FAIL("the call was answered");
    } catch (const broker_error& e) {
        CHECK(e.reason_code() == 0x87);
        CHECK(std::string(e.what()).find("result topics xymqtt/results/" + o.client_id + "/#") != std::string::npos);
    }
    const auto outbox = c->stats().outbox;
    CHECK_THROWS_AS(c->call_async("allowed/cmd", "y", {}, 20s), broker_error);  // refused before it is stored
    CHECK(c->stats().outbox == outbox);
}

TEST_CASE("credentials never appear in logs or in the store", "[security][acl]") {
    acl_fixture f;
    // A wrong password too, so the failure paths log as well.
    auto bad = f.opts("bad");
    bad.password = f.secret + "-wrong";
    CHECK_FALSE(try_connect(bad).empty());
    f.c->close();
    {
        std::lock_guard<std::mutex> lk(f.log_mu);
        CHECK_FALSE(f.logs.empty());
        CHECK(f.logs.find(f.secret) == std::string::npos);
    }
    // Every byte of every file of the stores.
    child_process grep({"grep", "-r", "-l", "-a", "-F", f.secret, f.dir / "alice", f.dir / "bad"});
    const auto rc = grep.wait();
    INFO(grep.output());
    CHECK(rc == 1);  // grep: 1 = no match
}
