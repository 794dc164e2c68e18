// Network faults through a TCP proxy between every client and the broker: connections reset at random
// byte offsets (inside MQTT packets), all connections cut at once, stalls, slow links, a broker that
// seems down. Nothing may be lost; every publish and call completes.
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstdlib>
#include <random>
#include <set>

#include "rel_util.h"
#include "tcp_proxy.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

// Finding F8 (docs/reliability.md): this run used to end in a std::future_error (the harness called
// wait_for on futures it had already consumed while reporting a stuck publish) or in the watchdog's abort;
// behind both were runtime bugs that left a client on a dead connection or dropped publishes from the
// sender. Every wait is now bounded and reports the clients' state.
TEST_CASE("network faults: cuts at random points, stalls and slow links lose nothing", "[network]") {
    // Four clients in one process behind one proxy. About 1 run in 12 used to crash inside Paho C (SIGSEGV in
    // MQTTProtocol_removePublication) in the reconnect storms of finding F7, so this ran outside CI; the
    // runtime's connect gate (runtime/src/session/connect_gate.h) now keeps Paho from re-sending other clients'
    // packets, and the run is part of CTest.
    const std::uint64_t seed = env_number("XYMQTT_REL_SEED", std::random_device{}());
    std::printf("network faults: seed %llu\n", (unsigned long long)seed);
    std::mt19937_64 rng(seed);
    // A watchdog: a deadlocked process (all Paho clients of a process share one global mutex) would
    // otherwise sit until CTest's timeout. It reports and aborts instead.
    struct watchdog {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
        std::thread t;
        explicit watchdog(std::chrono::seconds limit) {
            t = std::thread([this, limit] {
                std::unique_lock<std::mutex> lk(mu);
                if (!cv.wait_for(lk, limit, [&] { return done; })) {
                    std::fprintf(stderr, "network faults: no result after %lld s: the process is stuck (deadlock?); "
                                         "attach gdb for 'thread apply all bt' before it aborts\n",
                                 (long long)limit.count());
                    std::abort();
                }
            });
        }
        ~watchdog() {
            {
                std::lock_guard<std::mutex> lk(mu);
                done = true;
            }
            cv.notify_all();
            t.join();
        }
    } dog(std::chrono::seconds(env_number("XYMQTT_REL_NET_WATCHDOG_S", 150)));
    temp_dir dir("netfault");
    broker b;
    tcp_proxy proxy(b.port(), seed);
    auto opts = [&](const std::string& name) {
        auto o = options_for(dir, name, proxy.uri());
        o.reconnect_min = 20ms;
        o.reconnect_max = 200ms;
        o.connect_timeout = 2000ms;
        o.keep_alive = std::chrono::seconds(5);
        return o;
    };
    const int events = static_cast<int>(env_number("XYMQTT_REL_NET_EVENTS", 2000));
    const int calls = static_cast<int>(env_number("XYMQTT_REL_NET_CALLS", 200));
    std::mutex mu;
    std::map<std::string, int> got;
    std::set<std::string> arrived;  // payloads that reached the subscriber's client (before its inbox)
    auto so = opts("sub");
    so.hooks.on_packet_receive = [&](const std::string&, const std::string& payload) {
        std::lock_guard<std::mutex> lk(mu);
        arrived.insert(payload);
    };
    const std::string topic = "rel/" + so.client_id + "/net", command = "rel/" + so.client_id + "/cmd";
    client sub(so);
    sub.subscribe(topic, [&](const message& m) {
        std::lock_guard<std::mutex> lk(mu);
        ++got[m.payload];
    });
    sub.connect();
    client server(opts("server"));
    std::atomic<int> runs{0};
    server.command_register(command, [&](const invocation& inv, call_context&) {
        ++runs;
        return "re:" + inv.body;
    });
    server.connect();
    client pub(opts("pub"));
    pub.connect();
    client caller(opts("caller"));
    caller.connect();
    REQUIRE(sub.wait_connected(10s));
    REQUIRE(server.wait_connected(10s));
    REQUIRE(pub.wait_connected(10s));
    REQUIRE(caller.wait_connected(10s));
    // Subscriptions live before the stream (they are in the persistent sessions from then on).
    REQUIRE(eventually([&] {
        pub.publish(topic, "probe").get();
        std::lock_guard<std::mutex> lk(mu);
        return got.count("probe") > 0;
    }, 20s));
    REQUIRE(eventually([&] {
        try {
            caller.call_async(command, "warm", {}, 1s).result.get();
            return true;
        } catch (const timeout_error&) {
            return false;
        }
    }, 20s));

    std::atomic<bool> streaming{true};
    std::map<std::string, std::uint64_t> faults;
    std::thread injector([&] {
        std::uniform_int_distribution<int> kind(0, 4);
        std::uniform_int_distribution<int> ms(100, 700);
        while (streaming) {
            const int k = kind(rng);
            const auto d = std::chrono::milliseconds(ms(rng));
            // The fault schedule: these sleeps set how long a fault lasts, they await nothing.
            switch (k) {
                case 0:
                    proxy.cut_all();
                    ++faults["cut all connections"];
                    std::this_thread::sleep_for(d);
                    break;
                case 1:
                    proxy.random_cuts(4096);
                    ++faults["random-offset cut periods"];
                    proxy.cut_all();
                    std::this_thread::sleep_for(d * 2);
                    proxy.random_cuts(0);
                    break;
                case 2:
                    proxy.stall(true);
                    ++faults["stalls"];
                    std::this_thread::sleep_for(d * 2);
                    proxy.stall(false);
                    break;
                case 3:
                    proxy.slow(64, 1ms);
                    ++faults["slow-link periods"];
                    std::this_thread::sleep_for(d * 2);
                    proxy.slow(0);
                    break;
                case 4:
                    proxy.refuse(true);
                    proxy.cut_all();
                    ++faults["broker unreachable"];
                    std::this_thread::sleep_for(d);
                    proxy.refuse(false);
                    break;
            }
            std::this_thread::sleep_for(d / 2);
        }
    });

    struct stop_injector {
        std::atomic<bool>& flag;
        std::thread& t;
        ~stop_injector() {
            flag = false;
            if (t.joinable()) t.join();
        }
    } stop_guard{streaming, injector};
    std::vector<std::future<void>> fs;
    std::vector<pending_call> ps;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < events; ++i) {
        fs.push_back(pub.publish(topic, std::to_string(i)));
        if (i % (events / calls) == 0 && int(ps.size()) < calls)
            ps.push_back(caller.call_async(command, "c" + std::to_string(ps.size()), {}, 180s));
        // A steady stream over ~10 s so that the faults fall in the middle of it (pacing only).
        if (i % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10000 * 20 / events));
    }
    // One deadline for everything still outstanding, well inside the watchdog's limit, so that a lost
    // publish or call is reported as such (with the clients' state) rather than as the watchdog's abort.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(env_number("XYMQTT_REL_NET_WAIT_S", 60));
    int completed = 0;
    for (std::size_t i = 0; i < fs.size(); ++i) {
        auto& f = fs[i];
        if (f.wait_until(deadline) != std::future_status::ready) {
            const auto st = pub.stats();
            std::size_t stuck = 0;
            // Futures before i were consumed by get() (no longer valid); count the rest.
            for (std::size_t j = i; j < fs.size(); ++j) stuck += fs[j].wait_for(0s) != std::future_status::ready;
            FAIL("publish #" << i << " never completed: " << stuck << " publishes stuck; publisher outbox "
                             << st.outbox << ", connected " << st.connected << ", published " << st.published
                             << ", last error '" << st.last_error << "'");
        }
        f.get();
        ++completed;
    }
    int answered = 0;
    for (std::size_t i = 0; i < ps.size(); ++i) {
        if (ps[i].result.wait_until(deadline) != std::future_status::ready) {
            const auto cs = caller.stats(), ss = server.stats();
            FAIL("call #" << i << " got no result; caller outbox " << cs.outbox << ", inbox " << cs.inbox
                          << ", connected " << cs.connected << "; server outbox " << ss.outbox << ", inbox "
                          << ss.inbox << ", handler runs " << runs.load());
        }
        auto r = ps[i].result.get();
        CHECK(r.body == "re:c" + std::to_string(i));
        ++answered;
    }
    streaming = false;
    if (injector.joinable()) injector.join();
    proxy.stall(false);
    proxy.slow(0);
    proxy.random_cuts(0);
    proxy.refuse(false);
    if (!eventually([&] {
            std::lock_guard<std::mutex> lk(mu);
            for (int i = 0; i < events; ++i)
                if (!got.count(std::to_string(i))) return false;
            return true;
        }, 30s)) {
        const auto st = sub.stats();
        std::unique_lock<std::mutex> lk(mu);
        std::string missing;
        int n_missing = 0, n_arrived = 0;
        for (int i = 0; i < events; ++i) {
            const auto p = std::to_string(i);
            if (got.count(p)) continue;
            ++n_missing;
            n_arrived += arrived.count(p) > 0;
            if (n_missing <= 20) missing += p + (arrived.count(p) ? " (reached the client) " : " ");
        }
        missing = std::to_string(n_missing) + " (" + std::to_string(n_arrived) + " of them reached the client), e.g. " + missing;
        FAIL("published events never handled: " << missing << "; subscriber inbox " << st.inbox << ", delivered "
                                                 << st.delivered << ", handled " << st.handled << ", connected " << st.connected);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int dups = 0;
    {
        std::lock_guard<std::mutex> lk(mu);
        for (auto& [k, n] : got) dups += n - 1;
    }
    std::string fault_list;
    std::uint64_t total_faults = 0;
    for (auto& [k, n] : faults) {
        fault_list += k + " " + std::to_string(n) + ", ";
        total_faults += n;
    }
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "network faults (seed %llu): %llu faults in %.1f s (%s%llu connections, %llu reset by the proxy); "
                  "events %d published, %d handled, 0 lost, %d duplicates; calls %d answered, handler runs %d",
                  (unsigned long long)seed, (unsigned long long)total_faults, secs, fault_list.c_str(),
                  (unsigned long long)proxy.connections(), (unsigned long long)proxy.cuts(), completed, events, dups,
                  answered, runs.load());
    std::printf("%s\n", buf);
    report_line(buf);
    CHECK(completed == events);
    CHECK(answered == calls);
    CHECK(proxy.cuts() > 10);
    CHECK(b.errors().empty());
}

