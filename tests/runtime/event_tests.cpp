// Events against a real Mosquitto: round trips, offline delivery, retries, restarts, dead letters.
#include <MQTTAsync.h>
#include <pthread.h>
#include <sched.h>
#include <catch2/catch.hpp>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "support/child_process.h"
#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

TEST_CASE("publish and subscribe round trip, both stores and durabilities", "[events]") {
    temp_dir dir("events");
    const auto kind = GENERATE(store_kind::lmdb, store_kind::sqlite);
    const auto dur = GENERATE(durability::fsync, durability::process);
    auto so = options_for(dir, "sub");
    so.store_type = kind;
    so.durability = dur;
    auto po = options_for(dir, "pub");
    po.store_type = kind;
    po.durability = dur;
    const std::string topic = "test/" + so.client_id + "/tick";

    recorder got;
    auto sub = std::make_unique<client>(so);
    sub->subscribe(topic, [&](const message& m) { got.add(m.payload); });  // before connect
    sub->connect();
    REQUIRE(sub->wait_connected(10s));
    REQUIRE(eventually([&] { return sub->stats().connected; }));
    auto pub = connected(po);
    // The subscription is renewed on connect; wait for the broker to have it before publishing.
    REQUIRE(eventually([&] {
        pub->publish(topic + "/probe", "x").get();
        return true;
    }));
    std::vector<std::future<void>> fs;
    for (int i = 0; i < 50; ++i) fs.push_back(pub->publish(topic, std::to_string(i)));
    for (auto& f : fs) f.get();  // PUBCOMP for every one
    REQUIRE(got.wait_size(50));
    auto items = got.items();
    for (int i = 0; i < 50; ++i) CHECK(items[i] == std::to_string(i));
    CHECK(pub->wait_outbox_empty(5s));
    CHECK(sub->wait_inbox_empty(5s));
    CHECK(pub->stats().published >= 50);
}

TEST_CASE("subscribing after connect reaches the broker", "[events]") {
    temp_dir dir("late");
    auto sub = connected(options_for(dir, "sub"));
    auto pub = connected(options_for(dir, "pub"));
    const std::string topic = "test/" + sub->options().client_id + "/late";
    recorder got;
    sub->subscribe(topic, [&](const message& m) { got.add(m.payload); });
    // The SUBSCRIBE is asynchronous: publish until one arrives, then check a numbered run.
    publish_until_heard(*pub, topic, "probe", got);
    pub->publish(topic, "after").get();
    REQUIRE(eventually([&] { return got.items().back() == "after"; }));
}

TEST_CASE("an offline subscriber receives what was published while it was away", "[events]") {
    temp_dir dir("offline");
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/away";
    std::size_t hellos = 0, heard_first = 0;
    {
        recorder first;
        client sub(so);
        sub.subscribe(topic, [&](const message& m) { first.add(m.payload); });
        sub.connect();
        REQUIRE(sub.wait_connected(10s));
        auto pub = connected(options_for(dir, "pub0"));
        // Until the subscription is in place a "hello" may go unheard, so it is published again; one more
        // may then still be on its way when this session closes.
        hellos = publish_until_heard(*pub, topic, "hello", first);
        sub.close();
        heard_first = first.size();
    }
    auto pub = connected(options_for(dir, "pub"));
    for (int i = 0; i < 20; ++i) pub->publish(topic, "away-" + std::to_string(i)).get();

    recorder got;
    client sub(so);  // same id, same store
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    // A "hello" the first session had not handled comes first, the 20 published while away follow in order.
    REQUIRE(heard_first <= hellos);
    const std::size_t left = hellos - heard_first;
    REQUIRE(got.wait_size(left + 20));
    auto items = got.items();
    CHECK(items.size() == left + 20);
    for (std::size_t i = 0; i < left; ++i) CHECK(items[i] == "hello");
    for (std::size_t i = 0; i < 20; ++i) CHECK(items[left + i] == "away-" + std::to_string(i));
}

