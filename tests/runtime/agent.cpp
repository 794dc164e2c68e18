// A small process the integration tests start, kill with SIGKILL and restart on the same store.
//   xy_agent publish   --broker U --id ID --store DIR --topic T --from N --count N
//   xy_agent subscribe --broker U --id ID --store DIR --filter F --log FILE [--slow-ms N] [--expect N]
//                      [--stall-arrivals 1] (the commit of the first arriving message never ends: says
//                      "stalled" and waits to be killed; says "arrived X" as each message comes)
//   xy_agent serve     --broker U --id ID --store DIR --command C --log FILE [--slow-ms N] [--group G]
//                      [--concurrency N]
// Every handler writes "start X" and "done X" lines (flushed) so the test can count re-handling.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "forwarding_store.h"
#include "xymqtt/client.h"
#include "xymqtt/exception.h"

namespace {

std::map<std::string, std::string> parse(int argc, char** argv) {
    std::map<std::string, std::string> a;
    for (int i = 2; i + 1 < argc; i += 2) a[argv[i] + 2] = argv[i + 1];
    return a;
}

class journal {
public:
    explicit journal(const std::string& path) : path_(path) {}
    void line(const std::string& s) {
        std::lock_guard<std::mutex> lk(mu_);
        std::ofstream out(path_, std::ios::app);
        out << s << '\n';
        out.flush();
    }

private:
    std::mutex mu_;
    std::string path_;
};

void say(const std::string& s);

// A store whose commit of an arriving message never ends: the process is killed meanwhile.
class stalling_store : public xymqtt::test::forwarding_store {
public:
    using forwarding_store::forwarding_store;
    void commit(const std::vector<xymqtt::write_op>& batch) override {
        for (const auto& op : batch)
            if (op.tbl == xymqtt::table::incoming && op.value) {
                say("stalled");
                for (;;) std::this_thread::sleep_for(std::chrono::hours(1));  // until SIGKILL
            }
        forwarding_store::commit(batch);
    }
};

xymqtt::client_options options(std::map<std::string, std::string>& a) {
    xymqtt::client_options o;
    o.server_uri = a["broker"];
    o.client_id = a["id"];
    o.store_dir = a["store"];
    o.durability = a["durability"] == "fsync" ? xymqtt::durability::fsync : xymqtt::durability::process;
    o.reconnect_max = std::chrono::milliseconds(300);
    o.retry.initial = std::chrono::milliseconds(20);
    o.retry.cap = std::chrono::milliseconds(200);
    if (a.count("stall-arrivals")) {
        xymqtt::store_options so;
        so.durability = o.durability;
        o.store = std::make_shared<stalling_store>(std::shared_ptr<xymqtt::store>(xymqtt::open_lmdb_store(o.store_dir, so)));
        o.hooks.on_packet_receive = [](const std::string&, const std::string& payload) { say("arrived " + payload); };
    }
    return o;
}

void say(const std::string& s) {
    std::cout << s << std::endl;  // line by line: the test reads it as it comes
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string mode = argv[1];
    auto a = parse(argc, argv);
    try {
        xymqtt::client c(options(a));
        if (mode == "publish") {
            c.connect();
            const long from = std::stol(a["from"]), count = std::stol(a["count"]);
            std::vector<std::pair<long, std::future<void>>> futures;
            for (long i = from; i < from + count; ++i) futures.emplace_back(i, c.publish(a["topic"], std::to_string(i)));
            say("published");
            for (auto& [i, f] : futures) {
                f.get();
                say("ack " + std::to_string(i));
            }
            say("all acked");
            if (!c.wait_outbox_empty(std::chrono::seconds(60))) return 3;
            say("outbox empty");
            return 0;
        }
        const long slow = a.count("slow-ms") ? std::stol(a["slow-ms"]) : 0;
        journal log(a["log"]);
        std::mutex mu;
        std::set<std::string> done;
        std::condition_variable cv;
        const std::size_t expect = a.count("expect") ? std::stoul(a["expect"]) : 0;
        if (mode == "subscribe") {
            c.subscribe(a["filter"], [&](const xymqtt::message& m) {
                log.line("start " + m.payload);
                if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(slow));  // simulated work
                log.line("done " + m.payload);
                std::lock_guard<std::mutex> lk(mu);
                done.insert(m.payload);
                cv.notify_all();
            });
        } else if (mode == "serve") {
            xymqtt::command_options co;
            co.group = a["group"];
            if (a.count("concurrency")) co.concurrency = unsigned(std::stoul(a["concurrency"]));
            c.command_register(a["command"], [&](const xymqtt::invocation& inv, xymqtt::call_context&) {
                log.line("start " + inv.message_id);
                if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(slow));  // simulated work
                log.line("done " + inv.message_id);
                return inv.format == xymqtt::wire_format::json ? std::string("{\"pong\":true,\"server\":\"" + a["id"] + "\"}")
                                                               : a["id"];
            }, co);
        } else {
            return 2;
        }
        c.connect();
        say("ready");
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return expect && done.size() >= expect; });
        say("expected reached");
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "xy_agent: " << e.what() << std::endl;
        return 1;
    }
}