// Found by the history checker (MQTT 3.1.1 scenario, about 1 run in 10): events whose publish had completed
// (PUBCOMP) never reached the subscriber. Mosquitto 2.0 queues a client's QoS 2 publishes beyond its
// max_inflight_messages without answering them; when the reconnected client sends a queued one again
// (DUP), the broker finds it, answers PUBREC at once and PUBCOMP at the PUBREL, and the message stays in
// its queue for good. An MQTT 5 broker announces the limit (Receive Maximum); under MQTT 3.1.1 the outbox
// keeps within client_options::broker_receive_maximum_311 instead.
TEST_CASE("network faults: a publisher stays within the broker's in-flight limit, so a reconnect loses nothing",
          "[network][inflight]") {
    const int version = GENERATE(4, 5);
    INFO("MQTT " << version);
    temp_dir dir("inflight");
    broker b("max_inflight_messages 20\n");
    tcp_proxy proxy(b.port(), 1);
    const int events = 1000;
    recorder got;
    auto so = options_for(dir, "sub", b.uri());
    so.durability = durability::process;
    const std::string topic = "rel/" + so.client_id + "/ev";
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    auto po = options_for(dir, "pub", proxy.uri());
    po.mqtt_version = version;
    po.durability = durability::process;
    po.reconnect_min = 20ms;
    std::atomic<int> sends{0};
    po.hooks.on_packet_send = [&](const std::string&, const std::string&) { ++sends; };
    client pub(po);
    pub.connect();
    REQUIRE(sub.wait_connected(10s));
    REQUIRE(pub.wait_connected(10s));
    REQUIRE(eventually([&] {
        pub.publish(topic, "probe").get();
        return got.size() > 0;
    }, 20s));

    // The broker's answers are held: what the publisher puts in flight stays there.
    proxy.hold_to_clients(true);
    const int sent_before = sends;
    const auto bytes_before = proxy.bytes_to_server();
    std::vector<std::future<void>> fs;
    char payload[8];
    for (int i = 0; i < events; ++i) {
        std::snprintf(payload, sizeof payload, "%04d", i);
        fs.push_back(pub.publish(topic, payload));
    }
    // An absence is observed over a period: the publisher had a second to send more than its window.
    REQUIRE(eventually([&] { return sends - sent_before >= 1; }, 5s));
    std::this_thread::sleep_for(1s);
    const int in_flight = sends - sent_before;
    CHECK(in_flight <= 10);  // half the broker's 20
    // Every PUBLISH handed to Paho has reached the broker (a 3.1.1/5 QoS 2 PUBLISH of this size: fixed
    // header 2, topic 2 + length, packet id 2, MQTT 5 properties length 1, payload 4).
    const std::uint64_t packet = 2 + 2 + topic.size() + 2 + (version == 5 ? 1 : 0) + 4;
    REQUIRE(eventually([&] { return proxy.bytes_to_server() - bytes_before >= std::uint64_t(in_flight) * packet; }, 5s));

    // The cut: the publisher reconnects and sends its open flows again, with DUP.
    REQUIRE(proxy.cut_all_and_wait());
    proxy.hold_to_clients(false);
    for (auto& f : fs) REQUIRE(f.wait_for(30s) == std::future_status::ready);
    auto handled = [&] {
        std::set<std::string> distinct;
        for (const auto& p : got.items())
            if (p != "probe") distinct.insert(p);
        return distinct.size();
    };
    eventually([&] { return handled() == std::size_t(events); }, 30s);
    CHECK(handled() == std::size_t(events));
    CHECK(b.errors().empty());
}
