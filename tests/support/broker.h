// A private Mosquitto for one test (or one test process), configured from the
// project's config/mosquitto/mosquitto.conf with only its listener and paths
// changed, exactly as scripts/lib/broker.sh renders it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "support/temp_dir.h"

namespace xymqtt::test {

// The project's broker config: <source dir>/config/mosquitto/mosquitto.conf.
std::string project_broker_config();

// A TCP port on 127.0.0.1 that is free right now.
std::uint16_t free_port();
// Does something accept TCP connections on 127.0.0.1:port?
bool port_open(std::uint16_t port);

// Renders a broker config (config_source, default project_broker_config()) for a private broker on 127.0.0.1:port writing under dir: the
// "listener <port>" line and the /mosquitto/{data,log} paths are replaced and
// "user root" is appended when running as root. Throws if the file cannot be
// read or has no listener line.
std::string render_broker_config(std::uint16_t port, const std::string& dir,
                                 const std::string& config_source = {});

class child_process;

class broker {
 public:
  // Starts at once (unless start_now is false) on a free port in a fresh temp
  // dir. extra_config is appended to the config (password_file, acl_file, a
  // TLS listener, ...). Throws std::runtime_error with the log if the broker
  // does not accept connections within 10 s.
  explicit broker(std::string extra_config = {}, bool start_now = true);
  // Stops it gracefully.
  ~broker();
  broker(const broker&) = delete;
  broker& operator=(const broker&) = delete;

  // Starts again on the SAME port with the same persistence directory (a
  // restart). No-op if running.
  void start();
  // SIGTERM and wait: Mosquitto saves its database before it exits. Killed
  // (SIGKILL) if it has not exited within 10 s: returns false then, and only
  // what autosave wrote survives.
  bool stop();
  // SIGKILL and wait: a crash; only what autosave wrote survives.
  void kill();
  bool running();

  std::string uri() const;  // "tcp://127.0.0.1:PORT"
  std::uint16_t port() const { return port_; }
  const std::string& dir() const { return dir_.path(); }  // config, data/, log/
  std::string config_path() const { return dir_ / "mosquitto.conf"; }
  std::string persistence_file() const { return dir_ / "data/mosquitto.db"; }
  // The broker's log file (all runs so far), followed by any lines of its
  // stdout/stderr that are not in the file (errors from before it opened it).
  std::string log() const;
  // Lines of log() containing "Error".
  std::string errors() const;

 private:
  temp_dir dir_;
  std::string extra_config_;
  std::uint16_t port_ = 0;
  std::unique_ptr<child_process> process_;
};

// The broker for tests that need "a broker" and don't restart it: the URI in
// XYMQTT_TEST_BROKER (scripts/test sets it), else one broker started for this
// process on first use and stopped at exit. Thread-safe.
std::string shared_broker_uri();

}  // namespace xymqtt::test
