// Paho C++ exposes a received message's packet id (needed to recognise QoS 2 redeliveries exactly) only
// through c_struct(), which it compiles in for its unit tests. The accessor is inline and changes nothing
// in the class, so enabling it here is safe.
#define UNIT_TESTS 1
#include <mqtt/message.h>
#undef UNIT_TESTS

#include "session/arrivals.h"

#include <memory>

#include "base/clock.h"
#include "base/hook_calls.h"
#include "session/ack_gate.h"
#include "session/paho_message.h"
#include "session/paho_persistence.h"

namespace xymqtt::detail {

arrivals::arrivals(session_host& host, paho_persistence& persistence, ack_gate* gate, const client_options& opts,
                   std::function<void()> stored, std::function<void(const std::string&)> refused)
    : host_(host),
      persistence_(persistence),
      gate_(gate),
      opts_(opts),
      stored_(std::move(stored)),
      refused_(std::move(refused)) {}

void arrivals::take(const mqtt::message& msg) {
    // Before the acknowledgement leaves (MQTT 5: PUBREC, at PUBLISH; 3.1.1: PUBCOMP, at PUBREL): the
    // host's commit is what makes the acknowledgement safe. Paho sends it whatever happens here, so a
    // message that is not stored has its connection cut instead, and the broker sends it again on the
    // next one.
    int packet_id = 0, qos = 0;
    std::optional<std::string> refused;
    try {
        packet_id = msg.c_struct().msgid;
        qos = msg.get_qos();
        const std::string& topic = msg.get_topic();
        const std::string& payload = msg.get_payload_str();
        std::vector<std::uint32_t> sub_ids;
        const auto& props = msg.get_properties();
        for (std::size_t i = 0, n = props.count(mqtt::property::SUBSCRIPTION_IDENTIFIER); i < n; ++i)
            sub_ids.push_back(mqtt::get<uint32_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIER, i));
        // The broker's resend of a message committed in an earlier connection (paho_persistence.h): Paho
        // acknowledges it when this returns.
        if (qos == 2 && opts_.mqtt_version == 5 && persistence_.take_resend(packet_id, topic, payload, sub_ids))
            return;
        fire_hook(opts_.hooks, opts_.hooks.on_packet_receive, topic, payload);
        stored_message rec;
        rec.topic = topic;
        rec.payload = payload;
        rec.props = from_paho(props);
        rec.retain = msg.is_retained();
        rec.created_ms = wall_ms();
        if (gate_ && qos > 0) {
            // The acknowledgement waits in the gate, so the commit can join others: Paho goes on meanwhile.
            const auto connection = gate_->hold(packet_id);
            {
                std::lock_guard<std::mutex> lk(undecided_mu_);
                ++undecided_;
            }
            auto once = std::make_shared<std::atomic<bool>>(false);
            auto done = [this, packet_id, qos, connection, once](const std::optional<std::string>& why) {
                if (once->exchange(true)) return;
                if (why) {
                    refuse(packet_id, qos, *why);  // the acknowledgement stays in the gate
                } else {
                    stored(packet_id, qos);
                    gate_->release(connection, packet_id);
                }
                std::lock_guard<std::mutex> lk(undecided_mu_);
                if (--undecided_ == 0) decided_.notify_all();
            };
            try {
                host_.arrived_later(std::move(rec), sub_ids, done);
            } catch (const std::exception& e) {
                done(std::string("the message could not be taken in: ") + e.what());
            } catch (...) {
                done(std::string("the message could not be taken in"));
            }
            return;
        }
        refused = host_.arrived(std::move(rec), sub_ids, [this, packet_id, qos] { stored(packet_id, qos); });
    } catch (const std::exception& e) {
        refused = std::string("the message could not be taken in: ") + e.what();
    } catch (...) {
        refused = "the message could not be taken in";
    }
    if (refused) refuse(packet_id, qos, *refused);
}

bool arrivals::wait_decided(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(undecided_mu_);
    return decided_.wait_for(lk, timeout, [&] { return undecided_ == 0; });
}

void arrivals::stored(int packet_id, int qos) {
    // Stored: from here on a failure costs at most a delay, never the message.
    ++delivered_;
    try {
        if (qos == 2) persistence_.release_inbound(packet_id);
    } catch (const std::exception&) {
        // Reported by the persistence; without the record a crash only costs a redelivery.
    }
    stored_();
}

void arrivals::refuse(int packet_id, int qos, const std::string& why) {
    try {
        if (qos == 2) persistence_.refuse_inbound(packet_id);
    } catch (const std::exception&) {
        // Reported by the persistence. The cut that follows still keeps the acknowledgement from leaving.
    }
    try {
        refused_(why);
    } catch (...) {
        // Nothing may escape into Paho.
    }
}

}  // namespace xymqtt::detail
