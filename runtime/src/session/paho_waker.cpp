#include "session/paho_waker.h"

#include <mqtt/async_client.h>

#include "session/paho_clients.h"

namespace xymqtt::detail {

namespace {

// The wake-up's answer matters to nobody: a listener with no state, for the life of the process.
class ignore_answer : public mqtt::iaction_listener {
public:
    void on_success(const mqtt::token&) override {}
    void on_failure(const mqtt::token&) override {}
};

}  // namespace

paho_waker& paho_waker::process() {
    static auto* waker = new paho_waker;  // never destroyed: clients may outlive static destruction
    return *waker;
}

void paho_waker::join(const paho_clients* c) {
    std::lock_guard<std::mutex> lk(mu_);
    clients_.insert(c);
}

void paho_waker::leave(const paho_clients* c) {
    std::lock_guard<std::mutex> lk(mu_);
    clients_.erase(c);
}

bool paho_waker::wake(const paho_clients* self) {
    static auto* listener = new ignore_answer;  // never destroyed: Paho may report after exit began
    // Paho is called with mu_ held: no callback of Paho's takes mu_, and a client cannot leave (and let go
    // of its Paho clients) meanwhile, so this copy is never the last reference to one.
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto* c : clients_) {
        if (c == self) continue;
        const auto cli = c->current();
        if (!cli || !cli->is_connected()) continue;
        try {
            cli->unsubscribe(filter, nullptr, *listener);
            return true;
        } catch (const mqtt::exception&) {
            // Lost meanwhile: the next one.
        }
    }
    return false;
}

}  // namespace xymqtt::detail
