// ping_client: calls the `ping` command (cmd/publisher/ping), like xy-mqtt's "Call commands"
// example. Results arrive through a subscription, not a promise: a call is durable, and its resolve
// or reject may arrive while this program is down (it is then handed over after the restart).
// Calls are made one after another, each waiting for its result; a latency summary ends the run.
//
//   ping_client                                    # a call every 2 s, forever (Ctrl-C stops)
//   ping_client --count 20 --interval-ms 0
//   ping_client --count 3 --cancel-after-ms 200    # against ping_server --delay-ms 2000
//
// Exit status: 0 when all --count calls got a result (resolve, reject, or cancelled by us),
// or on Ctrl-C without --count; 1 on an error or when stopped before; CLI11's codes for a bad
// command line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common.h"

using namespace std::chrono_literals;
using xymqtt::examples::PingRequest;
using xymqtt::examples::PingResult;
using xymqtt::examples::Publisher;
using clock_type = std::chrono::steady_clock;

namespace {

// The nearest-rank percentile `p` (0 < p <= 1) of sorted `values`.
clock_type::duration percentile(const std::vector<clock_type::duration>& values, double p) {
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(values.size())));
    return values[std::max<std::size_t>(rank, 1) - 1];
}

}  // namespace

int main(int argc, char** argv) {
    example::common_flags flags;
    flags.client_id = "ping_client";
    int interval_ms = 2000;
    int count = 0;
    int cancel_after_ms = 0;

    CLI::App app{"Calls the ping command and prints each result and a latency summary."};
    example::add_common_flags(app, flags);
    app.add_option("--interval-ms", interval_ms, "Time between calls; 0 = next call as soon as the last result arrived")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--count", count, "Make this many calls, then exit; 0 = forever")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--cancel-after-ms", cancel_after_ms, "Cancel each call that has no result after this long; 0 = never")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    example::stop_signal stop;  // before the client: its threads must not receive Ctrl-C
    try {
        // Results by message id, filled by the result handlers (guarded by `stop`).
        struct outcome {
            bool resolved = false;
            std::string text;
        };
        std::map<std::string, outcome> results;

        xymqtt::client client(example::client_options(flags, example::print_hooks()));
        Publisher::Client publisher(client, example::publisher_options(flags));
        // Must come before the first call (else call_ping throws call_with_no_subscription): the
        // result topics are subscribed in the persistent session, so results are kept for us.
        publisher.subscribe_ping_results(
            [&](const std::string& message_id, const PingResult& result) {
                stop.update([&] { results[message_id] = {true, result.pong() ? "pong" : "no pong"}; });
            },
            [&](const Publisher::PingRejection& rejection) {
                stop.update([&] {
                    results[rejection.message_id] = {
                        false, "X rejected: " + std::to_string(rejection.status) + " " + rejection.message};
                });
            });
        client.connect();
        example::say("calling " + publisher.ping_topic() + " via " + flags.broker);

        std::vector<clock_type::duration> latencies;
        int resolved = 0, rejected = 0, cancelled = 0, made = 0;
        auto next = clock_type::now();
        while ((count == 0 || made < count) && !stop.requested()) {
            stop.wait_until(next, [] { return false; });  // the interval (cut short by Ctrl-C)
            if (stop.requested()) break;
            next = clock_type::now() + std::chrono::milliseconds(interval_ms);

            const auto start = clock_type::now();
            // Returns once the invoke is durably stored; it is sent as soon as the broker is reachable.
            const xymqtt::call_handle call = publisher.call_ping(PingRequest());
            ++made;
            example::say("call #" + std::to_string(made) + " " + call.message_id());

            const auto has_result = [&] { return results.count(call.message_id()) > 0; };
            const bool answered =
                cancel_after_ms > 0
                    ? stop.wait_until(start + std::chrono::milliseconds(cancel_after_ms), has_result)
                    : stop.wait(has_result);
            if (answered) {
                const auto latency = clock_type::now() - start;
                latencies.push_back(latency);
                const outcome result = stop.read([&] { return results.at(call.message_id()); });
                (result.resolved ? resolved : rejected) += 1;
                example::say("  " + result.text + "  " + example::format_ms(latency));
            } else if (!stop.requested()) {
                // Best effort: a call that already finished is not affected, and a result that
                // crosses the cancel on its way is ignored by this loop.
                call.cancel();
                ++cancelled;
                example::say("  cancelled after " + std::to_string(cancel_after_ms) + " ms");
            }
        }

        // Give the last publishes (a cancel, say) a moment to reach the broker; whatever is left
        // stays in the outbox and is sent at the next start, as do calls still awaiting a result.
        client.wait_outbox_empty(2s);
        client.close();
        std::string summary = std::to_string(made) + " call(s): " + std::to_string(resolved) + " resolved, " +
                              std::to_string(rejected) + " rejected, " + std::to_string(cancelled) + " cancelled";
        if (!latencies.empty()) {
            std::sort(latencies.begin(), latencies.end());
            summary += "; latency p50 " + example::format_ms(percentile(latencies, 0.50)) + ", p99 " +
                       example::format_ms(percentile(latencies, 0.99));
        }
        example::say(summary);
        const bool all_answered = resolved + rejected + cancelled == made;
        if (count > 0) return made == count && all_answered ? 0 : 1;
        return 0;
    } catch (const std::exception& e) {
        example::say(std::string("error: ") + e.what());
        return 1;
    }
}
