// The history checker's worker (tests/reliability/history_test.cpp): one role per process, with K clients
// in the process, killed with SIGKILL at random moments and restarted on the same stores.
//
//   hist_agent pub   --broker U --id ID --store DIR --journal FILE --base B --total N [--rate R] [--batch B]
//                    [--size S]
//   hist_agent sub   --broker U --id ID --store DIR --journal FILE --base B [--overlap 1]
//   hist_agent serve --broker U --id ID --store DIR --journal FILE --base B [--concurrency N]
//   hist_agent call  --broker U --id ID --store DIR --journal FILE --base B --total N [--outstanding K]
//                    [--resend-ms MS]
//   common: [--clients K] (1) [--mqtt 4|5] (5) [--store-kind lmdb|sqlite] (lmdb)
//           [--durability process|fsync] (process)
//
// Client c of a process has id ID-c and store DIR/c. Publisher client c publishes N events, payload "<n>"
// (then S bytes of padding), on B/c/ev, as fast as batches of --batch (100) complete, or at R events per
// second; subscriber client c subscribes B/c/# (subscription 0) and, with --overlap, also B/c/ev
// (subscription 1), each with its own handler. Caller client c calls B/cmd with {"c":c,"k":k}, at most
// --outstanding (20) unanswered.
//
// Journal records, one write(2) each, every one ending with CLOCK_MONOTONIC microseconds T:
//   boot <c> <outbox> <inbox> T   client c opened its store (what it held)
//   pub:   t <c> <from> <to> T     about to publish [from, to)      p <c> <n> T    publish() returned n
//          a <c> <from> <to> T     the futures of [from, to) completed (PUBCOMP)   fin T  all done, outboxes empty
//   sub:   h <c> <s> <n> T         subscription s of client c handled event n   hp <c> <s> T  ... the probe
//   serve: s <c> <k> T             the command handler ran for caller c's call k
//   call:  ct <c> <k> T            about to call k     c <c> <k> <id> T   call() returned (stored)
//          r <c> <id> <ok> T       the result handler ran          fin T  all calls made and answered
// A restarted pub or call reads its journal to go on where its predecessor stopped (it never re-sends
// anything itself: the runtime's outbox does).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "history.h"
#include "history_journal.h"
#include "xymqtt/client.h"
#include "xymqtt/exception.h"

namespace {

using xymqtt::test::journal_writer;
using xymqtt::test::mono_us;

std::map<std::string, std::string> parse(int argc, char** argv) {
    std::map<std::string, std::string> a;
    for (int i = 2; i + 1 < argc; i += 2) a[argv[i] + 2] = argv[i + 1];
    return a;
}

std::string T() { return " " + std::to_string(mono_us()) + "\n"; }

struct agent {
    std::map<std::string, std::string> a;
    journal_writer& j;
    int clients = 1;

    std::string arg(const std::string& k, const std::string& fallback = {}) const {
        auto it = a.find(k);
        return it == a.end() ? fallback : it->second;
    }

    std::unique_ptr<xymqtt::client> make_client(int c) {
        xymqtt::client_options o;
        o.server_uri = arg("broker");
        o.client_id = arg("id") + "-" + std::to_string(c);
        o.store_dir = arg("store") + "/" + std::to_string(c);
        o.store_type = arg("store-kind", "lmdb") == "sqlite" ? xymqtt::store_kind::sqlite : xymqtt::store_kind::lmdb;
        o.durability = arg("durability", "process") == "fsync" ? xymqtt::durability::fsync : xymqtt::durability::process;
        o.mqtt_version = std::stoi(arg("mqtt", "5"));
        o.reconnect_min = std::chrono::milliseconds(20);
        o.reconnect_max = std::chrono::milliseconds(200);
        o.retry.initial = std::chrono::milliseconds(20);
        o.retry.cap = std::chrono::milliseconds(200);
        o.max_inflight = 256;
        if (!arg("resend-ms").empty()) o.resend_unanswered_after = std::chrono::milliseconds(std::stol(arg("resend-ms")));
        if (std::getenv("XYMQTT_REL_LOG"))
            o.hooks.on_log = [id = o.client_id](xymqtt::log_level, const std::string& s) {
                std::fprintf(stderr, "[%s] %s\n", id.c_str(), s.c_str());
            };
        auto cl = std::make_unique<xymqtt::client>(o);
        const auto st = cl->stats();
        j.write("boot " + std::to_string(c) + " " + std::to_string(st.outbox) + " " + std::to_string(st.inbox) + T());
        return cl;
    }
};

void say(const std::string& s) { std::cout << s << std::endl; }

// Runs until SIGTERM (the test's final, graceful stop: the clients close and store the removals still
// waiting) or SIGKILL.
void wait_for_sigterm() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
}

