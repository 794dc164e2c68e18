// The four examples, run as processes against a private Mosquitto (the project's config, with
// subscriptions logged so that a test can wait until a subscription exists instead of sleeping).
#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/broker.h"
#include "support/child_process.h"
#include "support/eventually.h"
#include "support/temp_dir.h"

using namespace std::chrono_literals;
using xymqtt::test::broker;
using xymqtt::test::child_process;
using xymqtt::test::eventually;
using xymqtt::test::temp_dir;

namespace {

using args = std::vector<std::string>;

// A private broker that logs every subscription ("<client id> <qos> <filter>").
class example_broker : public broker {
public:
    example_broker() : broker("log_type subscribe\n") {}

    // Waits until the broker has the subscription: messages published after that reach the session.
    bool has_subscription(const std::string& client_id, const std::string& filter) {
        return eventually([&] { return log().find(" " + client_id + " 2 " + filter + "\n") != std::string::npos; },
                          15s);
    }

    ~example_broker() { CHECK(errors().empty()); }
};

// Starts an example with --broker and --store set (store: a directory named after the client id).
std::unique_ptr<child_process> run(const std::string& program, const std::string& client_id, const broker& b,
                                   const temp_dir& dir, args more) {
    args argv{program, "--broker", b.uri(), "--client-id", client_id, "--store", dir / ("store-" + client_id)};
    argv.insert(argv.end(), more.begin(), more.end());
    return std::make_unique<child_process>(argv);
}

// The counts logged by tick_subscriber --log.
std::multiset<long> logged_counts(const std::string& path) {
    std::multiset<long> counts;
    std::ifstream in(path);
    for (long count; in >> count;) counts.insert(count);
    return counts;
}

bool has_all_counts(const std::multiset<long>& counts, long n) {
    for (long i = 1; i <= n; ++i)
        if (counts.count(i) == 0) return false;
    return true;
}

std::size_t lines_containing(const child_process& p, const std::string& text) {
    std::size_t n = 0;
    for (const auto& line : p.lines()) n += line.find(text) != std::string::npos;
    return n;
}

}  // namespace

TEST_CASE("every tick is handled although the handler fails 30% of the time", "[examples][events]") {
    const std::string format = GENERATE("binary", "json");
    CAPTURE(format);
    example_broker b;
    temp_dir dir("examples-ticks");
    const std::string log = dir / "handled.log";

    auto sub = run(TICK_SUBSCRIBER, "tick_subscriber", b, dir,
                   {"--expect", "200", "--fail-rate", "0.3", "--retry-ms", "5", "--log", log, "--format", format});
    REQUIRE(b.has_subscription("tick_subscriber", "evt/publisher/tick"));
    auto pub = run(TICK_PUBLISHER, "tick_publisher", b, dir, {"--count", "200", "--interval-ms", "0", "--format", format});

    const auto pub_status = pub->wait(60s);
    INFO("tick_publisher:\n" << pub->output());
    REQUIRE(pub_status == 0);
    CHECK(lines_containing(*pub, "} √") == 200);
    CHECK(pub->lines().back() == "all 200 ticks acknowledged");

    const auto sub_status = sub->wait(60s);
    INFO("tick_subscriber:\n" << sub->output());
    REQUIRE(sub_status == 0);
    CHECK(has_all_counts(logged_counts(log), 200));
    CHECK(lines_containing(*sub, "↻ evt/publisher/tick") > 0);  // retries are visible
    CHECK(sub->lines().back() == "handled 200 distinct ticks");
}

TEST_CASE("a subscriber killed with SIGKILL and restarted on its store logs every tick", "[examples][events][crash]") {
    example_broker b;
    temp_dir dir("examples-kill");
    const std::string log = dir / "handled.log";
    // process durability survives a killed process (not a power loss); --retry-ms 20 slows it down
    // enough to be killed in the middle of the run.
    const args sub_args{"--fail-rate", "0.3", "--retry-ms", "20", "--log", log, "--durability", "process"};

    auto sub = run(TICK_SUBSCRIBER, "tick_subscriber", b, dir, sub_args);
    REQUIRE(b.has_subscription("tick_subscriber", "evt/publisher/tick"));
    auto pub = run(TICK_PUBLISHER, "tick_publisher", b, dir, {"--count", "200", "--interval-ms", "0"});

    REQUIRE(eventually([&] { return logged_counts(log).size() >= 30; }, 30s));
    sub->kill(SIGKILL);
    REQUIRE(sub->wait(10s) == 128 + SIGKILL);
    INFO("first tick_subscriber:\n" << sub->output());

    // The publisher is not affected: the broker queues for the subscriber's persistent session.
    const auto pub_status = pub->wait(60s);
    INFO("tick_publisher:\n" << pub->output());
    REQUIRE(pub_status == 0);

    auto restarted = run(TICK_SUBSCRIBER, "tick_subscriber", b, dir, sub_args);
    const bool all = eventually([&] { return has_all_counts(logged_counts(log), 200); }, 60s);
    restarted->kill(SIGTERM);
    const auto status = restarted->wait(20s);
    INFO("restarted tick_subscriber:\n" << restarted->output());
    CHECK(all);
    CHECK(status == 0);  // SIGTERM stops it cleanly
    CHECK(lines_containing(*restarted, "connected (session present)") >= 1);
}