TEST_CASE("a throwing handler is retried with backoff and messages stay in order", "[events]") {
    temp_dir dir("retry");
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/retry";
    std::atomic<int> retry_hooks{0};
    so.hooks.on_message_retry = [&](const message&, const std::string& err, std::chrono::milliseconds delay) {
        CHECK(err == "not yet");
        CHECK(delay.count() > 0);
        ++retry_hooks;
    };
    recorder got;
    std::map<std::string, int> attempts;
    std::mutex mu;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) {
        {
            std::lock_guard<std::mutex> lk(mu);
            attempts[m.payload] = int(m.attempt);
        }
        if (m.payload == "1" && m.attempt < 3) throw std::runtime_error("not yet");
        got.add(m.payload);
    });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, topic, "0", got);
    for (int i = 1; i <= 5; ++i) pub->publish(topic, std::to_string(i)).get();
    REQUIRE(eventually([&] { return got.items().back() == "5"; }));
    auto items = got.items();
    std::vector<std::string> tail(items.end() - 5, items.end());
    CHECK(tail == std::vector<std::string>{"1", "2", "3", "4", "5"});  // 2..5 waited behind 1
    CHECK(attempts["1"] == 3);
    CHECK(retry_hooks == 2);
    CHECK(sub.stats().retries == 2);
}

TEST_CASE("retry backoff doubles up to the cap", "[events]") {
    retry_policy p;
    CHECK(p.delay_after(1) == 100ms);
    CHECK(p.delay_after(2) == 200ms);
    CHECK(p.delay_after(8) == 12800ms);
    CHECK(p.delay_after(30) == 12800ms);
}

TEST_CASE("several handlers per filter, and unsubscribing the last one unsubscribes at the broker", "[events]") {
    temp_dir dir("handlers");
    auto sub = connected(options_for(dir, "sub"));
    auto pub = connected(options_for(dir, "pub"));
    const std::string topic = "test/" + sub->options().client_id + "/multi";
    const std::string marker = "test/" + sub->options().client_id + "/marker";
    recorder a, b, m;
    auto ida = sub->subscribe(topic, [&](const message& x) { a.add(x.payload); });
    auto idb = sub->subscribe(topic, [&](const message& x) { b.add(x.payload); });
    sub->subscribe(marker, [&](const message& x) { m.add(x.payload); });
    REQUIRE(eventually([&] {
        pub->publish(topic, "one").get();
        return a.size() > 0 && b.size() > 0;
    }));
    sub->unsubscribe(ida);
    const auto before_b = b.size();
    pub->publish(topic, "two").get();
    REQUIRE(eventually([&] { return b.size() > before_b; }));
    const auto a_after = a.size();
    sub->unsubscribe(idb);
    // Wait until the broker has processed the UNSUBSCRIBE: a probe on the topic no longer comes back
    // while a marker on another subscription does (one publisher, so the broker keeps their order).
    REQUIRE(eventually([&] {
        const auto before = m.size();
        const auto delivered_before = sub->stats().delivered;
        pub->publish(topic, "after-unsubscribe").get();
        pub->publish(marker, "mark").get();
        if (!eventually([&] { return m.size() > before; }, 5s)) return false;
        return sub->stats().delivered == delivered_before + 1;  // the marker, and not the probe
    }));
    const auto delivered = sub->stats().delivered;
    pub->publish(topic, "three").get();
    const auto mb = m.size();
    pub->publish(marker, "mark2").get();
    REQUIRE(eventually([&] { return m.size() > mb; }));
    CHECK(sub->stats().delivered == delivered + 1);  // only the marker arrived
    CHECK(a.size() == a_after);
}

TEST_CASE("a publisher restarted with a pending outbox delivers everything", "[events]") {
    temp_dir dir("outbox");
    auto po = options_for(dir, "pub");
    po.durability = durability::fsync;
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/outbox";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    {
        client pub(po);  // never connects: everything stays in the outbox, on disk
        std::vector<std::future<void>> fs;
        for (int i = 0; i < 100; ++i) fs.push_back(pub.publish(topic, std::to_string(i)));
        REQUIRE(eventually([&] { return pub.stats().outbox == 100; }));
        pub.close();
        for (auto& f : fs) CHECK_THROWS_AS(f.get(), client_closed);
    }
    client pub(po);
    CHECK(pub.stats().outbox == 100);
    pub.connect();
    REQUIRE(got.wait_size(100, 30s));
    auto items = got.items();
    std::set<std::string> unique(items.begin(), items.end());
    CHECK(unique.size() == 100);
    CHECK(items.front() == "0");
    CHECK(pub.wait_outbox_empty(10s));
}

