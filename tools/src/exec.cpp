#include "exec.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace xymqtt::cli {

void exec_control::terminate() {
    killed = true;
    const pid_t p = pid.load();
    if (p > 0) ::kill(-p, SIGTERM);
}

namespace {

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

}  // namespace

exec_result run_shell(const std::string& command, const std::string& input,
                      const std::map<std::string, std::string>& env, exec_control& control,
                      std::optional<std::chrono::milliseconds> timeout) {
    int in[2], out[2], err[2];
    if (::pipe2(in, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    if (::pipe2(out, O_CLOEXEC) != 0) {
        ::close(in[0]);
        ::close(in[1]);
        throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    }
    if (::pipe2(err, O_CLOEXEC) != 0) {
        for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
        throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    }
    // Everything the child needs is prepared before fork (only async-signal-safe calls after it).
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        const std::string entry(*e);
        const auto eq = entry.find('=');
        if (eq != std::string::npos && env.count(entry.substr(0, eq))) continue;
        env_strings.push_back(entry);
    }
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
    const pid_t pid = ::fork();
    if (pid < 0) {
        for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) ::close(fd);
        throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
        ::setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the tool blocks SIGINT/SIGTERM in its threads
        ::signal(SIGPIPE, SIG_DFL);
        ::dup2(in[0], 0);
        ::dup2(out[1], 1);
        ::dup2(err[1], 2);
        ::execve("/bin/sh", const_cast<char* const*>(argv), envp.data());
        const char msg[] = "xymqtt: cannot run /bin/sh\n";
        [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
        ::_exit(127);
    }
    ::setpgid(pid, pid);  // also from the parent, so that terminate() works at once
    control.pid = pid;
    if (control.killed) ::kill(-pid, SIGTERM);
    ::close(in[0]);
    ::close(out[1]);
    ::close(err[1]);
    int wfd = in[1], ofd = out[0], efd = err[0];
    ::fcntl(wfd, F_SETFL, ::fcntl(wfd, F_GETFL) | O_NONBLOCK);

    exec_result r;
    std::size_t written = 0;
    if (input.empty()) close_fd(wfd);
    const auto deadline = timeout ? std::chrono::steady_clock::now() + *timeout : std::chrono::steady_clock::time_point::max();
    char buf[65536];
    while (ofd >= 0 || efd >= 0) {
        pollfd fds[3];
        int n = 0;
        if (wfd >= 0) fds[n++] = {wfd, POLLOUT, 0};
        if (ofd >= 0) fds[n++] = {ofd, POLLIN, 0};
        if (efd >= 0) fds[n++] = {efd, POLLIN, 0};
        int wait_ms = -1;
        if (timeout) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
            if (left <= 0) {
                if (!r.timed_out) {
                    r.timed_out = true;
                    ::kill(-pid, SIGKILL);
                }
                wait_ms = 100;  // wait for the pipes to close
            } else {
                wait_ms = static_cast<int>(left);
            }
        }
        const int rc = ::poll(fds, static_cast<nfds_t>(n), wait_ms);
        if (rc < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < n; ++i) {
            if (!fds[i].revents) continue;
            if (fds[i].fd == wfd) {
                const auto k = ::write(wfd, input.data() + written, input.size() - written);
                if (k > 0) written += static_cast<std::size_t>(k);
                if (k < 0 && errno != EAGAIN) close_fd(wfd);  // EPIPE: the command does not read its input
                if (written == input.size()) close_fd(wfd);
            } else {
                int& fd = fds[i].fd == ofd ? ofd : efd;
                std::string& sink = fds[i].fd == ofd ? r.out : r.err;
                const auto k = ::read(fd, buf, sizeof buf);
                if (k > 0)
                    sink.append(buf, static_cast<std::size_t>(k));
                else if (k == 0 || errno != EINTR)
                    close_fd(fd);
            }
        }
    }
    close_fd(wfd);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    control.pid = 0;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

}  // namespace xymqtt::cli
