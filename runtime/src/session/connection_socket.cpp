#include "session/connection_socket.h"

#include "session/nagle_governor.h"

namespace xymqtt::detail {

connection_socket::connection_socket(const client_options& opts, std::function<void(log_level, const std::string&)> log)
    : opts_(opts), log_(std::move(log)) {
    if (opts_.tcp_nodelay && opts_.adaptive_nagle) nagle_ = std::make_unique<nagle_governor>(nagle_governor::settings{});
}

connection_socket::~connection_socket() = default;

void connection_socket::claim(const std::string& host, int port, bool adaptive_nagle) {
    peer_socket own;
    {
        std::lock_guard<std::mutex> lk(mu_);
        own = peer_socket::claim(host, port);
        own_ = own.share();
    }
    if (!opts_.tcp_nodelay) return;
    if (own) {
        if (nagle_ && adaptive_nagle) nagle_->attach(std::move(own));  // sets TCP_NODELAY
        else own.set_nodelay(true);
        return;
    }
    // This connection's socket cannot be told from another of this process to the same broker: TCP_NODELAY
    // on all of them (what they all want outside a stream) and no Nagle in streams.
    if (set_tcp_nodelay_to_peer(host, port) == 0)
        log_(log_level::warning, "could not set TCP_NODELAY on the broker connection");
    else if (nagle_)
        log_(log_level::debug, "adaptive Nagle off for this connection: its socket is not the only new one to the broker");
}

void connection_socket::release() {
    std::lock_guard<std::mutex> lk(mu_);
    own_ = peer_socket();
}

bool connection_socket::cut(const std::string& host, int port) {
    std::lock_guard<std::mutex> lk(mu_);
    return own_.shutdown() || shutdown_unclaimed_sockets_to_peer(host, port) > 0;
}

void connection_socket::detach_nagle() {
    if (nagle_) nagle_->detach();
}

void connection_socket::on_message() {
    if (nagle_) nagle_->on_message();
}

std::size_t connection_socket::nagle_streams() const { return nagle_ ? nagle_->streams() : 0; }

}  // namespace xymqtt::detail