TEST_CASE("undecodable payloads go to dead letters while later messages flow", "[events]") {
    temp_dir dir("dead");
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/poison";
    recorder parse_errors, got;
    so.hooks.on_parse_error = [&](const message& m, const std::string&) { parse_errors.add(m.payload); };
    client sub(so);
    sub.subscribe(topic, [&](const message& m) {
        if (m.payload.rfind("bad", 0) == 0) throw parse_error("cannot decode " + m.payload);
        got.add(m.payload);
    });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, topic, "ok-0", got);
    pub->publish(topic, "bad-1").get();
    pub->publish(topic, "ok-2").get();
    REQUIRE(eventually([&] { return got.items().back() == "ok-2"; }));
    CHECK(parse_errors.items() == std::vector<std::string>{"bad-1"});
    auto dl = sub.dead_letters();
    REQUIRE(dl.size() == 1);
    CHECK(dl[0].record.payload == "bad-1");
    CHECK(dl[0].record.error.find("cannot decode") != std::string::npos);
    CHECK(sub.stats().dead_letters == 1);

    // Replay puts it back through the handler (still poison: it returns to dead letters).
    REQUIRE(sub.replay_dead_letter(dl[0].id));
    REQUIRE(eventually([&] { return parse_errors.size() == 2; }));
    REQUIRE(sub.dead_letters().size() == 1);
    REQUIRE(sub.purge_dead_letter(sub.dead_letters()[0].id));
    CHECK(sub.dead_letters().empty());
    CHECK_FALSE(sub.purge_dead_letter("00000000000000000000"));
}

TEST_CASE("max_attempts moves a failing message to dead letters", "[events]") {
    temp_dir dir("maxatt");
    auto so = options_for(dir, "sub");
    so.retry.max_attempts = 3;
    const std::string topic = "test/" + so.client_id + "/fail";
    recorder dead, got;
    so.hooks.on_dead_letter = [&](const message& m, const std::string&) { dead.add(m.payload); };
    client sub(so);
    sub.subscribe(topic, [&](const message& m) {
        if (m.payload == "always-fails") throw std::runtime_error("boom");
        got.add(m.payload);
    });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, topic, "first", got);
    pub->publish(topic, "always-fails").get();
    pub->publish(topic, "after").get();
    REQUIRE(eventually([&] { return got.items().back() == "after"; }));
    CHECK(dead.items() == std::vector<std::string>{"always-fails"});
    REQUIRE(sub.dead_letters().size() == 1);
    CHECK(sub.dead_letters()[0].record.attempts == 3);
}

TEST_CASE("MQTT 3.1.1 round trip", "[events]") {
    temp_dir dir("v311");
    auto so = options_for(dir, "sub");
    so.mqtt_version = 4;
    auto po = options_for(dir, "pub");
    po.mqtt_version = 4;
    const std::string topic = "test/" + so.client_id + "/v3";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(po);
    publish_until_heard(*pub, topic, "v3", got);
    CHECK(got.items()[0] == "v3");
}

