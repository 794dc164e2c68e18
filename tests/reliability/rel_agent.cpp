// The crash matrix's worker: one role of the system per process, killed with SIGKILL at random moments by
// tests/reliability/crash_matrix_test.cpp and restarted on the same store.
//
//   rel_agent pub   --broker U --id ID --store DIR --journal FILE --topic T --total N --duration-ms MS [--batch B]
//                   [--size S]  (payload "<n>:" + S bytes of padding instead of "<n>")
//   rel_agent sub   --broker U --id ID --store DIR --journal FILE --filter F
//   rel_agent serve --broker U --id ID --store DIR --journal FILE --command C
//   rel_agent call  --broker U --id ID --store DIR --journal FILE --command C --total N --duration-ms MS
//                   [--outstanding K]
//   common: [--durability process|fsync]
//   sub only: [--stall-arrival 1]  the first commit of an arriving message never returns (prints
//             "stalled"): the test kills the process at exactly that moment.
//
// Every fact the checker needs is appended to the role's journal with one write(2) per record, so a
// SIGKILL can cut the journal only between records (the kernel has every completed write):
//   boot <outbox> <inbox> <epoch-ms>   each start: what the store held when it was opened
//   pub:   t <from> <to>   about to publish events [from, to) (tried; maybe never stored)
//          a <n>           event n's publish future completed: the broker acknowledged it (PUBCOMP)
//          fin             all events tried, every future completed, outbox empty
//   sub:   h <payload>     the handler ran for event <payload>
//   serve: s <message id>  the command handler ran for a call
//   call:  ct <k>          about to call #k;  c <k> <message id>  call() returned: the call is stored
//          r <message id> <ok>  the result handler ran;  fin  all calls made and answered
// The journals of all incarnations of a role are one file; a restarted pub or call reads it to go on
// where its predecessor stopped (it never re-sends anything itself: the runtime's outbox does).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "xymqtt/client.h"
#include "xymqtt/exception.h"
#include "faulty_store.h"
#include "history_journal.h"

