// Messages Paho receives, taken in before their acknowledgement leaves.
//
// Guarantees:
//  - A message is handed to the host (session_host::arrived) once per flow: the broker's resend of a QoS 2
//    message whose first copy an earlier connection stored is dropped here (paho_persistence::take_resend),
//    and Paho acknowledges it.
//  - When the host has not stored a message (or taking it in failed in any way), `refused` is told before
//    Paho's callback returns, so that the session can cut the connection before the acknowledgement
//    leaves; its QoS 2 record is left for the broker's resend (paho_persistence::refuse_inbound).
//  - With an acknowledgement gate (ack_gate.h), a QoS 1 or 2 message's acknowledgement is held there until
//    the host has stored it, and the host commits it later (session_host::arrived_later): Paho goes on
//    meanwhile, and the host may hand the message on before the commit is durable. A message the host
//    could not store is refused as above, and its acknowledgement never leaves the gate.
//  - A message held in the gate is decided (stored or refused) before the next connection starts
//    (wait_decided): its flow's record, which recognises the broker's resend, belongs to the connection
//    it came on.
//  - Nothing escapes into Paho, which does not catch.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "session/session_host.h"
#include "xymqtt/client_options.h"

namespace mqtt {
class message;
}  // namespace mqtt

namespace xymqtt::detail {

class ack_gate;
class paho_persistence;

class arrivals {
public:
    /// @param gate where acknowledgements wait for their message's commit (nullptr: the commit is made in
    ///        Paho's callback)
    /// @param stored told after each message the host has stored
    /// @param refused told why a message was not stored (its acknowledgement must not leave)
    arrivals(session_host& host, paho_persistence& persistence, ack_gate* gate, const client_options& opts,
             std::function<void()> stored, std::function<void(const std::string& why)> refused);

    /// Takes `msg` in: on Paho's receive thread, with Paho's process-wide lock held.
    void take(const mqtt::message& msg);
    /// @return the messages the host has stored so far.
    std::uint64_t delivered() const { return delivered_; }
    /// Waits until every message whose acknowledgement waits in the gate is stored or refused.
    /// @return false if some were still undecided after `timeout`.
    bool wait_decided(std::chrono::milliseconds timeout);

private:
    void stored(int packet_id, int qos);
    void refuse(int packet_id, int qos, const std::string& why);

    session_host& host_;
    paho_persistence& persistence_;
    ack_gate* gate_;
    const client_options& opts_;
    std::function<void()> stored_;
    std::function<void(const std::string&)> refused_;
    std::atomic<std::uint64_t> delivered_{0};
    std::mutex undecided_mu_;
    std::condition_variable decided_;
    std::size_t undecided_ = 0;  // held in the gate, their commit not yet done
};

}  // namespace xymqtt::detail
