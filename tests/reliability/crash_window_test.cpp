// Deterministic versions of the crash matrix's most delicate moment: a process killed while the commit
// of an arriving message is in progress (the stall is injected through a wrapping store, then SIGKILL).
#include <catch2/catch.hpp>

#include "rel_util.h"
#include "support/child_process.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

TEST_CASE("a subscriber killed while committing an arriving message receives it after restart",
          "[crash][bug]") {
    // Found by the crash matrix (1 lost event in about 20-40 subscriber kills). Paho C 1.3.12 writes its
    // own `r5-<packet id>` record when it reads a QoS 2 PUBLISH (MQTTPacket_Factory), BEFORE it calls the
    // message callback where the runtime commits to its inbox. Killed in between, the restarted Paho
    // restores `r5-<id>` as "already received", so the broker's DUP resend is acknowledged without a
    // callback: the message is acknowledged to the broker and never handled.
    temp_dir dir("stall-arrival");
    broker b;
    const std::string id = unique_id("stall"), topic = "rel/" + id + "/ev";
    const std::string journal = dir / "sub.journal", store = dir / "sub";
    auto sub_argv = [&](bool stall) {
        std::vector<std::string> v{REL_AGENT, "sub", "--broker", b.uri(), "--id", id, "--store", store,
                                   "--journal", journal, "--filter", topic};
        if (stall) v.insert(v.end(), {"--stall-arrival", "1"});
        return v;
    };
    auto pub = connected(options_for(dir, "pub", b.uri()));
    {
        // The subscription first, live at the broker (persistent session).
        child_process sub(sub_argv(false));
        REQUIRE(sub.wait_for_line("ready"));
        REQUIRE(eventually([&] {
            pub->publish(topic, "probe").get();
            return eventually([&] { return journal_has(journal, "h", "probe"); }, 500ms);
        }, 30s));
    }
    child_process stalled(sub_argv(true));
    REQUIRE(stalled.wait_for_line("ready"));
    pub->publish(topic, "victim").get();  // PUBCOMP: the broker has it
    REQUIRE(stalled.wait_for_line("stalled", 20s));
    stalled.kill(SIGKILL);
    stalled.wait();
    std::string paho_keys;
    {
        auto s = open_lmdb_store(store, store_options{durability::process});
        for (const auto& k : s->session().keys()) paho_keys += k + " ";
        INFO("inbox records after the kill: " << s->count(table::incoming));
        CHECK(s->count(table::incoming) == 0);  // the commit really did not happen
    }
    INFO("Paho records left by the killed subscriber: " << paho_keys);
    child_process again(sub_argv(false));
    REQUIRE(again.wait_for_line("ready"));
    pub->publish(topic, "after").get();
    REQUIRE(eventually([&] { return journal_has(journal, "h", "after"); }, 20s));
    CHECK(journal_has(journal, "h", "victim"));
}
