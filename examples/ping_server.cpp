// ping_server: serves the `ping` command (cmd/publisher/ping), like xy-mqtt's "Register commands"
// example. It rejects at random (--fail-rate) and can be slowed down (--delay-ms) so that callers
// have time to cancel; a cancel runs the callback registered with on_cancel, and nothing is
// published for that call afterwards.
//
//   ping_server                        # serves until Ctrl-C
//   ping_server --fail-rate 0 --delay-ms 3000
//   ping_server --fail-rate 0 --delay-ms 10 --concurrency 8   # 8 calls at once
//
// Exit status: 0 on Ctrl-C / SIGTERM, 1 on an error, CLI11's codes for a bad command line.
#include <atomic>
#include <chrono>
#include <future>
#include <memory>

#include "common.h"

using xymqtt::examples::PingRequest;
using xymqtt::examples::PingResult;
using xymqtt::examples::Publisher;

namespace {

// The implementation of the service: one method per command of the schema. Returning resolves the
// call; throwing rejects it (xymqtt::command_error chooses the status and message).
class PingService final : public Publisher::Service {
public:
    PingService(double fail_rate, std::chrono::milliseconds delay) : fail_rate_(fail_rate), delay_(delay) {}

    PingResult ping(const PingRequest&, xymqtt::call_context& context) override {
        const std::string name = "ping #" + std::to_string(++calls_);
        example::say(name + " received");

        // The callback runs on another thread if the caller cancels while we work.
        auto cancelled = std::make_shared<std::promise<void>>();
        auto cancelled_future = cancelled->get_future();
        context.on_cancel([name, cancelled] {
            example::say(name + " cancelled");
            cancelled->set_value();
        });
        // Simulated work that a cancel cuts short.
        if (cancelled_future.wait_for(delay_) == std::future_status::ready) {
            return PingResult();  // not published: the runtime publishes nothing after a cancel
        }

        if (example::chance(fail_rate_)) {
            example::say(name + " X rejected");
            throw xymqtt::command_error(500, "random failure");  // published on .../ping/reject
        }
        example::say(name + " √ pong");
        PingResult result;
        result.set_pong(true);
        return result;  // published on .../ping/resolve
    }

private:
    double fail_rate_;
    std::chrono::milliseconds delay_;
    std::atomic<int> calls_{0};
};

}  // namespace

int main(int argc, char** argv) {
    example::common_flags flags;
    flags.client_id = "ping_server";
    double fail_rate = 0.5;
    int delay_ms = 0;
    unsigned concurrency = 1;

    CLI::App app{"Serves the ping command, rejecting at random."};
    example::add_common_flags(app, flags);
    app.add_option("--fail-rate", fail_rate, "Probability that a call is rejected")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--delay-ms", delay_ms, "Time each call takes (long enough to be cancelled)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--concurrency", concurrency, "Calls served at once (each on its own thread)")
        ->check(CLI::Range(1u, xymqtt::max_concurrency))
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    example::stop_signal stop;  // before the client: its threads must not receive Ctrl-C
    try {
        PingService service(fail_rate, std::chrono::milliseconds(delay_ms));  // outlives the client
        xymqtt::client client(example::client_options(flags, example::print_hooks()));
        auto options = example::publisher_options(flags);
        options.ping_concurrency = concurrency;  // above 1, ping() runs on several threads: it is thread-safe
        Publisher::Server server(client, options);
        // Registers the handlers (subscribes <command>/invoke and /cancel); calls made while this
        // server was down are waiting at the broker and arrive after connecting.
        server.serve(service);
        client.connect();
        example::say("serving " + server.ping_topic() + " via " + flags.broker);

        stop.wait([] { return false; });  // until Ctrl-C or SIGTERM
        // close() and not server.stop(): stop() unregisters the command (unsubscribes at the broker),
        // while a closed client keeps its session, so the broker holds calls made while we are down.
        client.close();
        example::say("stopped");
        return 0;
    } catch (const std::exception& e) {
        example::say(std::string("error: ") + e.what());
        return 1;
    }
}