TEST_CASE("ping_client gets a resolve or a reject for each of 20 calls", "[examples][commands]") {
    const std::string format = GENERATE("binary", "json");
    CAPTURE(format);
    example_broker b;
    temp_dir dir("examples-ping");

    auto server = run(PING_SERVER, "ping_server", b, dir, {"--fail-rate", "0.5", "--format", format});
    REQUIRE(b.has_subscription("ping_server", "cmd/publisher/ping/invoke"));
    auto client = run(PING_CLIENT, "ping_client", b, dir, {"--count", "20", "--interval-ms", "0", "--format", format});

    const auto status = client->wait(60s);
    INFO("ping_client:\n" << client->output());
    REQUIRE(status == 0);
    const std::size_t pongs = lines_containing(*client, "  pong  ");
    const std::size_t rejects = lines_containing(*client, "  X rejected: 500 random failure");
    CHECK(pongs + rejects == 20);
    CHECK(client->lines().back().find("20 call(s): ") == 0);
    CHECK(client->lines().back().find("p50") != std::string::npos);
    CHECK(client->lines().back().find("p99") != std::string::npos);

    server->kill(SIGTERM);
    const auto server_status = server->wait(20s);
    INFO("ping_server:\n" << server->output());
    CHECK(server_status == 0);
    CHECK(lines_containing(*server, "√ pong") == pongs);
    CHECK(lines_containing(*server, "X rejected") == rejects);
}

TEST_CASE("ping_client keeps 8 calls outstanding with its own result topic and ping_server runs 4 at once",
          "[examples][commands]") {
    example_broker b;
    temp_dir dir("examples-outstanding");

    auto server = run(PING_SERVER, "ping_server", b, dir,
                      {"--fail-rate", "0", "--delay-ms", "200", "--concurrency", "4"});
    REQUIRE(b.has_subscription("ping_server", "cmd/publisher/ping/invoke"));
    auto client = run(PING_CLIENT, "ping_client", b, dir,
                      {"--count", "20", "--interval-ms", "0", "--outstanding", "8", "--results", "per-client"});

    const auto status = client->wait(60s);
    INFO("ping_client:\n" << client->output());
    REQUIRE(status == 0);
    CHECK(lines_containing(*client, "  pong  ") == 20);
    CHECK(client->lines().back().find("20 call(s): 20 resolved") == 0);
    CHECK(b.has_subscription("ping_client", "xymqtt/results/ping_client/#"));

    server->kill(SIGTERM);
    REQUIRE(server->wait(20s) == 0);
    INFO("ping_server:\n" << server->output());
    // Calls at work at once: received and not yet answered, as the server printed them.
    int at_work = 0, most = 0;
    for (const auto& line : server->lines()) {
        if (line.find(" received") != std::string::npos) most = std::max(most, ++at_work);
        if (line.find("√ pong") != std::string::npos) --at_work;
    }
    CHECK(most == 4);
    CHECK(lines_containing(*server, "√ pong") == 20);
}

TEST_CASE("ping_client cancels slow calls and ping_server runs its on_cancel callback", "[examples][commands]") {
    example_broker b;
    temp_dir dir("examples-cancel");

    auto server = run(PING_SERVER, "ping_server", b, dir, {"--fail-rate", "0", "--delay-ms", "3000"});
    REQUIRE(b.has_subscription("ping_server", "cmd/publisher/ping/cancel"));
    REQUIRE(b.has_subscription("ping_server", "cmd/publisher/ping/invoke"));
    auto client =
        run(PING_CLIENT, "ping_client", b, dir, {"--count", "2", "--interval-ms", "0", "--cancel-after-ms", "500"});

    const auto status = client->wait(60s);
    INFO("ping_client:\n" << client->output());
    REQUIRE(status == 0);
    CHECK(lines_containing(*client, "cancelled after 500 ms") == 2);
    CHECK(client->lines().back().find("2 call(s): 0 resolved, 0 rejected, 2 cancelled") == 0);

    // Each call was cut short by its cancel (3 s otherwise), and nothing was published for it. The
    // last cancel is stored before cancel() returns, so it goes out before the client exits.
    CHECK(server->wait_for_line("ping #2 cancelled", 20s));
    server->kill(SIGTERM);
    const auto server_status = server->wait(20s);
    INFO("ping_server:\n" << server->output());
    CHECK(server_status == 0);
    CHECK(lines_containing(*server, "ping #1 cancelled") == 1);
    CHECK(lines_containing(*server, "pong") == 0);
}

TEST_CASE("the examples explain their flags and refuse bad ones", "[examples][cli]") {
    for (const std::string program : {TICK_PUBLISHER, TICK_SUBSCRIBER, PING_SERVER, PING_CLIENT}) {
        CAPTURE(program);
        child_process help({program, "--help"});
        REQUIRE(help.wait(10s) == 0);
        for (const char* flag : {"--broker", "--client-id", "--store", "--format", "--durability", "--system"})
            CHECK(help.output().find(flag) != std::string::npos);

        child_process bad_format({program, "--format", "xml"});
        CHECK(bad_format.wait(10s) != 0);
        child_process bad_token({program, "--system", "a/b"});
        CHECK(bad_token.wait(10s) != 0);
    }
}
