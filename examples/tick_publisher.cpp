// tick_publisher: publishes a `tick` event (evt/publisher/tick) every --interval-ms, like xy-mqtt's
// "Publish events" example. Each payload is printed when it is published, and again with √ when its
// QoS 2 flow has completed (the broker has it and will deliver it, also to subscribers that are
// offline now).
//
//   tick_publisher                          # a tick every 2 s, forever (Ctrl-C stops)
//   tick_publisher --count 200 --interval-ms 0
//
// Exit status: 0 when --count ticks were all acknowledged (or on Ctrl-C without --count),
// 1 on an error or when stopped before all were acknowledged, CLI11's codes for a bad command line.
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <utility>

#include "common.h"

using namespace std::chrono_literals;
using xymqtt::examples::Publisher;
using xymqtt::examples::Tick;

namespace {

struct in_flight {
    Tick tick;
    std::future<void> acknowledged;  // ready when the QoS 2 flow is complete (PUBCOMP)
};

// Prints √ for every tick at the front of `ticks` whose QoS 2 flow completes before `deadline`.
// Waits in short steps so that Ctrl-C is noticed while the broker is unreachable.
// @return false if a publish failed (the broker refused it).
bool report_acknowledged(std::deque<in_flight>& ticks, std::chrono::steady_clock::time_point deadline,
                         const example::stop_signal& stop) {
    while (!ticks.empty() && !stop.requested()) {
        const auto step = std::min(deadline, std::chrono::steady_clock::now() + 100ms);
        if (ticks.front().acknowledged.wait_until(step) != std::future_status::ready) {
            if (std::chrono::steady_clock::now() >= deadline) return true;
            continue;
        }
        try {
            ticks.front().acknowledged.get();
            example::say("tick { " + ticks.front().tick.ShortDebugString() + " } √");
        } catch (const xymqtt::error& e) {
            example::say("tick { " + ticks.front().tick.ShortDebugString() + " } X " + e.what());
            return false;
        }
        ticks.pop_front();
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    example::common_flags flags;
    flags.client_id = "tick_publisher";
    int interval_ms = 2000;
    std::int64_t count = 0;

    CLI::App app{"Publishes a tick event every --interval-ms (QoS 2, durable outbox)."};
    example::add_common_flags(app, flags);
    app.add_option("--interval-ms", interval_ms,
                   "Time between ticks; 0 = as fast as the durable path allows (no waiting for acknowledgements)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--count", count, "Publish this many ticks, then exit when all are acknowledged; 0 = forever")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    example::stop_signal stop;  // before the client: its threads must not receive Ctrl-C
    try {
        xymqtt::client client(example::client_options(flags, example::print_hooks()));
        Publisher::Server publisher(client, example::publisher_options(flags));
        // Publishing does not wait for the connection: a tick is stored in the outbox first and
        // sent as soon as the broker is reachable.
        client.connect();
        example::say("publishing on " + publisher.tick_topic() + " via " + flags.broker);

        const std::string started = example::iso8601_now();  // xy-mqtt's timestamp: the start time
        std::deque<in_flight> ticks;  // published, not yet acknowledged
        std::int64_t published = 0;
        auto next = std::chrono::steady_clock::now();
        while ((count == 0 || published < count) && !stop.requested()) {
            Tick tick;
            tick.set_timestamp(started);
            tick.set_count(++published);
            // Returns once the tick is durably stored; the future tells when the broker has it.
            ticks.push_back({tick, publisher.publish_tick(tick)});
            example::say("tick { " + tick.ShortDebugString() + " }");
            next += std::chrono::milliseconds(interval_ms);
            if (!report_acknowledged(ticks, next, stop)) return 1;
        }
        // Every tick published: wait for the remaining acknowledgements.
        if (!report_acknowledged(ticks, std::chrono::steady_clock::time_point::max(), stop)) return 1;
        client.close();  // what is not acknowledged stays in the outbox and is sent at the next start
        if (count > 0 && published == count && ticks.empty()) {
            example::say("all " + std::to_string(count) + " ticks acknowledged");
            return 0;
        }
        example::say("stopped; " + std::to_string(ticks.size()) + " tick(s) not yet acknowledged stay in the outbox");
        return count == 0 ? 0 : 1;
    } catch (const std::exception& e) {
        example::say(std::string("error: ") + e.what());
        return 1;
    }
}
