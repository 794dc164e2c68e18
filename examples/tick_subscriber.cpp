// tick_subscriber: handles `tick` events (evt/publisher/tick), failing at random so that retries
// are visible, like xy-mqtt's "Subscribe to events" example. A handler that throws gets the same
// tick again later (exponential backoff) and the broker is not acknowledged until one succeeds, so
// no tick is lost: not to failures, not while this program is down (the broker queues for the
// persistent session), not to a kill -9 (the tick is in the store before the broker is told).
//
//   tick_subscriber                                   # handles ticks forever (Ctrl-C stops)
//   tick_subscriber --expect 200 --fail-rate 0.3 --log handled.txt
//
// Exit status: 0 after --expect distinct ticks were handled (or on Ctrl-C without --expect),
// 1 on an error or when stopped before, CLI11's codes for a bad command line.
#include <chrono>
#include <cstdint>
#include <fstream>
#include <set>
#include <stdexcept>

#include "common.h"

using xymqtt::examples::Publisher;
using xymqtt::examples::Tick;

int main(int argc, char** argv) {
    example::common_flags flags;
    flags.client_id = "tick_subscriber";
    double fail_rate = 0.5;
    std::size_t expect = 0;
    std::string log_file;
    int retry_ms = 100;

    CLI::App app{"Handles tick events, failing at random so that retries are visible."};
    example::add_common_flags(app, flags);
    app.add_option("--fail-rate", fail_rate, "Probability that handling a tick fails (and is retried)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--expect", expect, "Exit after this many distinct ticks were handled; 0 = run forever")
        ->capture_default_str();
    app.add_option("--log", log_file, "Append the count of every successfully handled tick to this file");
    app.add_option("--retry-ms", retry_ms, "Delay before the first retry (doubles up to 12.8 s)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    example::stop_signal stop;  // before the client: its threads must not receive Ctrl-C
    try {
        std::ofstream log;
        if (!log_file.empty()) {
            log.open(log_file, std::ios::app);
            if (!log) throw std::runtime_error("cannot open " + log_file);
        }
        std::set<std::int64_t> handled;  // distinct counts handled by this process (guarded by `stop`)

        auto options = example::client_options(flags, example::print_hooks());
        options.retry.initial = std::chrono::milliseconds(retry_ms);
        xymqtt::client client(options);
        Publisher::Client publisher(client, example::publisher_options(flags));

        // Subscribing before connecting: the subscription is made on every connection. Handlers run
        // one at a time, in arrival order, on a thread of the client.
        publisher.subscribe_tick([&](const Tick& tick, const xymqtt::message& delivery) {
            const std::string attempt =
                delivery.attempt > 1 ? " (attempt " + std::to_string(delivery.attempt) + ")" : "";
            if (example::chance(fail_rate)) {
                example::say("tick { " + tick.ShortDebugString() + " } X" + attempt);
                throw std::runtime_error("random failure");  // retried: the tick stays in the inbox
            }
            example::say("tick { " + tick.ShortDebugString() + " } √" + attempt);
            if (log) log << tick.count() << std::endl;  // written before the tick leaves the inbox
            stop.update([&] { handled.insert(tick.count()); });
        });
        client.connect();
        example::say("subscribed to " + publisher.tick_topic() + " via " + flags.broker);

        const bool done = stop.wait([&] { return expect > 0 && handled.size() >= expect; });
        client.close();  // ticks not yet handled stay in the store, and at the broker
        if (done) {
            example::say("handled " + std::to_string(expect) + " distinct ticks");
            return 0;
        }
        example::say("stopped");
        return expect == 0 ? 0 : 1;
    } catch (const std::exception& e) {
        example::say(std::string("error: ") + e.what());
        return 1;
    }
}
