#include "session/paho_clients.h"

#include <mqtt/async_client.h>

namespace xymqtt::detail {

std::shared_ptr<mqtt::async_client> paho_clients::current() const {
    std::lock_guard<std::mutex> lk(mu_);
    return cli_;
}

void paho_clients::retire() {
    std::lock_guard<std::mutex> lk(mu_);
    current_ = nullptr;
    if (cli_) retired_.push_back(std::move(cli_));
}

void paho_clients::install(std::shared_ptr<mqtt::async_client> cli) {
    std::lock_guard<std::mutex> lk(mu_);
    current_ = cli.get();
    cli_ = std::move(cli);
}

void paho_clients::taint(const void* via) {
    std::lock_guard<std::mutex> lk(taint_mu_);
    tainted_.insert(via);
}

void paho_clients::release() {
    std::lock_guard<std::mutex> lk(mu_);
    current_ = nullptr;
    keep_tainted();
    cli_.reset();  // Paho must stop calling the session before the members it uses go
    retired_.clear();
}

void paho_clients::keep_tainted() {
    // A Paho client holding a freed publish (session's listener::on_failure) is disconnected and inert, but
    // destroying it frees that topic and payload a second time: Paho's heap tracker lets the free through
    // when the address has been reused by another Paho allocation, which corrupts the heap of the whole
    // process (crashes in Paho's receive thread, in free(), in LMDB's malloc). So it is kept for the life
    // of the process, with callbacks that no longer reach the session.
    static std::mutex kept_mu;
    static auto* kept = new std::vector<std::shared_ptr<mqtt::async_client>>;  // never destroyed
    std::set<const void*> tainted;
    {
        // Not held across Paho calls: Paho's send thread takes taint_mu_ with Paho's own mutex held.
        std::lock_guard<std::mutex> t(taint_mu_);
        tainted.swap(tainted_);
    }
    auto keep = [&](std::shared_ptr<mqtt::async_client>& c) {
        if (!c || !tainted.count(c.get())) return;
        // The handlers are replaced before Paho is told (which it refuses while a connect is in progress).
        try { c->set_message_callback([](mqtt::const_message_ptr) {}); } catch (const mqtt::exception&) {}
        try { c->set_connection_lost_handler([](const std::string&) {}); } catch (const mqtt::exception&) {}
        try { c->set_disconnected_handler([](const mqtt::properties&, mqtt::ReasonCode) {}); } catch (const mqtt::exception&) {}
        std::lock_guard<std::mutex> k(kept_mu);
        kept->push_back(std::move(c));
    };
    keep(cli_);
    for (auto& c : retired_) keep(c);
    if (!tainted.empty() && log_) log_(tainted.size());
}

}  // namespace xymqtt::detail
