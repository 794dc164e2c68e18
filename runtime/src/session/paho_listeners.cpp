#include "session/paho_listeners.h"

#include <MQTTAsync.h>
#include <mqtt/token.h>

#include "base/hook_calls.h"
#include "session/paho_clients.h"

namespace xymqtt::detail {

namespace {

std::uint64_t seq_of(const mqtt::token& tok) { return reinterpret_cast<std::uintptr_t>(tok.get_user_context()); }

}  // namespace

void publish_listener::on_success(const mqtt::token& tok) {
    // Reason codes are MQTT 5's; under 3.1.1 Paho leaves the field with no meaning (seen as 255).
    delivered_(seq_of(tok), v5_ ? tok.get_reason_code() : 0, tok.get_client());
}

void publish_listener::on_failure(const mqtt::token& tok) {
    const int rc = tok.get_return_code();
    // Paho C 1.3 (MQTTAsync_processCommand): when a QoS 1/2 PUBLISH fails on a socket error (-1) or on
    // persistence (-2), the command's topic and payload are freed although the outbound record it just
    // stored shares them. That Paho client must never be destroyed: MQTTAsync_destroy frees them again.
    if (rc == MQTTASYNC_FAILURE || rc == MQTTASYNC_PERSISTENCE_ERROR) clients_.taint(tok.get_client());
    failed_(seq_of(tok), rc, v5_ ? tok.get_reason_code() : 0, tok.get_client());
}

void sub_listener::on_success(const mqtt::token& tok) {
    if (tok.get_reason_code() >= 0x80)
        log_to(hooks_, log_level::error, what_ + " refused by the broker, reason code " + std::to_string(tok.get_reason_code()));
    if (answered_) answered_(tok.get_reason_code());
    delete this;
}

void sub_listener::on_failure(const mqtt::token& tok) {
    // Paho C++ reports an MQTT 5 SUBACK that refuses (reason code from 0x80) as a failure.
    const int reason = tok.get_reason_code();
    if (reason >= 0x80)
        log_to(hooks_, log_level::error,
               what_ + " refused by the broker, reason code " + std::to_string(reason) + (failed_ ? " (retrying)" : ""));
    else
        log_to(hooks_, log_level::warning,
               what_ + " failed: return code " + std::to_string(tok.get_return_code()) + ", reason code " +
                   std::to_string(reason) + (failed_ ? " (retrying)" : ""));
    if (answered_ && reason >= 0x80) answered_(reason);
    if (failed_) failed_(tok.get_client());
    delete this;
}

}  // namespace xymqtt::detail