namespace {

using clock_type = std::chrono::steady_clock;

std::map<std::string, std::string> parse(int argc, char** argv) {
    std::map<std::string, std::string> a;
    for (int i = 2; i + 1 < argc; i += 2) a[argv[i] + 2] = argv[i + 1];
    return a;
}

std::int64_t epoch_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Journals: one write(2) per record, so a SIGKILL cuts one only between records (history_journal.h).
using journal = xymqtt::test::journal_writer;

xymqtt::client_options options(std::map<std::string, std::string>& a) {
    xymqtt::client_options o;
    o.server_uri = a["broker"];
    o.client_id = a["id"];
    o.store_dir = a["store"];
    o.durability = a["durability"] == "fsync" ? xymqtt::durability::fsync : xymqtt::durability::process;
    o.reconnect_min = std::chrono::milliseconds(20);
    o.reconnect_max = std::chrono::milliseconds(200);
    o.retry.initial = std::chrono::milliseconds(20);
    o.retry.cap = std::chrono::milliseconds(200);
    o.max_inflight = 256;
    if (std::getenv("XYMQTT_REL_LOG"))
        o.hooks.on_log = [id = o.client_id](xymqtt::log_level, const std::string& s) {
            std::fprintf(stderr, "[%s] %s\n", id.c_str(), s.c_str());
        };
    return o;
}

void say(const std::string& s) { std::cout << s << std::endl; }

// Waits until `start + offset`: the pace of the stream (a rate, not a synchronisation).
void pace(std::int64_t start_ms, double offset_ms) {
    const auto until = start_ms + static_cast<std::int64_t>(offset_ms);
    const auto now = epoch_ms();
    if (until > now) std::this_thread::sleep_for(std::chrono::milliseconds(until - now));
}

// The time the stream started, from the first boot's record (so restarts keep the schedule).
std::int64_t stream_start(const std::vector<std::vector<std::string>>& recs) {
    for (const auto& r : recs)
        if (r[0] == "boot" && r.size() >= 4) return std::stoll(r[3]);
    return epoch_ms();
}

using xymqtt::store_options;

int run_pub(std::map<std::string, std::string>& a, journal& j, const std::vector<std::vector<std::string>>& before) {
    xymqtt::client c(options(a));
    const auto st = c.stats();
    const auto start = stream_start(before);
    j.line("boot " + std::to_string(st.outbox) + " " + std::to_string(st.inbox) + " " + std::to_string(epoch_ms()));
    long next = 0;
    for (const auto& r : before)
        if (r[0] == "t" && r.size() == 3) next = std::max(next, std::stol(r[2]));
    const long total = std::stol(a["total"]);
    const double duration = std::stod(a["duration-ms"]);
    const long batch = a.count("batch") ? std::stol(a["batch"]) : 50;
    const std::string topic = a["topic"];
    const std::string padding = a.count("size") ? ":" + std::string(std::stoul(a["size"]), 'y') : "";
    c.connect();
    say("ready");
    while (next < total) {
        const long to = std::min(total, next + batch);
        pace(start, duration * double(next) / double(total));
        j.line("t " + std::to_string(next) + " " + std::to_string(to));
        std::vector<std::pair<long, std::future<void>>> fs;
        for (long i = next; i < to; ++i) fs.emplace_back(i, c.publish(topic, std::to_string(i) + padding));
        std::string acks;
        for (auto& [i, f] : fs) {
            f.get();  // PUBCOMP; throws if the broker refused it or the store failed
            acks += "a " + std::to_string(i) + "\n";
        }
        j.write(acks);
        next = to;
    }
    if (!c.wait_outbox_empty(std::chrono::minutes(10))) {
        std::cerr << "rel_agent pub: outbox not empty after 10 min" << std::endl;
        return 3;
    }
    j.line("fin");
    say("fin");
    pause();  // stays until the test stops it (a finished role can still be killed and restarted)
    return 0;
}

int run_sub(std::map<std::string, std::string>& a, journal& j) {
    auto o = options(a);
    if (a["stall-arrival"] == "1") {
        store_options so;
        so.durability = o.durability;
        auto s = std::make_shared<xymqtt::test::faulty_store>(xymqtt::open_lmdb_store(o.store_dir, so));
        s->on_arrival_commit([] {
            say("stalled");
            pause();  // until SIGKILL
        });
        o.store = s;
    }
    xymqtt::client c(o);
    const auto st = c.stats();
    j.line("boot " + std::to_string(st.outbox) + " " + std::to_string(st.inbox) + " " + std::to_string(epoch_ms()));
    c.subscribe(a["filter"], [&](const xymqtt::message& m) { j.line("h " + m.payload); });
    c.connect();
    say("ready");
    // SIGTERM (the checker's final stop) closes the client, which stores the removals still waiting.
    ::signal(SIGTERM, [](int) {});
    pause();
    return 0;
}

int run_serve(std::map<std::string, std::string>& a, journal& j) {
    xymqtt::client c(options(a));
    const auto st = c.stats();
    j.line("boot " + std::to_string(st.outbox) + " " + std::to_string(st.inbox) + " " + std::to_string(epoch_ms()));
    c.command_register(a["command"], [&](const xymqtt::invocation& inv, xymqtt::call_context&) {
        j.line("s " + inv.message_id);
        return std::string("{\"served\":true}");
    });
    c.connect();
    say("ready");
    pause();
    return 0;
}

int run_call(std::map<std::string, std::string>& a, journal& j, const std::vector<std::vector<std::string>>& before) {
    xymqtt::client c(options(a));
    const auto st = c.stats();
    const auto start = stream_start(before);
    j.line("boot " + std::to_string(st.outbox) + " " + std::to_string(st.inbox) + " " + std::to_string(epoch_ms()));
    long next = 0;
    std::set<std::string> pending;  // calls stored (journalled) and not answered
    for (const auto& r : before) {
        if (r[0] == "ct" && r.size() == 2) next = std::max(next, std::stol(r[1]) + 1);
        if (r[0] == "c" && r.size() == 3) pending.insert(r[2]);
    }
    for (const auto& r : before)
        if (r[0] == "r" && r.size() >= 2) pending.erase(r[1]);
    const long total = std::stol(a["total"]);
    const double duration = std::stod(a["duration-ms"]);
    const std::size_t outstanding = a.count("outstanding") ? std::stoul(a["outstanding"]) : 20;
    const std::string command = a["command"];
    std::mutex mu;
    std::condition_variable cv;
    std::set<std::string> early;  // answered before call() returned to us
    c.subscribe_results(command, [&](const xymqtt::command_result& r) {
        j.line("r " + r.message_id + " " + (r.ok ? "ok" : "rejected:" + std::to_string(r.status)));
        std::lock_guard<std::mutex> lk(mu);
        if (!pending.erase(r.message_id)) early.insert(r.message_id);  // may come before call() returns
        cv.notify_all();
    });
    c.connect();
    say("ready");
    for (; next < total; ++next) {
        pace(start, duration * double(next) / double(total));
        {
            std::unique_lock<std::mutex> lk(mu);
            cv.wait(lk, [&] { return pending.size() < outstanding; });
        }
        j.line("ct " + std::to_string(next));
        xymqtt::call_options co;
        co.format = xymqtt::wire_format::json;
        const auto h = c.call(command, "{\"k\":" + std::to_string(next) + "}", co);
        {
            std::lock_guard<std::mutex> lk(mu);
            if (!early.erase(h.message_id())) pending.insert(h.message_id());
        }
        j.line("c " + std::to_string(next) + " " + h.message_id());
    }
    {
        std::unique_lock<std::mutex> lk(mu);
        if (!cv.wait_for(lk, std::chrono::minutes(10), [&] { return pending.empty(); })) {
            std::cerr << "rel_agent call: " << pending.size() << " calls unanswered after 10 min" << std::endl;
            return 3;
        }
    }
    j.line("fin");
    say("fin");
    pause();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string mode = argv[1];
    auto a = parse(argc, argv);
    try {
        const auto before = xymqtt::test::read_journal(a["journal"]);
        journal j(a["journal"]);
        if (mode == "pub") return run_pub(a, j, before);
        if (mode == "sub") return run_sub(a, j);
        if (mode == "serve") return run_serve(a, j);
        if (mode == "call") return run_call(a, j, before);
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "rel_agent " << mode << ": " << e.what() << std::endl;
        return 1;
    }
}
