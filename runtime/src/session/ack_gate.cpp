#include "session/ack_gate.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "session/tcp_nodelay.h"

namespace xymqtt::detail {

namespace {

// Bytes buffered in each direction before the relay stops reading from that side (the writer then waits:
// Paho keeps unsent packets in its own queue, the broker in its socket).
constexpr std::size_t buffer_limit = std::size_t(4) << 20;

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

// MQTT control packet types that acknowledge a flow the broker started: what the gate holds.
bool is_inbound_ack(std::uint8_t type) { return type == 4 /*PUBACK*/ || type == 5 /*PUBREC*/ || type == 7 /*PUBCOMP*/; }

}  // namespace

// One connection: Paho's socket, the broker's, and the bytes on their way.
struct ack_gate::pair {
    int paho = -1, broker = -1;
    std::vector<char> up;         // from Paho to the broker
    std::size_t sent = 0;         // of `up`, sent
    std::size_t cleared = 0;      // of `up`, free to send (packets scanned and not held)
    std::size_t frame_left = 0;   // bytes of the packet being cleared that have not come yet
    std::vector<char> down;       // from the broker to Paho
    std::size_t down_sent = 0;
    bool live() const { return paho >= 0; }
};

ack_gate::ack_gate(std::function<void(log_level, const std::string&)> log) : log_(std::move(log)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listener_ < 0) throw std::system_error(errno, std::generic_category(), "acknowledgement gate: socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 8) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        const int e = errno;
        close_fd(listener_);
        throw std::system_error(e, std::generic_category(), "acknowledgement gate: listen on 127.0.0.1");
    }
    port_ = ntohs(a.sin_port);
    uri_ = "tcp://127.0.0.1:" + std::to_string(port_);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        const int e = errno;
        close_fd(listener_);
        throw std::system_error(e, std::generic_category(), "acknowledgement gate: eventfd");
    }
    thread_ = std::thread([this] { run(); });
}

ack_gate::~ack_gate() {
    stopping_ = true;
    wake();
    if (thread_.joinable()) thread_.join();
    close_fd(pending_);
    close_fd(wake_fd_);
    close_fd(listener_);
}

void ack_gate::wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void ack_gate::prepare(const std::string& host, int port, std::chrono::milliseconds timeout) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::runtime_error("cannot resolve " + host + ": " + ::gai_strerror(rc));
    std::string why = "no address";
    int fd = -1;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
        int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (s < 0) continue;
        int err = ::connect(s, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
        if (err == EINPROGRESS) {
            pollfd p{s, POLLOUT, 0};
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
            socklen_t el = sizeof err;
            if (n <= 0) err = ETIMEDOUT;
            else if (::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
        }
        if (err == 0) {
            fd = s;
        } else {
            why = std::strerror(err);
            ::close(s);
        }
    }
    ::freeaddrinfo(res);
    if (fd < 0) throw std::runtime_error(host + ":" + std::to_string(port) + ": " + why);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // the relay writes whole packets
    {
        std::lock_guard<std::mutex> lk(mu_);
        close_fd(pending_);
        pending_ = fd;
        ++connection_;
        held_.clear();
        cut_ = true;  // the earlier connection, if the relay still has one
    }
    wake();
}

std::uint64_t ack_gate::hold(int packet_id) {
    std::lock_guard<std::mutex> lk(mu_);
    held_.insert(packet_id);
    return connection_;
}

void ack_gate::release(std::uint64_t connection, int packet_id) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (connection != connection_) return;
        held_.erase(packet_id);
    }
    if (blocked_on_.load(std::memory_order_acquire) == packet_id) wake();
}

void ack_gate::cut() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        cut_ = true;
    }
    wake();
}

std::size_t ack_gate::held() const {
    std::lock_guard<std::mutex> lk(mu_);
    return held_.size();
}

bool ack_gate::own_socket(int accepted) const {
    // The peer of the accepted socket must be the local end of a socket of this process connected to the
    // gate: Paho's. Another local user could otherwise borrow the prepared broker connection.
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    if (::getpeername(accepted, reinterpret_cast<sockaddr*>(&peer), &len) != 0 || peer.sin_family != AF_INET) return false;
    return has_socket_to_peer_from("127.0.0.1", port_, ntohs(peer.sin_port));
}

void ack_gate::drop(pair& p, const std::string& why) {
    if (p.live() && !why.empty()) log_(log_level::debug, "acknowledgement gate: connection ended: " + why);
    // Shut down first: Paho sees the loss at once, and nothing buffered or held goes anywhere.
    if (p.paho >= 0) ::shutdown(p.paho, SHUT_RDWR);
    if (p.broker >= 0) ::shutdown(p.broker, SHUT_RDWR);
    close_fd(p.paho);
    close_fd(p.broker);
    p = pair{};
}

void ack_gate::clear(pair& p) {
    // What Paho wrote may leave up to the first acknowledgement still held.
    if (!p.live()) return;
    bool malformed = false;
    std::unique_lock<std::mutex> lk(mu_);
    blocked_on_.store(-1, std::memory_order_relaxed);
    while (p.cleared < p.up.size()) {
        if (p.frame_left) {
            const std::size_t n = std::min(p.frame_left, p.up.size() - p.cleared);
            p.cleared += n;
            p.frame_left -= n;
            continue;
        }
        // Fixed header: type byte, then the remaining length in 1 to 4 bytes.
        const std::size_t at = p.cleared;
        std::size_t length = 0, i = 1, mult = 1;
        bool complete = false;
        for (; i <= 4 && at + i < p.up.size(); ++i) {
            const auto b = static_cast<std::uint8_t>(p.up[at + i]);
            length += (b & 127u) * mult;
            mult *= 128;
            if (!(b & 128u)) {
                complete = true;
                ++i;
                break;
            }
        }
        if (!complete) {
            malformed = i > 4;
            break;
        }
        const auto type = static_cast<std::uint8_t>(static_cast<std::uint8_t>(p.up[at]) >> 4);
        if (is_inbound_ack(type) && length >= 2) {
            if (at + i + 2 > p.up.size()) break;
            const int id = (static_cast<std::uint8_t>(p.up[at + i]) << 8) | static_cast<std::uint8_t>(p.up[at + i + 1]);
            if (held_.count(id)) {
                blocked_on_.store(id, std::memory_order_release);
                break;
            }
        }
        p.frame_left = i + length;
    }
    lk.unlock();
    if (malformed) drop(p, "Paho wrote a packet with a malformed length");
}

