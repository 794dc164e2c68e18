// Failover between the nodes of a cluster with client_options::server_uris, against a real cluster
// (scripts/cluster), measured: run by tests/cluster/check_cluster.sh (cluster.failover_server_uris).
//
//   cluster_failover --uris tcp://127.0.0.1:P1,tcp://127.0.0.1:P2 --store DIR
//     --kill 'scripts/cluster kill CLUSTER 1'
//     [--restart 'scripts/cluster restart CLUSTER 1' --kill-other 'scripts/cluster kill CLUSTER 2']
//
// A subscriber client "sub" has both URIs (server_uris) and connects to the first; a publisher client
// "pub" is connected to the second node only. Then:
//   1. pub publishes "before-N" (node 2 -> sub on node 1): all must arrive.
//   2. --kill runs (node 1 is SIGKILLed). sub publishes "own-during" at once (it waits in sub's
//      outbox); pub publishes "during-N" every 50 ms until sub is connected again and 1 s more.
//   3. sub must fail over to the second URI (hooks::on_server) within 30 s; "own-during" must be
//      delivered (sub is subscribed to its own topic), and pub's "after-N" published after the failover.
//   4. With --restart and --kill-other: node 1 comes back, node 2 is killed; sub must wrap around to the
//      first URI and get "back-N", which a third client publishes there.
// The figures (time to notice the loss and to fail over, session present after failover, "during"
// messages published and received) are printed as "name=value" lines for the test to record.
// Exit status: 0 when every "must" holds, 1 otherwise, 2 on bad arguments.
// Credentials: $XYMQTT_USERNAME and $XYMQTT_PASSWORD.
#include <xymqtt/client.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

// What the subscriber saw, guarded by one mutex and waited on with one condition variable.
struct observations {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<std::string, steady::time_point>> servers;  // on_server
    std::vector<bool> session_present;                                // on_connect
    std::vector<std::pair<std::string, steady::time_point>> losses;   // on_connection_lost
    std::map<std::string, int> received;                              // payload -> times

    template <class Pred>
    bool wait(std::chrono::milliseconds timeout, Pred pred) {
        std::unique_lock<std::mutex> lk(mu);
        return cv.wait_for(lk, timeout, [&] { return pred(); });
    }
    // The i-th server URI on_server reported, and when; empty if there is none yet.
    std::pair<std::string, steady::time_point> server(std::size_t i) {
        std::lock_guard<std::mutex> lk(mu);
        return i < servers.size() ? servers[i] : std::pair<std::string, steady::time_point>{};
    }
    void update(const std::function<void()>& change) {
        {
            std::lock_guard<std::mutex> lk(mu);
            change();
        }
        cv.notify_all();
    }
};

std::string getenv_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : fallback;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, sep);)
        if (!item.empty()) out.push_back(item);
    return out;
}

long long ms_between(steady::time_point a, steady::time_point b) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count();
}

const steady::time_point started = steady::now();

std::atomic<int> failures{0};
void check(bool ok, const std::string& what) {
    std::cout << (ok ? "ok: " : "FAIL: ") << what << std::endl;
    if (!ok) ++failures;
}

void run(const std::string& command) {
    std::cout << "running: " << command << std::endl;
    const int status = std::system(command.c_str());
    if (status != 0) {
        std::cout << "FAIL: '" << command << "' exited with " << status << std::endl;
        std::exit(1);
    }
}

xymqtt::client_options base_options(const std::string& store_root, const std::string& name) {
    xymqtt::client_options o;
    o.client_id = "cluster-failover-" + name + "-" + std::to_string(::getpid());
    o.store_dir = store_root + "/" + name;
    o.username = getenv_or("XYMQTT_USERNAME", "xymqtt");
    o.password = getenv_or("XYMQTT_PASSWORD", "xymqtt");
    o.connect_timeout = 2000ms;
    o.reconnect_min = 100ms;
    o.reconnect_max = 1000ms;
    o.durability = xymqtt::durability::process;
    // Warnings, and with CLUSTER_FAILOVER_VERBOSE=1 every line, stamped with the time since the start.
    static const bool verbose = getenv_or("CLUSTER_FAILOVER_VERBOSE", "") == "1";
    o.hooks.on_log = [name](xymqtt::log_level level, const std::string& line) {
        if (level >= xymqtt::log_level::warning || verbose)
            std::cout << "  [" << name << " +" << ms_between(started, steady::now()) << " ms] " << line << std::endl;
    };
    return o;
}

