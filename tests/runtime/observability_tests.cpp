// The default logger (stderr, XYMQTT_LOG_LEVEL) and the metrics an adapter reads.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>
#include <map>
#include <sstream>

#include "support/broker.h"
#include "util.h"
#include "xymqtt/exception.h"

using namespace xymqtt;
using namespace xymqtt::test;
using namespace std::chrono_literals;

namespace {

// Sets an environment variable for one scope.
struct scoped_env {
    std::string name;
    std::optional<std::string> before;
    scoped_env(std::string n, const char* value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) before = v;
        if (value)
            ::setenv(name.c_str(), value, 1);
        else
            ::unsetenv(name.c_str());
    }
    ~scoped_env() {
        if (before)
            ::setenv(name.c_str(), before->c_str(), 1);
        else
            ::unsetenv(name.c_str());
    }
};

// Sends this process's stderr to a file for one scope.
struct captured_stderr {
    std::string path;
    int saved = -1;
    explicit captured_stderr(std::string p) : path(std::move(p)) {
        std::fflush(stderr);
        saved = ::dup(2);
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        REQUIRE(fd >= 0);
        ::dup2(fd, 2);
        ::close(fd);
    }
    std::string release() {
        std::cerr.flush();
        std::fflush(stderr);
        if (saved >= 0) {
            ::dup2(saved, 2);
            ::close(saved);
            saved = -1;
        }
        std::ifstream in(path);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    ~captured_stderr() { release(); }
};

}  // namespace

TEST_CASE("stream_logger writes the lines at and above its level, with the client id", "[logging]") {
    std::ostringstream out;
    auto log = stream_logger(out, log_level::warning, "svc-1");
    log(log_level::debug, "quiet");
    log(log_level::info, "quiet too");
    log(log_level::warning, "connection lost: eof");
    log(log_level::error, "store full");
    CHECK(out.str() == "xymqtt svc-1 warning: connection lost: eof\nxymqtt svc-1 error: store full\n");
}

TEST_CASE("XYMQTT_LOG_LEVEL chooses the default logger's level, off silences it, anything else is refused",
          "[logging]") {
    {
        scoped_env e("XYMQTT_LOG_LEVEL", nullptr);
        CHECK(log_level_from_env() == log_level::warning);
    }
    {
        scoped_env e("XYMQTT_LOG_LEVEL", "debug");
        CHECK(log_level_from_env() == log_level::debug);
    }
    {
        scoped_env e("XYMQTT_LOG_LEVEL", "off");
        CHECK_FALSE(log_level_from_env().has_value());
    }
    {
        scoped_env e("XYMQTT_LOG_LEVEL", "loud");
        CHECK_THROWS_AS(log_level_from_env(), configuration_error);
        temp_dir dir("logbad");
        auto o = options_for(dir, "c");
        o.hooks.on_log = nullptr;
        CHECK_THROWS_AS(client(o), configuration_error);
    }
}

TEST_CASE("a client without a logger of its own writes a missing broker to stderr, at warning once per failure",
          "[logging]") {
    temp_dir dir("logdefault");
    auto o = options_for(dir, "c", "tcp://127.0.0.1:" + std::to_string(free_port()));  // nobody listens
    o.hooks.on_log = nullptr;
    o.reconnect_max = 50ms;
    scoped_env e("XYMQTT_LOG_LEVEL", "debug");  // the repeated failures show at debug
    const std::string path = dir / "stderr.txt";
    const std::string failed = "connect to " + o.server_uri + " failed";
    auto count = [](const std::string& text, const std::string& what) {
        std::size_t n = 0;
        for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
        return n;
    };
    auto read = [&] {
        std::ifstream in(path);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    captured_stderr err(path);
    {
        client c(o);
        c.connect();
        REQUIRE(eventually([&] { return count(read(), failed) >= 4; }, 20s));  // several attempts
        c.close();
    }
    const auto text = err.release();
    INFO(text);
    CHECK(count(text, "xymqtt " + o.client_id + " warning: " + failed) == 1);
    CHECK(count(text, "xymqtt " + o.client_id + " debug: " + failed) >= 3);
}

TEST_CASE("metrics() gives counters and gauges that follow the client's work", "[metrics]") {
    temp_dir dir("metrics");
    auto c = connected(options_for(dir, "c"));
    const std::string topic = "test/" + c->options().client_id + "/evt";
    recorder got;
    c->subscribe(topic, [&](const message& m) { got.add(m.payload); });
    publish_until_heard(*c, topic, "probe", got);
    auto read = [&] {
        std::map<std::string, metric> m;
        for (auto& x : c->metrics()) m.emplace(x.name, x);
        return m;
    };
    auto before = read();
    for (int i = 0; i < 5; ++i) c->publish(topic, "m" + std::to_string(i)).get();
    REQUIRE(eventually([&] { return read().at("xymqtt_handled_total").value >= before.at("xymqtt_handled_total").value + 5; }));
    auto after = read();
    CHECK(after.at("xymqtt_published_total").value - before.at("xymqtt_published_total").value == 5);
    CHECK(after.at("xymqtt_published_total").type == metric::kind::counter);
    CHECK(after.at("xymqtt_connected").value == 1);
    CHECK(after.at("xymqtt_connected").type == metric::kind::gauge);
    CHECK(eventually([&] { return read().at("xymqtt_outbox_messages").value == 0; }));  // removals are committed after
    for (const auto& [name, m] : after) {
        CHECK_FALSE(m.help.empty());
        CHECK((m.type == metric::kind::counter) == (name.size() > 6 && name.substr(name.size() - 6) == "_total"));
    }
    c->close();
    CHECK(read().at("xymqtt_connected").value == 0);
}