TEST_CASE("completions hand the next publishes to Paho from its own thread, in outbox order", "[events]") {
    // With a window of 4 every completion frees room: the next batch goes to Paho from the completion
    // callback on Paho's receive thread, and the sender thread only starts what nothing completes.
    temp_dir dir("inline");
    const auto dur = GENERATE(durability::fsync, durability::process);
    auto so = options_for(dir, "sub");
    so.durability = dur;
    auto po = options_for(dir, "pub");
    po.durability = dur;
    po.max_inflight = 4;
    std::mutex mu;
    std::set<std::thread::id> senders;
    std::vector<std::string> sent;
    po.hooks.on_packet_send = [&](const std::string&, const std::string& payload) {
        std::lock_guard<std::mutex> lk(mu);
        senders.insert(std::this_thread::get_id());
        sent.push_back(payload);
    };
    const std::string topic = "test/" + so.client_id + "/inline";
    recorder got;
    auto sub = std::make_unique<client>(so);
    sub->subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub->connect();
    REQUIRE(sub->wait_connected(10s));
    auto pub = connected(po);
    pub->publish(topic + "/probe", "x").get();
    constexpr int n = 400;
    for (int i = 0; i < n; ++i) pub->post(topic, std::to_string(i));
    REQUIRE(pub->wait_outbox_empty(60s));
    REQUIRE(got.wait_size(n));
    const auto items = got.items();
    for (int i = 0; i < n; ++i) REQUIRE(items[i] == std::to_string(i));
    std::lock_guard<std::mutex> lk(mu);
    std::vector<std::string> events;
    for (const auto& p : sent)
        if (p != "x") events.push_back(p);
    REQUIRE(events.size() == std::size_t(n));  // each handed to Paho once, in order
    for (int i = 0; i < n; ++i) CHECK(events[i] == std::to_string(i));
    CHECK(senders.size() >= 2);  // the sender thread and Paho's receive thread
}

TEST_CASE("hooks report connection and packets", "[events]") {
    temp_dir dir("hooks");
    auto o = options_for(dir, "c");
    std::atomic<int> connects{0}, inits{0}, sends{0}, receives{0}, messages{0};
    o.hooks.on_connect = [&](bool) { ++connects; };
    o.hooks.on_init = [&] { ++inits; };
    o.hooks.on_packet_send = [&](const std::string&, const std::string&) { ++sends; };
    o.hooks.on_packet_receive = [&](const std::string&, const std::string&) { ++receives; };
    o.hooks.on_message = [&](const message&) { ++messages; };
    const std::string topic = "test/" + o.client_id + "/self";
    client c(o);
    c.subscribe(topic, [](const message&) {});
    c.connect();
    REQUIRE(c.wait_connected(10s));
    REQUIRE(eventually([&] {
        c.publish(topic, "me").get();
        return messages > 0;
    }));
    CHECK(connects == 1);
    CHECK(inits == 1);  // a new client id: no stored session
    CHECK(sends >= 1);
    CHECK(receives >= 1);
}

namespace {

// Publishes "warmup" until an xy_agent subscriber's log shows it handled: its subscription exists.
bool agent_subscribed(client& pub, const std::string& topic, const std::string& log) {
    return eventually([&] {
        pub.publish(topic, "warmup").get();
        for (auto& l : read_lines(log))
            if (l == "done warmup") return true;
        return false;
    }, 10s);
}

}  // namespace

TEST_CASE("a subscriber killed with SIGKILL while handling loses nothing", "[events][crash]") {
    temp_dir dir("sigkill");
    const std::string id = unique_id("killed-sub");
    const std::string store = dir / "sub-store", log = dir / "handled.log";
    const std::string topic = "test/" + id + "/work";
    auto run_sub = [&] {
        return std::make_unique<child_process>(std::vector<std::string>{
            XY_AGENT, "subscribe", "--broker", shared_broker_uri(), "--id", id, "--store", store, "--filter", topic,
            "--log", log, "--slow-ms", "20"});
    };
    auto sub = run_sub();
    REQUIRE(sub->wait_for_line("ready"));
    auto pub = connected(options_for(dir, "pub"));
    // Make sure the subscription exists before the run starts.
    REQUIRE(agent_subscribed(*pub, topic, log));
    const int n = 60;
    for (int i = 0; i < n; ++i) pub->publish(topic, std::to_string(i)).get();
    // Kill it in the middle of a handler: after some are done and one has started.
    REQUIRE(eventually([&] {
        auto lines = read_lines(log);
        return lines.size() > 20 && lines.back().rfind("start", 0) == 0;
    }, 20s));
    sub->kill(SIGKILL);
    sub->wait();
    sub = run_sub();
    REQUIRE(eventually([&] {
        std::set<std::string> done;
        for (auto& l : read_lines(log))
            if (l.rfind("done ", 0) == 0) done.insert(l.substr(5));
        return done.size() == n + 1;
    }, 30s));
    std::map<std::string, int> starts;
    for (auto& l : read_lines(log))
        if (l.rfind("start ", 0) == 0 && l != "start warmup") ++starts[l.substr(6)];
    int rehandled = 0;
    for (auto& [k, v] : starts) rehandled += v - 1;
    CHECK(rehandled <= 1);  // at most the one in progress at the kill
}

