#include "support/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <stdexcept>

extern char** environ;

namespace xymqtt::test {
namespace {

std::string errno_text(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// Where argv[0] is: itself if it has a '/', else the first executable match in
// PATH, /usr/sbin or /sbin (Mosquitto lives in /usr/sbin, often not in PATH).
std::string resolve(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* env_path = std::getenv("PATH");
  std::string dirs = env_path ? env_path : "/usr/local/bin:/usr/bin:/bin";
  dirs += ":/usr/sbin:/sbin";
  std::size_t begin = 0;
  while (begin <= dirs.size()) {
    std::size_t end = dirs.find(':', begin);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(begin, end - begin);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    begin = end + 1;
  }
  return name;
}

// fork() happens on one long-lived helper thread: PR_SET_PDEATHSIG fires when
// the forking THREAD ends, so forking from a test's short-lived worker thread
// would kill the child too early. The helper lives as long as the process.
class spawner {
 public:
  static spawner& instance() {
    static spawner* s = new spawner;  // leaked on purpose: the thread outlives static destructors
    return *s;
  }
  pid_t run(std::function<pid_t()> fork_fn) {
    std::packaged_task<pid_t()> task(std::move(fork_fn));
    auto result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    wake_.notify_one();
    return result.get();
  }

 private:
  spawner() {
    std::thread([this] {
      for (;;) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return !queue_.empty(); });
        auto task = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        task();
      }
    }).detach();
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<pid_t()>> queue_;
};

}  // namespace

child_process::child_process(std::vector<std::string> argv, child_options options) : argv_(std::move(argv)) {
  if (argv_.empty()) throw std::invalid_argument("child_process: empty argv");
  const std::string program = resolve(argv_[0]);

  // Everything the child needs is prepared here: between fork and exec it
  // may only make async-signal-safe calls.
  std::vector<char*> args;
  for (auto& a : argv_) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (options.env.count(entry.substr(0, eq)) == 0) env_strings.push_back(std::move(entry));
  }
  for (auto& [key, value] : options.env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  if (!options.output_file.empty()) {
    file_fd_ = ::open(options.output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (file_fd_ < 0) throw std::runtime_error(errno_text("child_process: open " + options.output_file, errno));
  }
  int out[2];
  int exec_error[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error(errno_text("child_process: pipe", errno));
  if (::pipe2(exec_error, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    throw std::runtime_error(errno_text("child_process: pipe", errno));
  }
  const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  const bool merge = options.merge_stderr;
  const bool pdeathsig = options.kill_with_parent;
  const bool group = options.new_process_group;
  const pid_t parent = ::getpid();

  pid_ = spawner::instance().run([&]() -> pid_t {
    pid_t pid = ::fork();
    if (pid < 0) return -errno;  // errno is per thread: carry it back in the result
    if (pid != 0) return pid;
    // Child.
    if (pdeathsig) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
    }
    if (group) ::setpgid(0, 0);
    // Don't leak the test's descriptors (sockets, stores) into the program.
    // exec_error[1] must stay open until exec, so mark rather than close.
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    ::dup2(out[1], STDOUT_FILENO);
    if (merge) ::dup2(out[1], STDERR_FILENO);
    int fd = ::open("/dev/null", O_RDONLY);
    if (fd >= 0) ::dup2(fd, STDIN_FILENO);
    // Default signal dispositions and mask for the new program.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    if (cwd && ::chdir(cwd) != 0) {
      int err = errno;
      (void)!::write(exec_error[1], &err, sizeof err);
      ::_exit(127);
    }
    ::execve(program.c_str(), args.data(), envp.data());
    int err = errno;
    (void)!::write(exec_error[1], &err, sizeof err);
    ::_exit(127);
  });
  ::close(out[1]);
  ::close(exec_error[1]);
  if (pid_ < 0) {
    ::close(out[0]);
    ::close(exec_error[0]);
    const int fork_errno = -pid_;
    pid_ = -1;
    throw std::runtime_error(errno_text("child_process: fork", fork_errno));
  }
  kill_group_ = group;
  int err = 0;
  ssize_t n;
  do {
    n = ::read(exec_error[0], &err, sizeof err);
  } while (n < 0 && errno == EINTR);
  ::close(exec_error[0]);
  if (n == static_cast<ssize_t>(sizeof err)) {
    ::close(out[0]);
    reap(0);
    pid_ = -1;
    throw std::runtime_error(errno_text("child_process: cannot run " + argv_[0], err));
  }
  out_fd_ = out[0];
  reader_ = std::thread([this] { read_output(); });
}

child_process::~child_process() {
  if (pid_ > 0 && !status_) {
    kill(SIGKILL);
    reap(0);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_reading_ = true;
  }
  if (reader_.joinable()) reader_.join();
  if (out_fd_ >= 0) ::close(out_fd_);
  if (file_fd_ >= 0) ::close(file_fd_);
}

void child_process::read_output() {
  char buffer[4096];
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_reading_) break;
    }
    // Poll with a timeout so the destructor can stop us even if a grandchild
    // keeps the pipe open.
    pollfd p{out_fd_, POLLIN, 0};
    int r = ::poll(&p, 1, 50);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    ssize_t n = ::read(out_fd_, buffer, sizeof buffer);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    if (file_fd_ >= 0) (void)!::write(file_fd_, buffer, static_cast<std::size_t>(n));
    std::lock_guard<std::mutex> lock(mutex_);
    partial_.append(buffer, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (std::size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
      lines_.push_back(partial_.substr(start, nl - start));
    }
    partial_.erase(0, start);
    changed_.notify_all();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!partial_.empty()) lines_.push_back(std::move(partial_));
  partial_.clear();
  eof_ = true;
  changed_.notify_all();
}

