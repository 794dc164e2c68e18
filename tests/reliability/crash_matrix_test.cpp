// The crash matrix: publisher, subscriber, command server and caller run as separate processes
// (rel_agent), each on its own store; one of them, chosen at random, is killed with SIGKILL at a random
// moment, over and over, while the events and calls flow, and restarted on its store. Afterwards a
// checker in the style of a total-queue check reads the journals and counts, per message:
//   published  = acknowledged to the publisher (its future completed: the broker has it, PUBCOMP)
//   handled    = the subscriber's handler ran for it (at least once)
//   lost       = published and never handled                       -> must be 0
//   re-handled = handler runs beyond the first                      -> bounded by the kills (below)
//   unconfirmed= handled, but the publisher died before it recorded the acknowledgement (fine)
//   not accepted = tried, never handled: the publisher died before the store commit, so no future
//                  ever completed for it (the application was never told it was accepted)
// and the same for calls (accepted = call() returned, so the call is stored; answered = the caller's
// result handler ran).
//
// Why re-handling is bounded, per role (see docs/reliability.md for the full argument):
//  - subscriber kill: a lane handles one message at a time and removes it from the inbox (one commit)
//    before the next; a QoS 2 redelivery of a committed message is stopped by Paho's own inbound record. So a
//    kill can only repeat the message whose handler ran but whose removal was not committed: <= 1 per
//    kill per lane (one lane here).
//  - publisher kill: only outbox records are ever sent again (Paho also resends the flows it had
//    persisted, and the outbox sends them once more: finding F10), and those the broker had already
//    accepted (PUBCOMP received but the removal not yet committed, or PUBLISH delivered but not yet
//    persisted by Paho) arrive twice. So a kill adds <= the outbox size at restart, which the
//    restarted agent records ("boot <outbox> ..."); with batches of B awaited before the next, that is
//    <= 2B (one batch in flight plus the removals of the previous one still queued).
//  - server kill: the invoke being handled runs again (<= 1 per kill); repeated invokes (a caller's
//    resend) are answered from the stored result without running the handler.
//  - caller kill: the result handler that ran but whose removal was not committed runs again
//    (<= 1 per kill); duplicate results are ignored once the call is removed from the calls table.
//
// Parameters (environment): XYMQTT_REL_KILLS (50), XYMQTT_REL_EVENTS (10000), XYMQTT_REL_CALLS (1000),
// XYMQTT_REL_SEED (random, printed), XYMQTT_REL_DURABILITY (process | fsync), XYMQTT_REL_MEAN_MS (250,
// mean time between kills).
#include <catch2/catch.hpp>
#include <random>

#include "rel_util.h"
#include "tcp_proxy.h"
#include "support/child_process.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

namespace {

struct role {
    std::string name;
    std::vector<std::string> argv;
    std::string journal;
    std::unique_ptr<child_process> proc;
    int kills = 0;
    int kills_in_flow = 0;

    void start() {
        proc = std::make_unique<child_process>(argv);
        if (!proc->wait_for_line("ready", 30s)) {
            proc->kill();
            proc->wait();
            FAIL(name << " did not start: " << proc->output());
        }
    }
    void kill() {
        proc->kill(SIGKILL);
        proc->wait();
        ++kills;
    }
};

std::size_t count_table(const std::string& dir, table t) {
    auto s = open_lmdb_store(dir, store_options{durability::process});
    return s->count(t);
}

}  // namespace

