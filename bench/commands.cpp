// Scenarios 2 and 5: command round trips through xymqtt, and the raw Paho QoS 2 ping-pong baseline.
#include <mqtt/async_client.h>

#include <condition_variable>
#include <deque>
#include <future>
#include <thread>

#include "xy.h"
#include "xymqtt/exception.h"

namespace bench {

namespace {

int serve(const args& a) {
    block_stop_signals();
    const auto command = a.str("command", "bench/cmd/ping");
    std::atomic<long> served{0};
    xymqtt::client c(xy_options(a));
    xymqtt::command_options co;
    co.group = a.str("group");
    co.concurrency = unsigned(std::max(1L, a.num("concurrency", 1)));
    // A handler that takes this long (a call to a database, say), holding its thread.
    const auto delay = std::chrono::milliseconds(a.num("delay-ms", 0));
    c.command_register(command, [&](const xymqtt::invocation& inv, xymqtt::call_context&) {
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        ++served;
        return inv.format == xymqtt::wire_format::json ? std::string("{\"pong\":true}") : std::string("pong");
    }, co);
    // Readiness: a probe published after the subscriptions comes back only once they are in place.
    std::promise<void> probe;
    std::once_flag once;
    const std::string probe_topic = "bench/probe/" + a.str("id", "srv");
    c.subscribe(probe_topic, [&](const xymqtt::message&) { std::call_once(once, [&] { probe.set_value(); }); });
    c.connect();
    if (!c.wait_connected(std::chrono::seconds(10))) throw std::runtime_error("not connected");
    (void)c.publish(probe_topic, "probe");
    if (probe.get_future().wait_for(std::chrono::seconds(20)) != std::future_status::ready)
        throw std::runtime_error("probe did not come back");
    say("ready");
    wait_stop_signal();
    result r;
    r.set("mode", "serve").set("served", double(served.load()));
    r.print();
    c.close();
    return 0;
}

int call(const args& a) {
    const auto command = a.str("command", "bench/cmd/ping");
    const long count = a.num("count", 1000);
    const long warmup = a.num("warmup", 50);
    const auto outstanding = std::size_t(std::max(1L, a.num("outstanding", 1)));
    const auto timeout = std::chrono::milliseconds(a.num("timeout-ms", 60000));
    xymqtt::client c(xy_options(a));
    c.connect();
    if (!c.wait_connected(std::chrono::seconds(10))) throw std::runtime_error("not connected");
    xymqtt::call_options opt;
    opt.format = a.str("format", "binary") == "json" ? xymqtt::wire_format::json : xymqtt::wire_format::binary;
    const std::string body = opt.format == xymqtt::wire_format::json ? "{\"n\":1}" : std::string(16, 'b');
    for (long i = 0; i < warmup; ++i) c.call_async(command, body, opt, timeout).result.get();

    std::vector<double> lat;
    lat.reserve(std::size_t(count));
    long rejected = 0;
    std::deque<std::pair<std::int64_t, std::future<xymqtt::command_result>>> pending;
    const auto t0 = mono_ns();
    long issued = 0;
    while (issued < count || !pending.empty()) {
        while (issued < count && pending.size() < outstanding) {
            pending.emplace_back(mono_ns(), c.call_async(command, body, opt, timeout).result);
            ++issued;
        }
        auto r = pending.front().second.get();  // results arrive (nearly) in order
        lat.push_back(double(mono_ns() - pending.front().first) / 1e6);
        if (!r.ok) ++rejected;
        pending.pop_front();
    }
    const double secs = double(mono_ns() - t0) / 1e9;
    result r;
    r.set("mode", "call").set("outstanding", double(outstanding)).set("count", double(count));
    r.set("rejected", double(rejected)).set("elapsed_s", secs).set("calls_per_s", double(count) / secs);
    r.set("p50_ms", percentile(lat, 50)).set("p90_ms", percentile(lat, 90)).set("p99_ms", percentile(lat, 99));
    r.set("max_ms", lat.empty() ? 0 : lat.back());
    r.set("delivered", double(c.stats().delivered));  // results received and committed, its own and others'
    r.print();
    c.close();
    return 0;
}

std::shared_ptr<mqtt::async_client> paho_client(const args& a, const std::string& id) {
    auto cli = std::make_shared<mqtt::async_client>(a.str("broker", "tcp://127.0.0.1:1883"), id,
                                                    mqtt::create_options(MQTTVERSION_5), nullptr);
    cli->connect(mqtt::connect_options_builder().mqtt_version(MQTTVERSION_5).clean_start(true).finalize())->wait();
    return cli;
}

// Raw Paho peer: answers every ping with a pong, QoS 2, no persistence, Paho's socket as Paho leaves it.
int paho_echo(const args& a) {
    block_stop_signals();
    const auto base = a.str("topic", "bench/pp");
    auto cli = paho_client(a, a.str("id", "paho-echo"));
    cli->set_message_callback([cli, base](mqtt::const_message_ptr m) {
        cli->publish(mqtt::make_message(base + "/pong", m->get_payload_str(), 2, false));
    });
    cli->subscribe(base + "/ping", 2)->wait();
    say("ready");
    wait_stop_signal();
    cli->disconnect()->wait();
    return 0;
}

int paho_ping(const args& a) {
    const auto base = a.str("topic", "bench/pp");
    const long count = a.num("count", 200), warmup = a.num("warmup", 5);
    auto cli = paho_client(a, a.str("id", "paho-ping"));
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t last = ~std::uint64_t(0);
    cli->set_message_callback([&](mqtt::const_message_ptr m) {
        std::uint64_t idx;
        std::int64_t sent;
        read_payload(m->get_payload_str(), idx, sent);
        std::lock_guard<std::mutex> lk(mu);
        last = idx;
        cv.notify_all();
    });
    cli->subscribe(base + "/pong", 2)->wait();
    std::vector<double> lat;
    for (long i = 0; i < warmup + count; ++i) {
        const auto t = mono_ns();
        cli->publish(mqtt::make_message(base + "/ping", make_payload(16, std::uint64_t(i)), 2, false));
        std::unique_lock<std::mutex> lk(mu);
        if (!cv.wait_for(lk, std::chrono::seconds(10), [&] { return last == std::uint64_t(i); }))
            throw std::runtime_error("pong " + std::to_string(i) + " did not come");
        if (i >= warmup) lat.push_back(double(mono_ns() - t) / 1e6);
    }
    result r;
    r.set("mode", "paho-ping").set("count", double(count));
    r.set("p50_ms", percentile(lat, 50)).set("p90_ms", percentile(lat, 90)).set("p99_ms", percentile(lat, 99));
    r.print();
    cli->disconnect()->wait();
    return 0;
}

}  // namespace

int commands_main(const std::string& mode, const args& a) {
    if (mode == "serve") return serve(a);
    if (mode == "call") return call(a);
    if (mode == "paho-echo") return paho_echo(a);
    return paho_ping(a);
}

}  // namespace bench
