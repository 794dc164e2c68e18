// Paho's completion callbacks: of publishes, and of SUBSCRIBE / UNSUBSCRIBE. They run on Paho's threads.
#pragma once

#include <mqtt/iaction_listener.h>

#include <cstdint>
#include <functional>
#include <string>

#include "xymqtt/hooks.h"

namespace xymqtt::detail {

class paho_clients;

/// Reports each publish's completion or failure, by its sequence number (the token's user context), with
/// its MQTT 5 reason code (0 under 3.1.1) and its Paho client (`via`). A publish that failed in a way that
/// leaves its Paho client with freed memory taints that client (paho_clients.h).
class publish_listener : public mqtt::iaction_listener {
public:
    using delivered_fn = std::function<void(std::uint64_t seq, int reason_code, const void* via)>;
    using failed_fn = std::function<void(std::uint64_t seq, int rc, int reason_code, const void* via)>;
    publish_listener(bool v5, paho_clients& clients, delivered_fn delivered, failed_fn failed)
        : v5_(v5), clients_(clients), delivered_(std::move(delivered)), failed_(std::move(failed)) {}
    void on_success(const mqtt::token& tok) override;
    void on_failure(const mqtt::token& tok) override;

private:
    bool v5_;
    paho_clients& clients_;
    delivered_fn delivered_;
    failed_fn failed_;
};

/// Logs the broker's answer to one SUBSCRIBE or UNSUBSCRIBE (`what`), hands a failure (not a refusal) to
/// `failed` and the broker's answer (its reason code: granted below 0x80, refused from 0x80) to `answered`.
/// Made with new for one request; deletes itself when Paho reports.
class sub_listener : public mqtt::iaction_listener {
public:
    sub_listener(const hooks& h, std::string what, std::function<void(const void* via)> failed = nullptr,
                 std::function<void(int reason_code)> answered = nullptr)
        : hooks_(h), what_(std::move(what)), failed_(std::move(failed)), answered_(std::move(answered)) {}
    void on_success(const mqtt::token& tok) override;
    void on_failure(const mqtt::token& tok) override;

private:
    const hooks& hooks_;
    std::string what_;
    std::function<void(const void*)> failed_;
    std::function<void(int)> answered_;
};

}  // namespace xymqtt::detail