// Publishes `prefix`-1..n from `c` and waits for the broker's confirmation of each.
void publish_all(xymqtt::client& c, const std::string& topic, const std::string& prefix, int n) {
    for (int i = 1; i <= n; ++i) c.publish(topic, prefix + "-" + std::to_string(i)).get();
}

bool all_received(observations& obs, const std::string& prefix, int n, std::chrono::milliseconds timeout) {
    return obs.wait(timeout, [&] {
        for (int i = 1; i <= n; ++i)
            if (obs.received.count(prefix + "-" + std::to_string(i)) == 0) return false;
        return true;
    });
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> uris;
    std::string store, kill_cmd, restart_cmd, kill_other_cmd;
    int count = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::cerr << arg << " needs a value\n";
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--uris") uris = split(value(), ',');
        else if (arg == "--store") store = value();
        else if (arg == "--kill") kill_cmd = value();
        else if (arg == "--restart") restart_cmd = value();
        else if (arg == "--kill-other") kill_other_cmd = value();
        else if (arg == "--count") count = std::stoi(value());
        else {
            std::cerr << "unknown argument " << arg << "\n";
            return 2;
        }
    }
    if (uris.size() != 2 || store.empty() || kill_cmd.empty() || restart_cmd.empty() != kill_other_cmd.empty()) {
        std::cerr << "usage: cluster_failover --uris URI1,URI2 --store DIR --kill CMD "
                     "[--restart CMD --kill-other CMD] [--count N]\n";
        return 2;
    }
    const std::string topic = "cluster/failover/" + std::to_string(::getpid());

    observations obs;
    auto sub_options = base_options(store, "sub");
    sub_options.server_uris = uris;
    sub_options.hooks.on_server = [&](const std::string& uri) {
        const auto now = steady::now();
        obs.update([&] { obs.servers.emplace_back(uri, now); });
        std::cout << "  [sub +" << ms_between(started, now) << " ms] on_server " << uri << std::endl;
    };
    sub_options.hooks.on_connect = [&](bool present) {
        obs.update([&] { obs.session_present.push_back(present); });
        std::cout << "  [sub] connected, session present: " << (present ? "yes" : "no") << std::endl;
    };
    sub_options.hooks.on_connection_lost = [&](const std::string& cause) {
        const auto now = steady::now();
        obs.update([&] { obs.losses.emplace_back(cause, now); });
        std::cout << "  [sub +" << ms_between(started, now) << " ms] connection lost: " << cause << std::endl;
    };
    xymqtt::client sub(sub_options);
    sub.subscribe(topic + "/#", [&](const xymqtt::message& m) {
        obs.update([&] { ++obs.received[m.payload]; });
    });
    sub.connect();
    if (!sub.wait_connected(20s)) {
        std::cout << "FAIL: sub did not connect: " << sub.stats().last_error << std::endl;
        return 1;
    }
    check(obs.wait(5s, [&] { return !obs.servers.empty(); }) && obs.server(0).first == uris[0],
          "sub connected to the first URI " + uris[0]);
    // The subscription is active once sub's own message comes back through it.
    sub.publish(topic + "/own", "ready").get();
    check(obs.wait(20s, [&] { return obs.received.count("ready") > 0; }), "sub's subscription is active");

    auto pub_options = base_options(store, "pub");
    pub_options.server_uri = uris[1];
    auto pub = std::make_unique<xymqtt::client>(pub_options);
    pub->connect();
    if (!pub->wait_connected(20s)) {
        std::cout << "FAIL: pub did not connect to " << uris[1] << ": " << pub->stats().last_error << std::endl;
        return 1;
    }
    publish_all(*pub, topic + "/pub", "before", count);
    check(all_received(obs, "before", count, 20s),
          "before the kill: " + std::to_string(count) + " messages from node 2 reached sub on node 1");

    // --- The first node dies -------------------------------------------------------------------------
    const auto killed = steady::now();  // the figures below count from here: they include the kill command
    std::cout << "killing at +" << ms_between(started, killed) << " ms" << std::endl;
    run(kill_cmd);
    std::cout << "kill_command_ms=" << ms_between(killed, steady::now()) << std::endl;
    auto own = sub.publish(topic + "/own", "own-during");  // waits in sub's outbox until it is connected
    std::atomic<bool> stop_during{false};
    std::atomic<int> during_published{0};
    std::thread during([&] {
        try {
            for (int i = 1; !stop_during; ++i) {
                pub->publish(topic + "/pub", "during-" + std::to_string(i)).get();
                during_published = i;
                std::this_thread::sleep_for(50ms);
            }
        } catch (const std::exception& e) {
            std::cout << "FAIL: pub's publish on node 2 failed: " << e.what() << std::endl;
            ++failures;
        }
    });
    const bool failed_over = obs.wait(30s, [&] { return obs.servers.size() >= 2; });
    std::this_thread::sleep_for(1s);
    stop_during = true;
    during.join();
    check(failed_over && obs.server(1).first == uris[1], "sub failed over to the second URI " + uris[1]);
    if (!failed_over) {
        std::cout << "last error: " << sub.stats().last_error << std::endl;
        return 1;
    }
    check(sub.stats().server_uri == uris[1], "client_stats::server_uri names the second URI");
    {
        std::lock_guard<std::mutex> lk(obs.mu);
        if (!obs.losses.empty()) std::cout << "loss_noticed_ms=" << ms_between(killed, obs.losses.front().second) << std::endl;
        std::cout << "failover_ms=" << ms_between(killed, obs.servers[1].second) << std::endl;
        std::cout << "session_present_after_failover=" << (obs.session_present.size() >= 2 && obs.session_present[1]) << std::endl;
    }
    check(own.wait_for(20s) == std::future_status::ready, "sub's publish made while failing over completed");
    check(obs.wait(20s, [&] { return obs.received.count("own-during") > 0; }),
          "sub's publish made while failing over reached its subscription on node 2");
    publish_all(*pub, topic + "/pub", "after", count);
    check(all_received(obs, "after", count, 20s),
          "after the failover: " + std::to_string(count) + " messages from node 2 reached sub on node 2");
    {
        std::lock_guard<std::mutex> lk(obs.mu);
        int got = 0;
        std::string lost;
        for (int i = 1; i <= during_published; ++i) {
            if (obs.received.count("during-" + std::to_string(i))) ++got;
            else lost += " " + std::to_string(i);
        }
        std::cout << "during_published=" << during_published << std::endl;
        std::cout << "during_received=" << got << std::endl;
        std::cout << "during_lost=" << (during_published - got) << (lost.empty() ? "" : " (numbers" + lost + ")") << std::endl;
        int duplicates = 0;
        for (const auto& [payload, times] : obs.received) duplicates += times - 1;
        std::cout << "duplicates=" << duplicates << std::endl;
    }

    // --- Back to the first node ----------------------------------------------------------------------
    if (!restart_cmd.empty()) {
        run(restart_cmd);
        pub->close();
        pub.reset();
        auto back_options = base_options(store, "back");
        back_options.server_uri = uris[0];
        xymqtt::client back(back_options);
        back.connect();
        check(back.wait_connected(20s), "a publisher connects to the restarted first node");
        const auto killed_other = steady::now();
        std::cout << "killing at +" << ms_between(started, killed_other) << " ms" << std::endl;
        run(kill_other_cmd);
        const bool wrapped = obs.wait(30s, [&] { return obs.servers.size() >= 3; });
        check(wrapped && obs.server(2).first == uris[0], "sub wrapped around to the first URI " + uris[0]);
        if (wrapped) std::cout << "failback_ms=" << ms_between(killed_other, obs.server(2).second) << std::endl;
        // A new session on node 1: the subscription is renewed after on_server; it is active once sub's
        // own message comes back through it.
        sub.publish(topic + "/own", "own-back").get();
        check(obs.wait(20s, [&] { return obs.received.count("own-back") > 0; }),
              "sub's subscription is active again on node 1");
        publish_all(back, topic + "/pub", "back", count);
        check(all_received(obs, "back", count, 20s),
              "after failing back: " + std::to_string(count) + " messages reached sub on node 1");
        back.close();
    }
    sub.close();
    if (pub) pub->close();
    std::cout << (failures ? "FAILED" : "PASSED") << std::endl;
    return failures ? 1 : 0;
}