TEST_CASE("a subscriber killed while an arrival's commit stalls gets the message after a restart", "[events][crash]") {
    // With durability fsync the acknowledgement of an arrival waits (in the session's ack gate) until its
    // commit is durable, while Paho goes on. Here the commit never ends: had the acknowledgement left, the
    // broker would have finished the flow, and the message would be gone after the kill.
    temp_dir dir("stall");
    const std::string id = unique_id("stalled-sub");
    const std::string store = dir / "sub-store", log = dir / "handled.log";
    const std::string topic = "test/" + id + "/work";
    auto run_sub = [&](bool stall, bool until_one = false) {
        std::vector<std::string> args{XY_AGENT, "subscribe", "--broker", shared_broker_uri(), "--id", id, "--store", store,
                                      "--filter", topic, "--log", log, "--durability", "fsync"};
        if (stall) args.insert(args.end(), {"--stall-arrivals", "1"});
        if (until_one) args.insert(args.end(), {"--expect", "1"});
        return std::make_unique<child_process>(args);
    };
    auto pub = connected(options_for(dir, "pub"));
    {
        // The session and its subscription, made by a first run that handles one message.
        auto sub = run_sub(false, true);
        REQUIRE(sub->wait_for_line("ready"));
        REQUIRE(agent_subscribed(*pub, topic, log));
        REQUIRE(sub->wait_for_line("expected reached"));
        sub->wait();
    }
    auto sub = run_sub(true);
    REQUIRE(sub->wait_for_line("ready"));
    pub->publish(topic, "precious").get();
    pub->publish(topic, "next").get();
    REQUIRE(sub->wait_for_line("stalled"));
    // Paho has taken the next message in, so it is done with "precious" and has written its PUBREC; what
    // must not happen (the PUBREC reaching the broker, the broker finishing the flow) has no event to
    // await: it gets a bounded time to happen.
    REQUIRE(sub->wait_for_line("arrived next"));
    std::this_thread::sleep_for(300ms);
    sub->kill(SIGKILL);
    sub->wait();
    sub = run_sub(false);
    auto handled = [&] {
        int n = 0;
        for (auto& l : read_lines(log)) n += l == "done precious";
        return n;
    };
    REQUIRE(eventually([&] { return handled() > 0; }, 30s));
    REQUIRE(sub->wait_for_line("ready"));
    CHECK(handled() == 1);
}

TEST_CASE("a publisher killed with SIGKILL re-sends its pending outbox after restart", "[events][crash]") {
    temp_dir dir("pubkill");
    const std::string id = unique_id("killed-pub");
    const std::string store = dir / "pub-store";
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/k";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    const int n = 2000;
    auto run_pub = [&] {
        return std::make_unique<child_process>(std::vector<std::string>{
            XY_AGENT, "publish", "--broker", shared_broker_uri(), "--id", id, "--store", store, "--topic", topic,
            "--from", "0", "--count", std::to_string(n), "--durability", "fsync"});
    };
    auto pub = run_pub();
    REQUIRE(pub->wait_for_line([](const std::string& l) { return l.rfind("ack 5", 0) == 0; }, 20s));
    pub->kill(SIGKILL);
    pub->wait();
    std::set<std::string> acked;
    for (auto& l : pub->lines())
        if (l.rfind("ack ", 0) == 0) acked.insert(l.substr(4));
    // Restart on the same store with nothing new to publish: the outbox alone must finish the job.
    auto again = std::make_unique<child_process>(std::vector<std::string>{
        XY_AGENT, "publish", "--broker", shared_broker_uri(), "--id", id, "--store", store, "--topic", topic, "--from",
        "0", "--count", "0"});
    REQUIRE(again->wait(30s) == 0);
    REQUIRE(eventually([&] {
        auto items = got.items();
        std::set<std::string> u(items.begin(), items.end());
        for (auto& a : acked)
            if (!u.count(a)) return false;
        return true;
    }, 30s));
    // Everything that was stored before the kill arrives, not only what was acknowledged.
    auto o = options_for(dir, "unused");
    o.client_id = id;
    o.store_dir = store;
    client check(o);
    CHECK(check.stats().outbox == 0);
}

