#include "session/tcp_nodelay.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uriparser/Uri.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace xymqtt::detail {

namespace {

bool same_address(const sockaddr_storage& a, const sockaddr* b) {
    if (a.ss_family != b->sa_family) return false;
    if (a.ss_family == AF_INET)
        return reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr ==
               reinterpret_cast<const sockaddr_in*>(b)->sin_addr.s_addr;
    if (a.ss_family == AF_INET6)
        return std::memcmp(&reinterpret_cast<const sockaddr_in6&>(a).sin6_addr,
                           &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr, sizeof(in6_addr)) == 0;
    return false;
}

int port_of(const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return -1;
}

}  // namespace

bool parse_server_uri(const std::string& uri, std::string& scheme, std::string& host, int& port) {
    // An IPv6 zone ("[fe80::1%eth0]", link-local brokers) is no part of RFC 3986 and uriparser refuses
    // it, while getaddrinfo and Paho take it: it is cut out for parsing and put back on the host.
    std::string text = uri;
    std::string zone;
    if (const auto open = text.find('['); open != std::string::npos) {
        const auto close = text.find(']', open);
        const auto percent = text.find('%', open);
        if (close != std::string::npos && percent < close) {
            zone = text.substr(percent, close - percent);
            text.erase(percent, close - percent);
        }
    }
    UriUriA parsed;
    if (uriParseSingleUriExA(&parsed, text.data(), text.data() + text.size(), nullptr) != URI_SUCCESS) return false;
    const std::unique_ptr<UriUriA, void (*)(UriUriA*)> owned(&parsed, uriFreeUriMembersA);
    const auto str = [](const UriTextRangeA& r) { return r.first ? std::string(r.first, r.afterLast) : std::string(); };
    if (!parsed.scheme.first || !parsed.hostText.first) return false;  // "scheme://host..." only
    scheme = str(parsed.scheme);
    host = str(parsed.hostText);  // without the brackets of an IP literal, and without userinfo
    if (!zone.empty()) {
        // RFC 6874's zone: unreserved characters, or percent-encoded ones.
        static const char zone_chars[] = "%-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        if (zone.size() < 2 || !parsed.hostData.ip6 || zone.find_first_not_of(zone_chars) != std::string::npos)
            return false;
        host += zone;
    }
    const bool tls = scheme == "ssl" || scheme == "mqtts" || scheme == "wss";
    port = tls ? 8883 : 1883;
    if (parsed.portText.first) {
        if (parsed.portText.first == parsed.portText.afterLast) return false;  // "host:" names no port
        port = 0;
        for (const char* p = parsed.portText.first; p != parsed.portText.afterLast; ++p) {  // digits only
            port = port * 10 + (*p - '0');
            if (port > 65535) return false;
        }
    }
    return !host.empty() && port > 0;
}

namespace {

// Calls fn(fd, st) for each TCP socket of this process connected to host:port; @return how often fn was true.
template <class F>
int for_each_socket_to_peer(const std::string& host, int port, F fn) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return 0;
    std::vector<sockaddr_storage> addrs;
    for (auto* p = res; p; p = p->ai_next) {
        sockaddr_storage s{};
        std::memcpy(&s, p->ai_addr, p->ai_addrlen);
        addrs.push_back(s);
    }
    freeaddrinfo(res);

    int count = 0;
    DIR* dir = opendir("/proc/self/fd");
    if (!dir) return 0;
    const int own = dirfd(dir);
    while (dirent* e = readdir(dir)) {
        char* end = nullptr;
        const long fd = std::strtol(e->d_name, &end, 10);
        if (*end != '\0' || fd == own) continue;
        struct stat st{};
        if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        int type = 0;
        socklen_t len = sizeof(type);
        if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
        sockaddr_storage peer{};
        len = sizeof(peer);
        if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
        if (port_of(peer) != port) continue;
        bool match = false;
        for (const auto& a : addrs) match = match || same_address(peer, reinterpret_cast<const sockaddr*>(&a));
        if (!match) continue;
        if (fn(static_cast<int>(fd), st)) ++count;
    }
    closedir(dir);
    return count;
}

}  // namespace

namespace {

bool set_nodelay(int fd, bool on) {
    const int v = on ? 1 : 0;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) == 0;
}

}  // namespace

bool has_socket_to_peer_from(const std::string& host, int port, int local_port) {
    return for_each_socket_to_peer(host, port, [local_port](int fd, const struct stat&) {
               sockaddr_storage local{};
               socklen_t len = sizeof(local);
               return getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 && port_of(local) == local_port;
           }) > 0;
}

int set_tcp_nodelay_to_peer(const std::string& host, int port) {
    return for_each_socket_to_peer(host, port, [](int fd, const struct stat&) { return set_nodelay(fd, true); });
}

namespace {

// Inodes of the sockets claimed by live peer_sockets of this process (one entry per handle).
std::mutex claims_mu;
std::multiset<ino_t> claims;

}  // namespace

int shutdown_unclaimed_sockets_to_peer(const std::string& host, int port) {
    std::lock_guard<std::mutex> g(claims_mu);
    return for_each_socket_to_peer(host, port, [](int fd, const struct stat& st) {
        return !claims.count(st.st_ino) && shutdown(fd, SHUT_RDWR) == 0;
    });
}

peer_socket peer_socket::claim(const std::string& host, int port) {
    std::lock_guard<std::mutex> g(claims_mu);
    int found = -1;
    ino_t inode = 0;
    const int n = for_each_socket_to_peer(host, port, [&](int fd, const struct stat& st) {
        if (claims.count(st.st_ino)) return false;
        found = fd;
        inode = st.st_ino;
        return true;
    });
    peer_socket s;
    if (n != 1) return s;
    s.fd_ = fcntl(found, F_DUPFD_CLOEXEC, 0);
    if (s.fd_ < 0) return s;
    struct stat st{};
    if (fstat(s.fd_, &st) != 0 || st.st_ino != inode) {  // closed and reused in between
        close(s.fd_);
        s.fd_ = -1;
        return s;
    }
    s.inode_ = inode;
    claims.insert(inode);
    return s;
}

peer_socket::peer_socket(peer_socket&& o) noexcept : fd_(o.fd_), inode_(o.inode_) { o.fd_ = -1; }

peer_socket& peer_socket::operator=(peer_socket&& o) noexcept {
    if (this != &o) {
        release();
        fd_ = o.fd_;
        inode_ = o.inode_;
        o.fd_ = -1;
    }
    return *this;
}

peer_socket::~peer_socket() { release(); }

void peer_socket::release() noexcept {
    if (fd_ < 0) return;
    close(fd_);
    fd_ = -1;
    std::lock_guard<std::mutex> g(claims_mu);
    if (auto it = claims.find(inode_); it != claims.end()) claims.erase(it);
}

peer_socket peer_socket::share() const {
    peer_socket s;
    if (fd_ < 0) return s;
    s.fd_ = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (s.fd_ < 0) return s;
    s.inode_ = inode_;
    std::lock_guard<std::mutex> g(claims_mu);
    claims.insert(inode_);
    return s;
}

bool peer_socket::set_nodelay(bool on) const { return fd_ >= 0 && detail::set_nodelay(fd_, on); }

bool peer_socket::shutdown() const { return fd_ >= 0 && ::shutdown(fd_, SHUT_RDWR) == 0; }

}  // namespace xymqtt::detail
