// ping_client: calls the `ping` command (cmd/publisher/ping), like xy-mqtt's "Call commands"
// example. Results arrive through a subscription, not a promise: a call is durable, and its resolve
// or reject may arrive while this program is down (it is then handed over after the restart).
// Calls are made one after another, each waiting for its result (--outstanding K: up to K await their
// results at once); a latency summary ends the run.
//
//   ping_client                                    # a call every 2 s, forever (Ctrl-C stops)
//   ping_client --count 20 --interval-ms 0
//   ping_client --count 1000 --interval-ms 0 --outstanding 64
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
    int outstanding = 1;
    std::string result_topics = "shared";

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
    app.add_option("--outstanding", outstanding, "Calls awaiting their result at once (the next is made as one is answered)")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
    app.add_option("--results", result_topics, "Where servers send our results: shared (<command>/resolve|reject, "
                                         "as xy-mqtt) or per-client (our own topic; MQTT 5)")
        ->check(CLI::IsMember({"shared", "per-client"}))
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

        auto options = example::client_options(flags, example::print_hooks());
        if (result_topics == "per-client") options.results = xymqtt::result_routing::per_client;
        xymqtt::client client(options);
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
        // The calls without a result yet, by message id: at most --outstanding of them.
        struct open_call {
            xymqtt::call_handle handle;
            clock_type::time_point start;
        };
        std::map<std::string, open_call> open;
        auto next = clock_type::now();
        while (!stop.requested()) {
            const auto more = [&] { return (count == 0 || made < count) && open.size() < std::size_t(outstanding); };
            while (more() && clock_type::now() >= next) {
                next = clock_type::now() + std::chrono::milliseconds(interval_ms);
                // Returns once the invoke is durably stored; it is sent as soon as the broker is reachable.
                xymqtt::call_handle call = publisher.call_ping(PingRequest());
                ++made;
                example::say("call #" + std::to_string(made) + " " + call.message_id());
                open.emplace(call.message_id(), open_call{call, clock_type::now()});
            }
            if (open.empty() && !more()) break;

            // Until a result of an open call arrives, the next call is due, or an open call's cancel is.
            std::optional<clock_type::time_point> until;
            if (more()) until = next;
            if (cancel_after_ms > 0)
                for (const auto& [id, c] : open) {
                    const auto at = c.start + std::chrono::milliseconds(cancel_after_ms);
                    if (!until || at < *until) until = at;
                }
            const auto answered = [&] {
                for (const auto& [id, c] : open)
                    if (results.count(id)) return true;
                return false;
            };
            if (until)
                stop.wait_until(*until, answered);
            else
                stop.wait(answered);

            const auto now = clock_type::now();
            for (auto it = open.begin(); it != open.end();) {
                const auto result = stop.read([&]() -> std::optional<outcome> {
                    auto r = results.find(it->first);
                    if (r == results.end()) return std::nullopt;
                    auto o = r->second;
                    results.erase(r);
                    return o;
                });
                if (result) {
                    const auto latency = now - it->second.start;
                    latencies.push_back(latency);
                    (result->resolved ? resolved : rejected) += 1;
                    example::say("  " + result->text + "  " + example::format_ms(latency) + "  " + it->first);
                    it = open.erase(it);
                } else if (cancel_after_ms > 0 && now >= it->second.start + std::chrono::milliseconds(cancel_after_ms)) {
                    // Best effort: a call that already finished is not affected, and a result that
                    // crosses the cancel on its way is ignored by this loop.
                    it->second.handle.cancel();
                    ++cancelled;
                    example::say("  cancelled after " + std::to_string(cancel_after_ms) + " ms  " + it->first);
                    it = open.erase(it);
                } else {
                    ++it;
                }
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
