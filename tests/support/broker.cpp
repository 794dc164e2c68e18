#include "support/broker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

#include <sys/stat.h>

#include "support/child_process.h"
#include "support/eventually.h"

#ifndef XYMQTT_MOSQUITTO_CONF
#error "XYMQTT_MOSQUITTO_CONF must name config/mosquitto/mosquitto.conf (set by tests/support/CMakeLists.txt)"
#endif

namespace xymqtt::test {
namespace {

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (std::size_t at = 0; (at = text.find(from, at)) != std::string::npos; at += to.size()) {
    text.replace(at, from.size(), to);
  }
}

}  // namespace

std::string project_broker_config() { return XYMQTT_MOSQUITTO_CONF; }

std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("free_port: socket: ") + std::strerror(errno));
  sockaddr_in addr = loopback(0);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    ::close(fd);
    throw std::runtime_error(std::string("free_port: ") + std::strerror(err));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool port_open(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr = loopback(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string render_broker_config(std::uint16_t port, const std::string& dir, const std::string& config_source) {
  const std::string source = config_source.empty() ? project_broker_config() : config_source;
  std::string text = read_file(source);
  if (text.empty()) throw std::runtime_error("broker: cannot read " + source);
  // Same rules as xymqtt_render_broker_config in scripts/lib/broker.sh.
  // (Line by line rather than std::regex: GCC 12's <regex> trips
  // -Werror=maybe-uninitialized in sanitizer builds.)
  std::istringstream in(text);
  std::string rendered, line;
  bool listener_found = false;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string keyword, value, more;
    if (words >> keyword >> value && !(words >> more) && keyword == "listener" &&
        value.find_first_not_of("0123456789") == std::string::npos) {
      line = "listener " + std::to_string(port) + " 127.0.0.1";
      listener_found = true;
    }
    rendered += line + "\n";
  }
  if (!listener_found) throw std::runtime_error("broker: " + source + " has no \"listener <port>\" line");
  replace_all(rendered, "/mosquitto/data", dir + "/data");
  replace_all(rendered, "/mosquitto/log", dir + "/log");
  rendered += "\n# Added for a private test broker\n";
  // Started as root, Mosquitto would drop to the "mosquitto" user and then
  // fail to write its database in our root-owned directory.
  if (::geteuid() == 0) rendered += "user root\n";
  return rendered;
}

// ---------------------------------------------------------------------------


broker::broker(std::string extra_config, bool start_now) : dir_("broker"), extra_config_(std::move(extra_config)) {
  ::mkdir((dir_ / "data").c_str(), 0700);
  ::mkdir((dir_ / "log").c_str(), 0700);
  if (start_now) start();
}

broker::~broker() {
  try {
    stop();
  } catch (...) {
  }
}

void broker::start() {
  if (running()) return;
  // A fresh broker picks a free port; a restart reuses its port. Another
  // process may grab a "free" port before Mosquitto binds it: then retry.
  const bool fixed = port_ != 0;
  for (int attempt = 0;; ++attempt) {
    if (!fixed) port_ = free_port();
    std::string config = render_broker_config(port_, dir_.path());
    if (!extra_config_.empty()) config += extra_config_ + "\n";
    write_file(config_path(), config);
    const std::string out_file = dir_ / "stdout.log";
    const auto out_size = read_file(out_file).size();
    child_options options;
    options.output_file = out_file;
    process_ = std::make_unique<child_process>(std::vector<std::string>{"mosquitto", "-c", config_path()}, options);
    const bool up = eventually([&] { return !process_->running() || port_open(port_); }, std::chrono::seconds(10));
    if (up && process_->running()) return;
    process_->kill(SIGKILL);
    process_->wait();
    const std::string out = read_file(out_file).substr(out_size);
    process_.reset();
    if (!fixed && attempt < 3 && out.find("Address already in use") != std::string::npos) continue;
    throw std::runtime_error("broker: mosquitto did not accept connections on 127.0.0.1:" + std::to_string(port_) +
                             " (config " + config_path() + "); its output:\n" + log());
  }
}

bool broker::stop() {
  if (!process_) return true;
  process_->kill(SIGTERM);
  bool graceful = true;
  if (!process_->wait(std::chrono::seconds(10))) {
    graceful = false;
    process_->kill(SIGKILL);
    process_->wait();
  }
  process_.reset();
  return graceful;
}

void broker::kill() {
  if (!process_) return;
  process_->kill(SIGKILL);
  process_->wait();
  process_.reset();
}

bool broker::running() { return process_ && process_->running(); }

std::string broker::uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

std::string broker::log() const {
  std::string text = read_file(dir_ / "log/mosquitto.log");
  std::unordered_set<std::string> seen;
  std::istringstream file_lines(text), out_lines(read_file(dir_ / "stdout.log"));
  std::string line;
  while (std::getline(file_lines, line)) seen.insert(line);
  while (std::getline(out_lines, line)) {
    if (seen.insert(line).second) text += line + "\n";
  }
  return text;
}

std::string broker::errors() const {
  std::istringstream in(log());
  std::string line, found;
  while (std::getline(in, line)) {
    if (line.find("Error") != std::string::npos) found += line + "\n";
  }
  return found;
}

std::string shared_broker_uri() {
  static std::once_flag once;
  static std::unique_ptr<broker> shared;
  static std::string uri;
  std::call_once(once, [] {
    const char* env = std::getenv("XYMQTT_TEST_BROKER");
    if (env && *env) {
      uri = env;
    } else {
      shared = std::make_unique<broker>();
      uri = shared->uri();
    }
  });
  return uri;
}

}  // namespace xymqtt::test
