// Runs a program for a test: its output is captured line by line, it can be
// awaited, signalled and killed, and it never outlives the test.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace xymqtt::test {

struct child_options {
  // Added to (or replacing in) the parent's environment.
  std::map<std::string, std::string> env;
  // Also append everything the child prints to this file ("" = don't).
  std::string output_file;
  // Capture stderr together with stdout (else stderr goes to the test's stderr).
  bool merge_stderr = true;
  // Working directory ("" = the test's).
  std::string cwd;
  // The child gets SIGKILL when the test process dies (prctl PR_SET_PDEATHSIG),
  // so a crashed or killed test leaves no stray processes behind.
  bool kill_with_parent = true;
  // Own process group; kill() then signals the whole group (a script and its children).
  bool new_process_group = false;
};

class child_process {
 public:
  // Starts argv[0] (looked up in PATH, and /usr/sbin) with argv; throws
  // std::runtime_error when it cannot be executed.
  explicit child_process(std::vector<std::string> argv, child_options options = {});
  // Kills (SIGKILL) and reaps the child if it still runs.
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends a signal (default SIGKILL); no-op once the child has been reaped.
  void kill(int sig = SIGKILL);
  // Waits for the child to end: its exit code, or 128 + signal number if a
  // signal ended it (as a shell reports it); nullopt on timeout. After it
  // returns a status, lines() holds all the output (unless a grandchild still
  // holds the output open: then up to 1 s is waited for it).
  std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Waits until a line of output satisfies `pred` (lines seen before count
  // too); false on timeout or when the output ended without such a line.
  bool wait_for_line(const std::function<bool(const std::string&)>& pred,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  bool wait_for_line(const std::string& substring,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Waits until at least n lines were printed; false on timeout / end of output.
  bool wait_for_lines(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Complete lines printed so far (without '\n'; a last line without '\n' is
  // included once the output ends), and all of them joined with '\n'.
  std::vector<std::string> lines() const;
  std::string output() const;

 private:
  void read_output();
  bool reap(int options);

  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  bool kill_group_ = false;
  std::optional<int> status_;
  int out_fd_ = -1;
  int file_fd_ = -1;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> lines_;
  std::string partial_;
  bool eof_ = false;
  bool stop_reading_ = false;
  std::thread reader_;
};

// Runs a set-up command (openssl, mosquitto_passwd...) in `cwd` ("" = the test's) to its end. Throws
// std::runtime_error with its output if it fails or takes more than a minute.
void run_checked(const std::vector<std::string>& argv, const std::string& cwd = {});

}  // namespace xymqtt::test