bool child_process::reap(int options) {
  if (status_) return true;
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, options);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

bool child_process::running() { return pid_ > 0 && !reap(WNOHANG); }

void child_process::kill(int sig) {
  if (pid_ <= 0 || status_) return;
  ::kill(kill_group_ ? -pid_ : pid_, sig);
}

std::optional<int> child_process::wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  while (!reap(WNOHANG)) {
    if (pid_ <= 0 || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(10)) pause += std::chrono::milliseconds(1);
  }
  // Let the reader take in the last output, so lines() is complete after
  // wait(); bounded, as a grandchild may still hold the pipe open.
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, std::chrono::seconds(1), [this] { return eof_; });
  return status_;
}

bool child_process::wait_for_line(const std::function<bool(const std::string&)>& pred,
                                  std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::size_t checked = 0;
  return changed_.wait_for(lock, timeout, [&] {
    for (; checked < lines_.size(); ++checked) {
      if (pred(lines_[checked])) return true;
    }
    return eof_;
  }) && checked < lines_.size();
}

bool child_process::wait_for_line(const std::string& substring, std::chrono::milliseconds timeout) {
  return wait_for_line([&](const std::string& line) { return line.find(substring) != std::string::npos; },
                       timeout);
}

bool child_process::wait_for_lines(std::size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return lines_.size() >= n || eof_; });
  return lines_.size() >= n;
}

std::vector<std::string> child_process::lines() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lines_;
}

std::string child_process::output() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string all;
  for (const auto& line : lines_) {
    all += line;
    all += '\n';
  }
  return all + partial_;
}

void run_checked(const std::vector<std::string>& argv, const std::string& cwd) {
  child_options o;
  o.cwd = cwd;
  child_process p(argv, o);
  const auto rc = p.wait(std::chrono::seconds(60));
  if (rc != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    throw std::runtime_error(cmd + " failed (" + (rc ? "exit " + std::to_string(*rc) : std::string("timeout")) +
                             "): " + p.output());
  }
}

}  // namespace xymqtt::test
