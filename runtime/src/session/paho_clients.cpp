#include "session/paho_clients.h"

#include <mqtt/async_client.h>

#include <algorithm>
#include <thread>

namespace xymqtt::detail {

tainted_clients& tainted_clients::process() {
    static auto* registry = new tainted_clients;  // never destroyed: kept clients outlive static destruction
    return *registry;
}

void tainted_clients::add(mqtt::iasync_client* c) {
    std::lock_guard<std::mutex> lk(mu_);
    live_.push_back(c);
}

void tainted_clients::forget(const void* c) {
    std::lock_guard<std::mutex> lk(mu_);
    live_.erase(std::remove(live_.begin(), live_.end(), c), live_.end());
}

std::size_t tainted_clients::await_disconnected(std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        std::vector<mqtt::iasync_client*> check;
        {
            std::lock_guard<std::mutex> lk(mu_);
            check = live_;
        }
        std::vector<const void*> gone;
        std::size_t connected = 0;
        for (auto* c : check) {
            // Paho's own mutex is taken here, so no lock of ours is held.
            if (c->is_connected()) ++connected;
            else gone.push_back(c);
        }
        for (auto* c : gone) forget(c);
        if (connected == 0 || std::chrono::steady_clock::now() >= deadline) return connected;
        // Paho processes the queued disconnect on its next command cycle and reports it nowhere the
        // session hears of (the client's callbacks are a retired connection's): look again shortly.
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

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

void paho_clients::taint(mqtt::iasync_client* via) {
    {
        std::lock_guard<std::mutex> lk(taint_mu_);
        tainted_.insert(via);
    }
    tainted_clients::process().add(via);
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
    // What is destroyed now must not be asked later, should a late taint have listed it.
    if (cli_) tainted_clients::process().forget(cli_.get());
    for (auto& c : retired_)
        if (c) tainted_clients::process().forget(c.get());
    if (!tainted.empty() && log_) log_(tainted.size());
}

}  // namespace xymqtt::detail
