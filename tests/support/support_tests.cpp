// Self-tests of the test support library, against the real Mosquitto.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "support/broker.h"
#include "support/child_process.h"
#include "support/eventually.h"
#include "support/temp_dir.h"

using namespace std::chrono_literals;
using xymqtt::test::broker;
using xymqtt::test::child_process;

namespace {

std::vector<std::string> cli(const std::string& tool, const broker& b, std::vector<std::string> args) {
  std::vector<std::string> argv{tool, "-h", "127.0.0.1", "-p", std::to_string(b.port()), "-V", "mqttv5"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// Publishes one message with mosquitto_pub and requires that it succeeded.
void publish(const broker& b, std::vector<std::string> args) {
  child_process pub(cli("mosquitto_pub", b, std::move(args)));
  INFO(pub.output());
  REQUIRE(pub.wait(10s) == 0);
}

// Receives `count` messages with mosquitto_sub (10 s at most) and returns them.
std::vector<std::string> receive(const broker& b, std::vector<std::string> args, int count = 1) {
  args.insert(args.end(), {"-W", "10"});
  if (count > 0) args.insert(args.end(), {"-C", std::to_string(count)});
  child_process sub(cli("mosquitto_sub", b, std::move(args)));
  auto status = sub.wait(15s);
  INFO(sub.output());
  REQUIRE(status == 0);
  return sub.lines();
}

std::filesystem::file_time_type mtime(const std::string& path) {
  std::error_code ignored;
  return std::filesystem::last_write_time(path, ignored);
}

}  // namespace

TEST_CASE("broker: starts on a free loopback port and carries a QoS 2 round trip") {
  broker b;
  REQUIRE(b.running());
  CHECK(b.uri() == "tcp://127.0.0.1:" + std::to_string(b.port()));
  CHECK(xymqtt::test::port_open(b.port()));

  // -d prints the SUBACK: only then is the subscription in place. stdbuf:
  // mosquitto_sub's stdout is a pipe here, which stdio would fully buffer.
  auto argv = cli("mosquitto_sub", b, {"-d", "-q", "2", "-t", "support/round-trip", "-C", "1", "-W", "10"});
  argv.insert(argv.begin(), {"stdbuf", "-oL"});
  child_process sub(argv);
  REQUIRE(sub.wait_for_line("SUBACK"));
  publish(b, {"-q", "2", "-t", "support/round-trip", "-m", "hello over QoS 2"});
  REQUIRE(sub.wait(10s) == 0);
  CHECK(sub.wait_for_line([](const std::string& l) { return l == "hello over QoS 2"; }, 1s));
  CHECK(b.errors().empty());
}

TEST_CASE("broker: a graceful restart on the same port keeps retained messages and offline sessions") {
  broker b;
  const auto port = b.port();
  // A persistent MQTT 5 session (expiry 1 h) subscribes, then goes offline.
  receive(b, {"-q", "2", "-t", "support/queued", "-i", "support-offline", "-c", "-x", "3600", "-E"}, 0);
  publish(b, {"-q", "2", "-r", "-t", "support/retained", "-m", "kept"});
  publish(b, {"-q", "2", "-t", "support/queued", "-m", "waiting for you"});

  b.stop();
  CHECK_FALSE(b.running());
  CHECK_FALSE(xymqtt::test::port_open(port));
  CHECK(std::filesystem::exists(b.persistence_file()));

  b.start();
  CHECK(b.port() == port);
  CHECK(receive(b, {"-t", "support/retained"}) == std::vector<std::string>{"kept"});
  CHECK(receive(b, {"-q", "2", "-t", "support/queued", "-i", "support-offline", "-c", "-x", "3600"}) ==
        std::vector<std::string>{"waiting for you"});
  INFO(b.log());
  CHECK(b.errors().empty());
}

TEST_CASE("broker: kill is a crash, and autosave has persisted what came before") {
  broker b;
  publish(b, {"-q", "2", "-r", "-t", "support/crash", "-m", "saved by autosave"});
  const auto published = std::filesystem::file_time_type::clock::now();
  // autosave_interval 1: a save follows within about a second.
  REQUIRE(xymqtt::test::eventually([&] { return mtime(b.persistence_file()) > published; }, 5s));

  b.kill();
  CHECK_FALSE(b.running());
  CHECK_FALSE(xymqtt::test::port_open(b.port()));

  b.start();
  CHECK(receive(b, {"-t", "support/crash"}) == std::vector<std::string>{"saved by autosave"});
  INFO(b.log());
  CHECK(b.errors().empty());
}

TEST_CASE("broker: the config is the project's, with only listener and paths changed") {
  broker b(/*extra_config=*/"", /*start_now=*/false);
  CHECK_FALSE(b.running());
  const std::string source = xymqtt::test::read_file(xymqtt::test::project_broker_config());
  const std::string rendered = xymqtt::test::render_broker_config(1234, "/tmp/x");
  CHECK(rendered.find("\nlistener 1234 127.0.0.1\n") != std::string::npos);
  std::string settings;  // the rendered config without comments
  for (std::size_t at = 0, nl; at < rendered.size(); at = nl + 1) {
    nl = rendered.find('\n', at);
    if (nl == std::string::npos) nl = rendered.size();
    if (rendered[at] != '#') settings += rendered.substr(at, nl - at + 1);
  }
  CHECK(settings.find("/mosquitto/") == std::string::npos);
  CHECK(rendered.find("persistence_location /tmp/x/data/") != std::string::npos);
  CHECK(rendered.find("log_dest file /tmp/x/log/mosquitto.log") != std::string::npos);
  CHECK((rendered.find("\nuser root\n") != std::string::npos) == (::geteuid() == 0));
  for (const char* setting : {"\npersistence true\n", "\nmax_queued_messages 0\n", "\nset_tcp_nodelay true\n",
                              "\nautosave_interval 1\n", "\nmax_queued_bytes ", "\npersistent_client_expiration ",
                              "\nallow_duplicate_messages true\n"}) {
    INFO(setting);
    CHECK(source.find(setting) != std::string::npos);
    CHECK(rendered.find(setting) != std::string::npos);
  }
}

TEST_CASE("broker: extra_config is appended (a second listener here)") {
  const auto second = xymqtt::test::free_port();
  broker b("listener " + std::to_string(second) + " 127.0.0.1");
  CHECK(xymqtt::test::port_open(b.port()));
  CHECK(xymqtt::test::eventually([&] { return xymqtt::test::port_open(second); }, 5s));
  CHECK(b.errors().empty());
}

TEST_CASE("broker: a bad config fails fast with the broker's output") {
  broker b("no_such_option 42", false);
  try {
    b.start();
    FAIL("start() should have thrown");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("no_such_option") != std::string::npos);
  }
  CHECK_FALSE(b.running());
}

TEST_CASE("broker: shared_broker_uri is stable and reachable") {
  const std::string uri = xymqtt::test::shared_broker_uri();
  CHECK(uri.rfind("tcp://127.0.0.1:", 0) == 0);
  CHECK(xymqtt::test::shared_broker_uri() == uri);
  const auto port = static_cast<std::uint16_t>(std::stoi(uri.substr(uri.rfind(':') + 1)));
  CHECK(xymqtt::test::port_open(port));
}

TEST_CASE("child_process: output lines, exit status, environment") {
  xymqtt::test::child_options options;
  options.env["XY_SUPPORT"] = "env works";
  child_process p({"sh", "-c", "echo one; echo \"two $XY_SUPPORT\"; printf three; exit 3"}, options);
  CHECK(p.wait_for_line("two env works"));
  CHECK(p.wait(5s) == 3);
  CHECK(p.wait_for_lines(3));
  CHECK(p.lines() == std::vector<std::string>{"one", "two env works", "three"});
  CHECK_FALSE(p.wait_for_line("never printed", 100ms));
}

TEST_CASE("child_process: kill, running, timeouts, output file") {
  xymqtt::test::temp_dir dir;
  xymqtt::test::child_options options;
  options.output_file = dir / "out.txt";
  child_process p({"sh", "-c", "echo started; exec sleep 30"}, options);
  REQUIRE(p.wait_for_line("started"));
  CHECK(p.running());
  CHECK_FALSE(p.wait(20ms).has_value());
  p.kill(SIGTERM);
  CHECK(p.wait(5s) == 128 + SIGTERM);
  CHECK_FALSE(p.running());
  CHECK(xymqtt::test::eventually([&] { return xymqtt::test::read_file(dir / "out.txt") == "started\n"; }, 2s));
  p.kill();  // no-op once reaped
}

TEST_CASE("child_process: a program that cannot run throws") {
  CHECK_THROWS_AS(child_process({"/nonexistent/xymqtt-program"}), std::runtime_error);
}

TEST_CASE("child_process: the destructor kills a running child") {
  pid_t pid;
  {
    child_process p({"sleep", "30"});
    pid = p.pid();
    CHECK(::kill(pid, 0) == 0);
  }
  CHECK(::kill(pid, 0) != 0);
}

TEST_CASE("child_process: a child started on a short-lived thread outlives that thread") {
  // PR_SET_PDEATHSIG is tied to the forking thread: children are forked on a
  // process-wide helper thread, so a finished worker thread does not kill them.
  std::unique_ptr<child_process> p;
  std::thread([&] { p = std::make_unique<child_process>(std::vector<std::string>{"sleep", "30"}); }).join();
  CHECK_FALSE(xymqtt::test::eventually([&] { return !p->running(); }, 200ms));
  p->kill();
  CHECK(p->wait(5s) == 128 + SIGKILL);
}

TEST_CASE("temp_dir: created fresh and removed with its contents") {
  std::string path;
  {
    xymqtt::test::temp_dir dir("support");
    path = dir.path();
    CHECK(std::filesystem::is_directory(path));
    CHECK(path.find("xymqtt-support.") != std::string::npos);
    std::filesystem::create_directories(dir / "a/b");
    xymqtt::test::write_file(dir / "a/b/file", "content");
    CHECK(xymqtt::test::read_file(dir / "a/b/file") == "content");
    xymqtt::test::temp_dir moved(std::move(dir));
    CHECK(moved.path() == path);
  }
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("eventually: true as soon as the condition holds, false after the timeout") {
  const auto start = std::chrono::steady_clock::now();
  int calls = 0;
  CHECK(xymqtt::test::eventually([&] { return ++calls == 5; }, 5s));
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  const auto before = std::chrono::steady_clock::now();
  CHECK_FALSE(xymqtt::test::eventually([] { return false; }, 50ms));
  CHECK(std::chrono::steady_clock::now() - before >= 50ms);
}