void ack_gate::run() {
    pair p;
    std::vector<char> chunk(64 * 1024);
    while (!stopping_) {
        bool cut = false;
        {
            std::lock_guard<std::mutex> lk(mu_);
            std::swap(cut, cut_);
        }
        if (cut) drop(p, "cut");
        clear(p);

        pollfd fds[4];
        nfds_t n = 0;
        fds[n++] = {wake_fd_, POLLIN, 0};
        fds[n++] = {listener_, POLLIN, 0};
        const nfds_t paho_at = n, broker_at = n + 1;
        if (p.live()) {
            short pe = 0, be = 0;
            if (p.up.size() - p.sent < buffer_limit) pe |= POLLIN;
            if (p.down_sent < p.down.size()) pe |= POLLOUT;
            if (p.down.size() - p.down_sent < buffer_limit) be |= POLLIN;
            if (p.sent < p.cleared) be |= POLLOUT;
            fds[n++] = {p.paho, pe, 0};
            fds[n++] = {p.broker, be, 0};
        }
        if (::poll(fds, n, -1) < 0) {
            if (errno == EINTR) continue;
            log_(log_level::error, std::string("acknowledgement gate: poll: ") + std::strerror(errno));
            drop(p, "");
            std::this_thread::sleep_for(std::chrono::milliseconds(10));  // nothing to await: the poll itself failed
            continue;
        }
        if (fds[0].revents) {
            std::uint64_t v;
            [[maybe_unused]] auto r = ::read(wake_fd_, &v, sizeof v);
        }
        if (fds[1].revents & POLLIN) {
            const int a = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (a >= 0) {
                int broker = -1;
                {
                    std::lock_guard<std::mutex> lk(mu_);
                    cut_ = false;
                    if (own_socket(a)) std::swap(broker, pending_);
                }
                if (broker < 0) {
                    log_(log_level::warning, "acknowledgement gate: a connection that is not this client's, or came "
                                             "before its broker connection was made, was closed");
                    ::close(a);
                } else {
                    drop(p, "replaced by a new connection");
                    const int one = 1;
                    ::setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    p.paho = a;
                    p.broker = broker;
                }
            }
            continue;  // scan the new pair before polling it
        }
        if (!p.live()) continue;
        const short pr = fds[paho_at].revents, br = fds[broker_at].revents;
        if (pr & POLLIN) {
            const ssize_t got = ::recv(p.paho, chunk.data(), chunk.size(), 0);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                drop(p, "Paho closed its connection");
                continue;
            }
            if (got > 0) {
                p.up.insert(p.up.end(), chunk.data(), chunk.data() + got);
                clear(p);  // and sent below, in this round
            }
        } else if (pr & (POLLERR | POLLHUP | POLLNVAL)) {
            drop(p, "Paho's connection failed");
            continue;
        }
        if (br & POLLIN) {
            const ssize_t got = ::recv(p.broker, chunk.data(), chunk.size(), 0);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                // What the broker said last (a DISCONNECT with its reason) still reaches Paho if it fits.
                const std::string why =
                    got == 0 ? "the broker closed the connection" : std::string("broker connection: ") + std::strerror(errno);
                if (p.down_sent < p.down.size())
                    [[maybe_unused]] auto w =
                        ::send(p.paho, p.down.data() + p.down_sent, p.down.size() - p.down_sent, MSG_NOSIGNAL);
                drop(p, why);
                continue;
            }
            if (got > 0) p.down.insert(p.down.end(), chunk.data(), chunk.data() + got);
        } else if (br & (POLLERR | POLLHUP | POLLNVAL)) {
            drop(p, "the broker connection failed");
            continue;
        }
        if (p.sent < p.cleared) {
            const ssize_t w = ::send(p.broker, p.up.data() + p.sent, p.cleared - p.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) p.sent += static_cast<std::size_t>(w);
            else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                drop(p, std::string("broker connection: ") + std::strerror(errno));
                continue;
            }
        }
        if (p.down_sent < p.down.size()) {
            const ssize_t w =
                ::send(p.paho, p.down.data() + p.down_sent, p.down.size() - p.down_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) p.down_sent += static_cast<std::size_t>(w);
            else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                drop(p, "Paho's connection failed");
                continue;
            }
        }
        // Compact what was sent, not on every packet.
        if (p.sent > (std::size_t(64) << 10) && p.sent * 2 > p.up.size()) {
            p.up.erase(p.up.begin(), p.up.begin() + static_cast<std::ptrdiff_t>(p.sent));
            p.cleared -= p.sent;
            p.sent = 0;
        }
        if (p.down_sent == p.down.size()) {
            p.down.clear();
            p.down_sent = 0;
        } else if (p.down_sent > (std::size_t(64) << 10) && p.down_sent * 2 > p.down.size()) {
            p.down.erase(p.down.begin(), p.down.begin() + static_cast<std::ptrdiff_t>(p.down_sent));
            p.down_sent = 0;
        }
    }
    drop(p, "");
}

}  // namespace xymqtt::detail