TEST_CASE("post stores and delivers like publish, without a future", "[events]") {
    temp_dir dir("post");
    auto so = options_for(dir, "sub");
    const std::string topic = "test/" + so.client_id + "/post";
    recorder got;
    client sub(so);
    sub.subscribe(topic, [&](const message& m) { got.add(m.payload); });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    client pub(options_for(dir, "pub"));  // offline at first: posts wait on disk
    for (int i = 0; i < 1000; ++i) pub.post(topic, std::to_string(i));
    REQUIRE(eventually([&] { return pub.stats().outbox == 1000; }));
    CHECK_THROWS_AS(pub.post("bad/#", "x"), invalid_topic);
    pub.connect();
    REQUIRE(pub.wait_outbox_empty(30s));
    REQUIRE(got.wait_size(1000));
    std::set<std::string> u;
    for (auto& s : got.items()) u.insert(s);
    CHECK(u.size() == 1000);
}

namespace {

std::atomic<int> paho_trace_lines{0};

void count_paho_trace(enum MQTTASYNC_TRACE_LEVELS level, char*) {
    // Paho also prints a banner (at the minimum level) the first time it outputs anything.
    if (level == MQTTASYNC_TRACE_PROTOCOL) ++paho_trace_lines;
}

}  // namespace

TEST_CASE("Paho's own trace is kept to errors unless the client is told to leave it", "[events]") {
    // Paho records every function entry into an in-memory trace under global locks (F19); a trace
    // callback receives what Paho records at or above the level it outputs.
    const bool leave = GENERATE(false, true);
    MQTTAsync_setTraceCallback(count_paho_trace);
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_PROTOCOL);  // as an application that wants Paho's trace
    temp_dir dir("trace");
    auto o = options_for(dir, "c");
    o.paho_trace = leave;
    paho_trace_lines = 0;
    {
        auto c = connected(o);
        c->publish("test/" + o.client_id + "/t", "x").get();
    }
    const int lines = paho_trace_lines;
    MQTTAsync_setTraceCallback(nullptr);
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    INFO("Paho protocol trace lines: " << lines);
    if (leave)
        CHECK(lines > 0);
    else
        CHECK(lines == 0);
}

TEST_CASE("event handlers run on lanes of the SCHED_BATCH policy unless batch_lanes is false, commands never",
          "[events]") {
    // A lane of the normal policy preempts Paho's receive thread each time that thread wakes it for a
    // message; a batch lane does not, but may start a little later, so a lane a call waits on keeps the
    // normal policy (docs/benchmarks.md, F30).
    const bool batch = GENERATE(true, false);
    auto policy_here = [] {
        int policy = -1;
        sched_param param{};
        pthread_getschedparam(pthread_self(), &policy, &param);
        return policy;
    };
    const int normal = policy_here();
    REQUIRE(normal != SCHED_BATCH);
    temp_dir dir("lanes");
    auto so = options_for(dir, "sub");
    so.batch_lanes = batch;
    const std::string topic = "test/" + so.client_id + "/t", command = "test/" + so.client_id + "/cmd";
    recorder events, calls;
    client sub(so);
    sub.subscribe(topic, [&](const message&) { events.add(std::to_string(policy_here())); });
    sub.command_register(command, [&](const invocation&, call_context&) {
        calls.add(std::to_string(policy_here()));
        return std::string("ok");
    });
    sub.connect();
    REQUIRE(sub.wait_connected(10s));
    auto pub = connected(options_for(dir, "pub"));
    publish_until_heard(*pub, topic, "x", events);
    wait_until_served(*pub, command);
    INFO("batch_lanes " << batch << ", SCHED_BATCH is " << SCHED_BATCH << ", this thread's policy " << normal);
    for (const auto& p : events.items()) CHECK(p == std::to_string(batch ? SCHED_BATCH : normal));
    REQUIRE(calls.size() > 0);
    for (const auto& p : calls.items()) CHECK(p == std::to_string(normal));
}