int run_pub(agent& g, const std::vector<std::vector<std::string>>& before) {
    const long total = std::stol(g.arg("total"));
    const long batch = std::stol(g.arg("batch", "100"));
    const double rate = std::stod(g.arg("rate", "0"));
    const std::string padding = g.a.count("size") ? ":" + std::string(std::stoul(g.arg("size")), 'y') : "";
    std::vector<long> next(std::size_t(g.clients), 0);
    for (const auto& r : before)
        if (r[0] == "t" && r.size() == 5) {
            auto& n = next.at(std::stoul(r[1]));
            n = std::max(n, std::stol(r[3]));
        }
    std::vector<std::unique_ptr<xymqtt::client>> cs;
    for (int c = 0; c < g.clients; ++c) cs.push_back(g.make_client(c));
    for (auto& c : cs) c->connect();
    say("ready");
    std::atomic<int> failed{0};
    std::vector<std::thread> ts;
    for (int c = 0; c < g.clients; ++c)
        ts.emplace_back([&, c] {
            try {
                auto& cl = *cs[std::size_t(c)];
                const std::string topic = g.arg("base") + "/" + std::to_string(c) + "/ev", cs_ = std::to_string(c);
                const auto start = std::chrono::steady_clock::now();
                const long first = next[std::size_t(c)];
                for (long n = first; n < total;) {
                    const long to = std::min(total, n + batch);
                    if (rate > 0)  // the stream's pace (a rate, not a synchronisation)
                        std::this_thread::sleep_until(start + std::chrono::microseconds(
                                                                  std::int64_t(double(n - first) * 1e6 / rate)));
                    g.j.write("t " + cs_ + " " + std::to_string(n) + " " + std::to_string(to) + T());
                    std::vector<std::future<void>> fs;
                    for (long i = n; i < to; ++i) {
                        fs.push_back(cl.publish(topic, std::to_string(i) + padding));
                        g.j.write("p " + cs_ + " " + std::to_string(i) + T());
                    }
                    for (auto& f : fs) f.get();  // PUBCOMP; throws if the broker refused it or the store failed
                    g.j.write("a " + cs_ + " " + std::to_string(n) + " " + std::to_string(to) + T());
                    n = to;
                }
                if (!cl.wait_outbox_empty(std::chrono::minutes(10))) throw std::runtime_error("outbox not empty after 10 min");
            } catch (const std::exception& e) {
                std::cerr << "hist_agent pub " << c << ": " << e.what() << std::endl;
                ++failed;
            }
        });
    for (auto& t : ts) t.join();
    if (failed) return 3;
    g.j.write("fin" + T());
    say("fin");
    wait_for_sigterm();
    return 0;
}

int run_sub(agent& g) {
    std::vector<std::unique_ptr<xymqtt::client>> cs;
    for (int c = 0; c < g.clients; ++c) {
        cs.push_back(g.make_client(c));
        const std::string base = g.arg("base") + "/" + std::to_string(c), cs_ = std::to_string(c);
        auto handler = [&g, cs_](int s) {
            return [&g, cs_, s](const xymqtt::message& m) {
                if (m.payload == "probe") {  // the test's proof that the subscription is live
                    g.j.write("hp " + cs_ + " " + std::to_string(s) + T());
                    return;
                }
                g.j.write("h " + cs_ + " " + std::to_string(s) + " " + std::to_string(std::strtoull(m.payload.c_str(), nullptr, 10)) + T());
            };
        };
        cs.back()->subscribe(base + "/#", handler(0));
        if (g.arg("overlap") == "1") cs.back()->subscribe(base + "/ev", handler(1));
    }
    for (auto& c : cs) c->connect();
    say("ready");
    wait_for_sigterm();
    return 0;
}

int run_serve(agent& g) {
    std::vector<std::unique_ptr<xymqtt::client>> cs;
    xymqtt::command_options co;
    co.concurrency = unsigned(std::stoul(g.arg("concurrency", "1")));
    for (int c = 0; c < g.clients; ++c) {
        cs.push_back(g.make_client(c));
        cs.back()->command_register(g.arg("base") + "/cmd", [&g](const xymqtt::invocation& inv, xymqtt::call_context&) {
            // body {"c":<caller client>,"k":<call>}; anything else is the test's probe
            if (inv.body.find("\"k\":") == std::string::npos) return std::string("{\"probe\":true}");
            const auto c = std::strtol(inv.body.c_str() + inv.body.find("\"c\":") + 4, nullptr, 10);
            const auto k = std::strtol(inv.body.c_str() + inv.body.find("\"k\":") + 4, nullptr, 10);
            g.j.write("s " + std::to_string(c) + " " + std::to_string(k) + T());
            return std::string("{\"served\":true}");
        }, co);
    }
    for (auto& c : cs) c->connect();
    say("ready");
    wait_for_sigterm();
    return 0;
}