namespace {

enum class fault { kill, broker_restart, network };

// The faults: SIGKILL of a random role, a graceful stop and start of the broker, or network faults
// injected by a TCP proxy between every role and the broker.
void run_matrix(fault mode) {
    const bool broker_restarts = mode == fault::broker_restart, network = mode == fault::network;
    const auto kills_wanted = broker_restarts ? env_number("XYMQTT_REL_RESTARTS", 6)
                              : network       ? env_number("XYMQTT_REL_NET_FAULTS", 20)
                                              : env_number("XYMQTT_REL_KILLS", 50);
    const long events = static_cast<long>(env_number("XYMQTT_REL_EVENTS", 10000));
    const long calls = static_cast<long>(env_number("XYMQTT_REL_CALLS", 1000));
    const auto mean_ms = broker_restarts ? 1500 : network ? 500 : env_number("XYMQTT_REL_MEAN_MS", 250);
    const std::string durability_name = env_string("XYMQTT_REL_DURABILITY", "process");
    const std::uint64_t seed = env_number("XYMQTT_REL_SEED", std::random_device{}());
    const char* what = broker_restarts ? "broker restarts" : network ? "network faults" : "crash matrix";
    std::printf("%s: seed %llu (XYMQTT_REL_SEED=%llu to replay the schedule), %llu kills, %ld events, %ld calls, "
                "durability %s\n",
                what, (unsigned long long)seed, (unsigned long long)seed, (unsigned long long)kills_wanted, events, calls,
                durability_name.c_str());
    std::fflush(stdout);
    std::mt19937_64 rng(seed);

    temp_dir dir("crash-matrix");
    broker b;
    const std::string base = "rel/" + unique_id("cm");
    const std::string topic = base + "/ev", command = base + "/cmd/work";
    // Each kill-and-restart cycle takes about mean_ms plus a restart (~100 ms): plan the streams to
    // last past the planned kills, so that the kills fall while messages flow.
    const auto duration_ms = std::to_string(kills_wanted * (mean_ms + (broker_restarts ? 1500 : network ? 900 : 150)));
    std::unique_ptr<tcp_proxy> proxy;
    if (network) proxy = std::make_unique<tcp_proxy>(b.port(), seed);
    const std::string agent_uri = network ? proxy->uri() : b.uri();
    auto common = [&](const std::string& name) {
        return std::vector<std::string>{REL_AGENT, name == "publisher" ? "pub" : name == "subscriber" ? "sub"
                                                                       : name == "server"    ? "serve"
                                                                                             : "call",
                                        "--broker", agent_uri, "--id", base + "-" + name, "--store", dir / name,
                                        "--journal", dir / (name + ".journal"), "--durability", durability_name};
    };
    std::vector<role> roles(4);
    roles[0].name = "publisher";
    roles[1].name = "subscriber";
    roles[2].name = "server";
    roles[3].name = "caller";
    for (auto& r : roles) {
        r.argv = common(r.name);
        r.journal = dir / (r.name + ".journal");
    }
    roles[0].argv.insert(roles[0].argv.end(), {"--topic", topic, "--total", std::to_string(events), "--duration-ms",
                                               duration_ms, "--batch", "50"});
    roles[1].argv.insert(roles[1].argv.end(), {"--filter", topic});
    roles[2].argv.insert(roles[2].argv.end(), {"--command", command});
    roles[3].argv.insert(roles[3].argv.end(), {"--command", command, "--total", std::to_string(calls), "--duration-ms",
                                               duration_ms, "--outstanding", "20"});
    auto& pub = roles[0];
    auto& sub = roles[1];
    auto& srv = roles[2];
    auto& caller = roles[3];

    // Subscriber and server first, and their subscriptions live at the broker, before anything flows.
    sub.start();
    srv.start();
    {
        auto probe = connected(options_for(dir, "probe", b.uri()));
        REQUIRE(eventually([&] {
            probe->publish(topic, "probe").get();
            return eventually([&] { return journal_has(sub.journal, "h", "probe"); }, 500ms);
        }, 30s));
        REQUIRE(eventually([&] {
            try {
                probe->call_async(command, "{}", call_options{wire_format::json, {}, {}}, 1s).result.get();
                return true;
            } catch (const timeout_error&) {
                return false;
            }
        }, 30s));
    }
    const auto t0 = std::chrono::steady_clock::now();
    pub.start();
    caller.start();

    auto finished = [&](role& r) { return journal_has(r.journal, "fin"); };
    std::uniform_int_distribution<std::uint64_t> delay(0, 2 * mean_ms);
    std::uniform_int_distribution<int> pick(0, 3);
    std::uint64_t total_kills = 0, kills_in_flow = 0;
    std::string schedule;
    while (true) {
        const bool flowing = !finished(pub) || !finished(caller);
        if (!flowing && total_kills >= kills_wanted) break;
        // A stream that cannot finish (a call never answered: lost) must not keep the loop going forever.
        if (total_kills >= 3 * kills_wanted) break;
        const auto wait = std::chrono::milliseconds(delay(rng));
        auto& victim = roles[static_cast<std::size_t>(pick(rng))];
        // The random moment: this sleep IS the fault schedule, not a wait for a condition.
        std::this_thread::sleep_for(wait);
        const bool in_flow = !finished(pub) || !finished(caller);
        if (network) {
            // The fault schedule: these sleeps set how long a fault lasts, they await nothing.
            const auto d = std::chrono::milliseconds(100 + std::int64_t(delay(rng) % 600));
            switch (pick(rng)) {
                case 0:
                    proxy->cut_all();
                    schedule += "cut ";
                    break;
                case 1:
                    proxy->random_cuts(4096);
                    proxy->cut_all();
                    std::this_thread::sleep_for(d);
                    proxy->random_cuts(0);
                    schedule += "cuts-at-random-bytes ";
                    break;
                case 2:
                    proxy->stall(true);
                    std::this_thread::sleep_for(d);
                    proxy->stall(false);
                    schedule += "stall ";
                    break;
                default:
                    proxy->slow(64, 1ms);
                    std::this_thread::sleep_for(d);
                    proxy->slow(0);
                    schedule += "slow ";
                    break;
            }
            ++total_kills;
            if (in_flow) ++kills_in_flow;
            continue;
        }
        if (broker_restarts) {
            // Graceful: Mosquitto saves its sessions and in-flight messages, every client reconnects.
            b.stop();
            b.start();
            ++total_kills;
            if (in_flow) ++kills_in_flow;
            schedule += "broker@" + std::to_string(wait.count()) + " ";
            continue;
        }
        victim.kill();
        ++total_kills;
        if (in_flow) {
            ++kills_in_flow;
            ++victim.kills_in_flow;
        }
        schedule += victim.name.substr(0, 3) + "@" + std::to_string(wait.count()) + " ";
        victim.start();
    }
    const double flow_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // Drain: every role finishes; a marker published after everything proves the subscriber has
    // received all the broker had queued for it (one subscriber session delivers in order).
    // Not a REQUIRE: if a stream cannot finish, the checker below says what is missing.
    const bool all_finished = eventually([&] { return finished(pub) && finished(caller); }, 120s);
    INFO("publisher finished " << finished(pub) << ", caller finished " << finished(caller));
    CHECK(all_finished);
    {
        auto probe = connected(options_for(dir, "probe", b.uri()));
        probe->publish(topic, "end").get();
    }
    REQUIRE(eventually([&] { return journal_has(sub.journal, "h", "end"); }, 120s));
    for (auto& r : roles) {
        // The subscriber stops gracefully: the last handled delivery's removal may still be waiting to be
        // stored (the writer batches removals), and this checks that nothing else is left behind.
        r.proc->kill(r.name == "subscriber" ? SIGTERM : SIGKILL);
        r.proc->wait();
    }
    // Nothing left behind in any store.
    CHECK(count_table(dir / "publisher", table::outgoing) == 0);
    CHECK(count_table(dir / "subscriber", table::incoming) == 0);
    CHECK(count_table(dir / "server", table::incoming) == 0);
    CHECK(count_table(dir / "server", table::outgoing) == 0);
    CHECK(count_table(dir / "caller", table::calls) == 0);
    CHECK(count_table(dir / "caller", table::outgoing) == 0);
    CHECK(count_table(dir / "subscriber", table::dead_letters) == 0);
    CHECK(count_table(dir / "caller", table::dead_letters) == 0);

    // ---- the checker
    std::vector<char> tried(static_cast<std::size_t>(events), 0), acked(static_cast<std::size_t>(events), 0);
    std::vector<int> handled(static_cast<std::size_t>(events), 0);
    std::uint64_t pub_boot_outbox = 0, stray = 0;
    for (const auto& r : journal_records(pub.journal)) {
        if (r[0] == "t")
            for (long i = std::stol(r[1]); i < std::stol(r[2]); ++i) tried[std::size_t(i)] = 1;
        if (r[0] == "a") acked[std::size_t(std::stol(r[1]))] = 1;
        if (r[0] == "boot") pub_boot_outbox += std::stoull(r[1]);
    }
    std::uint64_t sub_boot_inbox = 0;
    for (const auto& r : journal_records(sub.journal)) {
        if (r[0] == "boot" && r.size() >= 3) sub_boot_inbox += std::stoull(r[2]);
        if (r[0] != "h" || r[1] == "probe" || r[1] == "end") continue;
        const long n = std::stol(r[1]);
        if (n < 0 || n >= events) {
            ++stray;
            continue;
        }
        ++handled[std::size_t(n)];
    }
    std::uint64_t published = 0, handled_unique = 0, lost = 0, rehandled = 0, unconfirmed = 0, not_accepted = 0,
                  untried = 0;
    std::string lost_ids;
    for (long i = 0; i < events; ++i) {
        const auto k = std::size_t(i);
        published += acked[k];
        handled_unique += handled[k] > 0;
        if (acked[k] && !handled[k]) {
            if (lost < 20) lost_ids += std::to_string(i) + " ";
            ++lost;
        }
        if (handled[k] > 1) rehandled += std::uint64_t(handled[k] - 1);
        if (handled[k] && !acked[k]) ++unconfirmed;
        if (tried[k] && !acked[k] && !handled[k]) ++not_accepted;
        if (handled[k] && !tried[k]) ++untried;
    }

    std::map<std::string, int> call_k;  // message id -> k
    std::map<std::string, int> results, runs;
    std::uint64_t caller_boot_outbox = 0;
    long calls_tried = 0;
    for (const auto& r : journal_records(caller.journal)) {
        if (r[0] == "ct") calls_tried = std::max(calls_tried, std::stol(r[1]) + 1);
        if (r[0] == "c") call_k[r[2]] = std::stoi(r[1]);
        if (r[0] == "r") {
            ++results[r[1]];
            CHECK(r[2] == "ok");
        }
        if (r[0] == "boot") caller_boot_outbox += std::stoull(r[1]);
    }
    for (const auto& r : journal_records(srv.journal))
        if (r[0] == "s") ++runs[r[1]];
    std::uint64_t calls_lost = 0, results_rehandled = 0, server_reruns = 0, results_unjournalled = 0;
    for (const auto& [id, k] : call_k)
        if (!results.count(id)) ++calls_lost;
    for (const auto& [id, n] : results) {
        results_rehandled += std::uint64_t(n - 1);
        if (!call_k.count(id)) ++results_unjournalled;
    }
    for (const auto& [id, n] : runs) server_reruns += std::uint64_t(n - 1);

    // A broker restart cuts the publisher's connection with up to a window (half the broker's receive
    // maximum of 100) of publishes in flight; the outbox sends them again (finding F10: Paho's own resume
    // of them is not tracked), and those the broker had already taken arrive twice.
    const std::uint64_t restart_dups = broker_restarts || network ? total_kills * 50 : 0;
    // A killed subscriber runs again what its inbox held at the restart (the delivery at work, and with
    // fsync up to 64 handled ones whose removal was not stored yet), and, with fsync, up to its receive
    // maximum (8) of stored messages whose acknowledgement had not left: the broker sends those again.
    const std::uint64_t sub_window = durability_name == "fsync" ? 8 : 1;
    const std::uint64_t event_bound = std::uint64_t(sub.kills) * sub_window + sub_boot_inbox + pub_boot_outbox + restart_dups;
    char buf[2048];
    std::snprintf(buf, sizeof buf,
                  "%s (seed %llu, durability %s, one client per process): %llu %s in %.1f s (%llu while messages flowed: "
                  "publisher %d, subscriber %d, server %d, caller %d)\n"
                  "  events: tried %ld, published (acked) %llu, handled %llu, LOST %llu, re-handled %llu "
                  "(bound %llu = %d subscriber kills x %llu + %llu in its inbox at restarts + %llu outbox records re-sent after %d "
                  "publisher restarts + %llu "
                  "for reconnects), "
                  "unconfirmed %llu, not accepted %llu\n"
                  "  calls: tried %ld, accepted %zu, answered %zu, LOST %llu, results re-handled %llu (bound %d caller "
                  "kills), handler re-runs %llu (bound %d server kills), handler runs %zu, results for "
                  "unjournalled calls %llu",
                  what, (unsigned long long)seed, durability_name.c_str(), (unsigned long long)total_kills,
                  broker_restarts ? "broker restarts" : network ? "network faults" : "kills", flow_s,
                  (unsigned long long)kills_in_flow, pub.kills, sub.kills, srv.kills, caller.kills, events,
                  (unsigned long long)published, (unsigned long long)handled_unique, (unsigned long long)lost,
                  (unsigned long long)rehandled, (unsigned long long)event_bound, sub.kills, (unsigned long long)sub_window,
                  (unsigned long long)sub_boot_inbox, (unsigned long long)pub_boot_outbox, pub.kills, (unsigned long long)restart_dups,
                  (unsigned long long)unconfirmed,
                  (unsigned long long)not_accepted, calls_tried, call_k.size(), results.size(),
                  (unsigned long long)calls_lost, (unsigned long long)results_rehandled, caller.kills,
                  (unsigned long long)server_reruns, srv.kills, runs.size(), (unsigned long long)results_unjournalled);
    std::printf("%s\n  schedule: %s\n", buf, schedule.c_str());
    if (lost) std::printf("  lost events (first 20): %s\n", lost_ids.c_str());
    std::fflush(stdout);
    report_line(buf);
    INFO(buf);
    INFO("broker errors: " << b.errors());

    CHECK(total_kills >= kills_wanted);
    CHECK(kills_in_flow >= kills_wanted);
    CHECK(published + unconfirmed + not_accepted == std::uint64_t(events));
    CHECK(lost == 0);
    CHECK(stray == 0);
    CHECK(untried == 0);
    CHECK(rehandled <= event_bound);
    CHECK(calls_lost == 0);
    CHECK(long(call_k.size()) + long(results_unjournalled) >= calls - caller.kills);
    CHECK(results_rehandled <= std::uint64_t(caller.kills));
    CHECK(server_reruns <= std::uint64_t(srv.kills));
    CHECK(b.errors().empty());
}

}  // namespace

TEST_CASE("crash matrix: SIGKILL of publisher, subscriber, server and caller loses nothing", "[crash][matrix]") {
    run_matrix(fault::kill);
}

// The supported form of finding F7's scenario: each client in its own process (with several clients in
// one process, Paho C 1.3 re-sends every client's in-flight packets when one of them reconnects).
TEST_CASE("broker restarted gracefully again and again, one client per process: nothing lost, every call answered",
          "[broker][matrix]") {
    run_matrix(fault::broker_restart);
}

// Network faults with one client per process: every role reaches the broker through a TCP proxy that
// cuts all connections, cuts each after a random number of bytes (inside MQTT packets), stalls, or
// trickles 64 bytes per millisecond. (network_fault_test.cpp has the same faults with four clients in one
// process, Paho finding F7.)
TEST_CASE("network faults, one client per process: cuts at random bytes, stalls and slow links lose nothing",
          "[network][matrix]") {
    run_matrix(fault::network);
}
