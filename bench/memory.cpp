// Scenario 3 (memory while 1,000,000 events are queued offline, then drained) and
// scenario 4 (restart with a full outbox: time to the first completed publish, and to drained).
#include <future>
#include <map>
#include <memory>

#include "xy.h"

namespace bench {

namespace {

xymqtt::client_options quiet_options(const args& a) {
    auto o = xy_options(a);
    o.hooks.on_log = [](xymqtt::log_level lv, const std::string& s) {
        if (lv >= xymqtt::log_level::error) std::cerr << "xymqtt: " << s << std::endl;
    };
    return o;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
}

// The publisher of scenario 3. The broker at --broker is down when it starts; bench/run.py starts it
// after "queued" is printed.
int memory(const args& a) {
    const long count = a.num("count", 1000000);
    const auto size = std::size_t(a.num("size", 100));
    const auto topic = a.str("topic", "bench/mem");
    mem_sampler sampler;
    const mem base = read_mem();
    xymqtt::client c(quiet_options(a));
    c.connect();
    const mem opened = read_mem();
    sampler.take();
    const auto t0 = mono_ns();
    for (long i = 0; i < count; ++i) c.post(topic, make_payload(size, std::uint64_t(i)));
    const auto t1 = mono_ns();
    if (!wait_until([&] { return c.stats().outbox >= std::size_t(count); }, std::chrono::seconds(600)))
        throw std::runtime_error("the outbox never held every message");
    const auto t2 = mono_ns();
    const mem queued_peak = sampler.take();
    const mem queued_now = read_mem();
    say("queued");
    if (!c.wait_connected(std::chrono::seconds(120))) throw std::runtime_error("broker never came up");
    const auto t3 = mono_ns();
    const bool drained = c.wait_outbox_empty(std::chrono::seconds(a.num("timeout", 1200)));
    const auto t4 = mono_ns();
    const mem drain_peak = sampler.take();
    const mem end = read_mem();
    result r;
    r.set("mode", "memory").set("count", double(count)).set("complete", drained ? 1 : 0);
    r.set("enqueue_s", double(t1 - t0) / 1e9).set("stored_s", double(t2 - t0) / 1e9);
    r.set("drain_s", double(t4 - t3) / 1e9).set("drain_msgs_per_s", double(count) / (double(t4 - t3) / 1e9));
    r.set_mem("base", base).set_mem("opened", opened).set_mem("queued_peak", queued_peak);
    r.set_mem("queued_now", queued_now).set_mem("drain_peak", drain_peak).set_mem("end", end);
    r.print();
    c.close();
    return drained ? 0 : 3;
}

// Memory of the per-publish bookkeeping the runtime keeps for a pending publish whose future the caller
// holds (a promise in a map by sequence number), measured alone in a fresh process. post() keeps none, and
// the backlog of publishes waiting on disk is kept as runs of consecutive sequence numbers.
int promise_cost(const args& a) {
    const long count = a.num("count", 1000000);
    const mem before = read_mem();
    std::map<std::uint64_t, std::shared_ptr<std::promise<void>>> promises;
    for (long i = 0; i < count; ++i) promises[std::uint64_t(i)] = std::make_shared<std::promise<void>>();
    const mem with_promises = read_mem();
    result r;
    r.set("mode", "promise-cost").set("count", double(count));
    r.set("promise_map_bytes_each", double(with_promises.anon - before.anon) * 1024.0 / double(count));
    r.print();
    return 0;
}

int recover_fill(const args& a) {
    const long count = a.num("count", 100000);
    const auto size = std::size_t(a.num("size", 100));
    const auto topic = a.str("topic", "bench/rec");
    xymqtt::client c(quiet_options(a));  // never connected: the broker address is dead
    for (long i = 0; i < count; ++i) c.post(topic, make_payload(size, std::uint64_t(i)));
    if (!wait_until([&] { return c.stats().outbox >= std::size_t(count); }, std::chrono::seconds(600)))
        throw std::runtime_error("the outbox never held every message");
    c.close();
    result r;
    r.set("mode", "recover-fill").set("count", double(count));
    r.print();
    return 0;
}

int recover_run(const args& a) {
    const auto t0 = mono_ns();  // process start, for practical purposes
    std::atomic<std::int64_t> first_send{0};
    auto o = quiet_options(a);
    o.hooks.on_packet_send = [&](const std::string&, const std::string&) {
        std::int64_t zero = 0;
        first_send.compare_exchange_strong(zero, mono_ns());
    };
    xymqtt::client c(o);
    const auto t_open = mono_ns();
    const std::size_t pending = c.stats().outbox;
    c.connect();
    if (!c.wait_connected(std::chrono::seconds(30))) throw std::runtime_error("not connected");
    const auto t_conn = mono_ns();
    if (!wait_until([&] { return c.stats().published > 0; }, std::chrono::seconds(60)))
        throw std::runtime_error("nothing was published");
    const auto t_first = mono_ns();
    const bool drained = c.wait_outbox_empty(std::chrono::seconds(a.num("timeout", 600)));
    const auto t_end = mono_ns();
    auto ms = [&](std::int64_t t) { return double(t - t0) / 1e6; };
    result r;
    r.set("mode", "recover-run").set("pending", double(pending)).set("complete", drained ? 1 : 0);
    r.set("open_ms", ms(t_open)).set("connected_ms", ms(t_conn)).set("first_send_ms", ms(first_send.load()));
    r.set("first_complete_ms", ms(t_first)).set("drained_ms", ms(t_end));
    r.set("drain_msgs_per_s", double(pending) / (double(t_end - t_first) / 1e9));
    r.print();
    c.close();
    return drained ? 0 : 3;
}

}  // namespace

int memory_main(const std::string& mode, const args& a) {
    if (mode == "memory") return memory(a);
    if (mode == "promise-cost") return promise_cost(a);
    if (mode == "recover-fill") return recover_fill(a);
    return recover_run(a);
}

}  // namespace bench