int run_call(agent& g, const std::vector<std::vector<std::string>>& before) {
    const long total = std::stol(g.arg("total"));
    const std::size_t outstanding = std::stoul(g.arg("outstanding", "20"));
    const std::string command = g.arg("base") + "/cmd";
    struct state {
        long next = 0;
        std::set<std::string> pending, early;  // stored and unanswered; answered before call() returned
    };
    std::vector<state> st(std::size_t(g.clients));
    for (const auto& r : before) {
        if (r[0] == "ct" && r.size() == 4) {
            auto& s = st.at(std::stoul(r[1]));
            s.next = std::max(s.next, std::stol(r[2]) + 1);
        }
        if (r[0] == "c" && r.size() == 5) st.at(std::stoul(r[1])).pending.insert(r[3]);
    }
    for (const auto& r : before)
        if (r[0] == "r" && r.size() == 5) st.at(std::stoul(r[1])).pending.erase(r[2]);
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::unique_ptr<xymqtt::client>> cs;
    for (int c = 0; c < g.clients; ++c) {
        cs.push_back(g.make_client(c));
        cs.back()->subscribe_results(command, [&, c](const xymqtt::command_result& r) {
            g.j.write("r " + std::to_string(c) + " " + r.message_id + " " + (r.ok ? "ok" : "rejected") + T());
            std::lock_guard<std::mutex> lk(mu);
            auto& s = st[std::size_t(c)];
            if (!s.pending.erase(r.message_id)) s.early.insert(r.message_id);
            cv.notify_all();
        });
    }
    for (auto& c : cs) c->connect();
    say("ready");
    std::atomic<int> failed{0};
    std::vector<std::thread> ts;
    for (int c = 0; c < g.clients; ++c)
        ts.emplace_back([&, c] {
            try {
                auto& s = st[std::size_t(c)];
                const std::string cs_ = std::to_string(c);
                for (; s.next < total; ++s.next) {
                    {
                        std::unique_lock<std::mutex> lk(mu);
                        cv.wait(lk, [&] { return s.pending.size() < outstanding; });
                    }
                    g.j.write("ct " + cs_ + " " + std::to_string(s.next) + T());
                    xymqtt::call_options co;
                    co.format = xymqtt::wire_format::json;
                    const auto h = cs[std::size_t(c)]->call(
                        command, "{\"c\":" + cs_ + ",\"k\":" + std::to_string(s.next) + "}", co);
                    {
                        std::lock_guard<std::mutex> lk(mu);
                        if (!s.early.erase(h.message_id())) s.pending.insert(h.message_id());
                    }
                    g.j.write("c " + cs_ + " " + std::to_string(s.next) + " " + h.message_id() + T());
                }
                std::unique_lock<std::mutex> lk(mu);
                if (!cv.wait_for(lk, std::chrono::minutes(10), [&] { return s.pending.empty(); }))
                    throw std::runtime_error(std::to_string(s.pending.size()) + " calls unanswered after 10 min");
            } catch (const std::exception& e) {
                std::cerr << "hist_agent call " << c << ": " << e.what() << std::endl;
                ++failed;
            }
        });
    for (auto& t : ts) t.join();
    if (failed) return 3;
    g.j.write("fin" + T());
    say("fin");
    wait_for_sigterm();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string mode = argv[1];
    auto a = parse(argc, argv);
    // SIGTERM is taken by sigwait (blocked in every thread, which inherit the mask).
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    // Diagnostics: Paho C's own protocol trace, one file per agent process (Paho reads these variables
    // when its first client is created).
    if (const char* dir = std::getenv("XYMQTT_HIST_PAHO_TRACE")) {
        const std::string path = std::string(dir) + "/paho-" + mode + "-" + std::to_string(::getpid()) + ".log";
        ::setenv("MQTT_C_CLIENT_TRACE", path.c_str(), 1);
        ::setenv("MQTT_C_CLIENT_TRACE_LEVEL", "PROTOCOL", 1);
        ::setenv("MQTT_C_CLIENT_TRACE_MAX_LINES", "100000000", 1);
    }
    try {
        const auto before = xymqtt::test::read_journal(a["journal"]);
        journal_writer j(a["journal"]);
        agent g{a, j, a.count("clients") ? std::stoi(a["clients"]) : 1};
        if (mode == "pub") return run_pub(g, before);
        if (mode == "sub") return run_sub(g);
        if (mode == "serve") return run_serve(g);
        if (mode == "call") return run_call(g, before);
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "hist_agent " << mode << ": " << e.what() << std::endl;
        return 1;
    }
}
