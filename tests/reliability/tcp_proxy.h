// A small TCP proxy for fault injection between a client and the broker (127.0.0.1 only).
// Faults: cut every connection now (RST), cut each connection after a random number of bytes (so cuts
// fall inside MQTT packets), stall (hold all data, or only the broker's), and a slow link (small chunks
// with pauses).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

namespace xymqtt::test {

class tcp_proxy {
public:
    explicit tcp_proxy(std::uint16_t upstream_port, std::uint64_t seed = 1) : upstream_(upstream_port), rng_(seed) {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a = addr(0);
        socklen_t len = sizeof a;
        if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 64) != 0 ||
            ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            throw std::runtime_error(std::string("tcp_proxy: ") + std::strerror(errno));
        port_ = ntohs(a.sin_port);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~tcp_proxy() {
        stop_ = true;
        if (acceptor_.joinable()) acceptor_.join();
        std::lock_guard<std::mutex> lk(mu_);
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        ::close(listen_fd_);
    }
    tcp_proxy(const tcp_proxy&) = delete;
    tcp_proxy& operator=(const tcp_proxy&) = delete;

    std::uint16_t port() const { return port_; }
    std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

    /// Resets every open connection (new ones are accepted as usual).
    void cut_all() { ++generation_; }
    /// cut_all(), then waits until every connection open before it has been reset (each notices within
    /// ~20 ms). @return false on timeout.
    bool cut_all_and_wait(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        const auto gen = ++generation_;
        std::unique_lock<std::mutex> lk(live_mu_);
        return live_cv_.wait_for(lk, timeout, [&] {
            for (const auto& [g, n] : live_)
                if (g < gen && n > 0) return false;
            return true;
        });
    }
    /// 0 = off; else each new connection is reset after a random number of bytes in [1, max_bytes].
    void random_cuts(std::size_t max_bytes) { random_cut_max_ = max_bytes; }
    /// Holds all data in both directions while true (the kernel buffers fill; nothing is lost).
    void stall(bool on) { stalled_ = on; }
    /// Holds the data from the broker to the clients while true (what the clients send still passes).
    void hold_to_clients(bool on) { held_down_ = on; }
    /// 0 = off; else forwards at most `chunk` bytes per `pause` in each direction.
    void slow(std::size_t chunk, std::chrono::milliseconds pause = std::chrono::milliseconds(2)) {
        slow_pause_ms_ = static_cast<int>(pause.count());
        slow_chunk_ = chunk;
    }
    /// Refuses (resets at once) new connections while true: the broker seems down.
    void refuse(bool on) { refusing_ = on; }

    std::uint64_t connections() const { return connections_; }
    std::uint64_t cuts() const { return cuts_; }
    std::uint64_t bytes() const { return bytes_; }
    /// Bytes forwarded from the clients to the broker.
    std::uint64_t bytes_to_server() const { return bytes_up_; }

private:
    static sockaddr_in addr(std::uint16_t port) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return a;
    }
    static void reset(int fd) {
        linger l{1, 0};  // close with RST, as a broken network or a dead peer does
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        ::close(fd);
    }

    void accept_loop() {
        while (!stop_) {
            pollfd p{listen_fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) continue;
            if (refusing_) {
                reset(c);
                ++cuts_;
                continue;
            }
            const int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a = addr(upstream_);
            if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
                reset(c);
                ::close(u);
                continue;
            }
            int one = 1;
            ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            std::size_t budget = 0;
            if (const auto m = random_cut_max_.load()) {
                std::lock_guard<std::mutex> lk(mu_);
                budget = std::uniform_int_distribution<std::size_t>(1, m)(rng_);
            }
            ++connections_;
            std::lock_guard<std::mutex> lk(mu_);
            threads_.emplace_back([this, c, u, budget] { pump(c, u, budget); });
        }
    }

    // Forwards both directions of one connection until either side closes or a fault cuts it.
    void pump(int c, int u, std::size_t budget) {
        const auto gen = generation_.load();
        {
            std::lock_guard<std::mutex> lk(live_mu_);
            ++live_[gen];
        }
        std::size_t moved = 0;
        char buf[16384];
        bool cut = false;
        while (!stop_) {
            if (generation_ != gen) {
                cut = true;
                break;
            }
            if (stalled_) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                continue;
            }
            pollfd p[2] = {{c, POLLIN, 0}, {u, short(held_down_ ? 0 : POLLIN), 0}};
            if (::poll(p, 2, 20) <= 0) continue;
            bool closed = false;
            for (int i = 0; i < 2 && !closed && !cut; ++i) {
                if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)) || (i == 1 && held_down_)) continue;
                const int from = i == 0 ? c : u, to = i == 0 ? u : c;
                std::size_t want = sizeof buf;
                if (const auto chunk = slow_chunk_.load()) want = std::min(want, chunk);
                if (budget) want = std::min(want, budget - moved);
                const ssize_t n = ::recv(from, buf, want, 0);
                if (n <= 0) {
                    closed = true;
                    break;
                }
                std::size_t off = 0;
                while (off < std::size_t(n)) {
                    const ssize_t w = ::send(to, buf + off, std::size_t(n) - off, MSG_NOSIGNAL);
                    if (w <= 0) {
                        closed = true;
                        break;
                    }
                    off += std::size_t(w);
                }
                moved += std::size_t(n);
                bytes_ += std::uint64_t(n);
                if (i == 0) bytes_up_ += std::uint64_t(n);
                if (budget && moved >= budget) cut = true;  // mid-packet, wherever the budget ends
                if (slow_chunk_) std::this_thread::sleep_for(std::chrono::milliseconds(slow_pause_ms_.load()));
            }
            if (closed || cut) break;
        }
        if (cut) ++cuts_;
        reset(c);
        reset(u);
        std::lock_guard<std::mutex> lk(live_mu_);
        if (--live_[gen] == 0) live_.erase(gen);
        live_cv_.notify_all();
    }

    std::uint16_t upstream_;
    std::uint16_t port_ = 0;
    int listen_fd_ = -1;
    std::mt19937_64 rng_;
    std::atomic<bool> stop_{false}, stalled_{false}, refusing_{false}, held_down_{false};
    std::atomic<std::uint64_t> generation_{0}, connections_{0}, cuts_{0}, bytes_{0}, bytes_up_{0};
    std::atomic<std::size_t> random_cut_max_{0}, slow_chunk_{0};
    std::atomic<int> slow_pause_ms_{2};
    std::mutex mu_;
    std::list<std::thread> threads_;
    std::mutex live_mu_;  // apart from mu_, which the destructor holds while joining the pumps
    std::condition_variable live_cv_;
    std::map<std::uint64_t, int> live_;  // open connections per generation
    std::thread acceptor_;
};

}  // namespace xymqtt::test
