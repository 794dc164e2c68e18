/// @file connect_gate.h
/// One connect at a time with outbound flows to resume, while the process's other clients have none in
/// flight.
///
/// Why: when a Paho C 1.3 client gets its CONNACK with outbound QoS 1/2 flows of its own (restored from
/// its persistence), Paho re-sends the unacknowledged PUBLISH and PUBREL packets of every connected client
/// of the process (MQTTAsync_completeConnection calls MQTTProtocol_retry over all clients). On a live
/// connection such a resend is a protocol error: Mosquitto disconnects that client, whose own reconnect
/// sets off the others again, and Paho has been seen to crash in these storms (docs/reliability.md, F7).
/// So a client about to connect with flows to resume closes the gate: every other client stops handing
/// Paho publishes, and the connect waits until none of them has one in flight (or until a timeout, for a
/// client whose connection hangs). The gate opens once the connecting client's outbox counts the flows
/// Paho resumed for it (after the CONNACK): until then that client would pass for drained.
///
/// Guarantees: while a member holds the gate, closed_to() is true for every other member; members are
/// asked whether they are drained with the gate's mutex held (lock order: gate, then member).
/// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <set>

namespace xymqtt::detail {

class connect_gate {
public:
    /// A client of the process.
    class member {
    public:
        virtual ~member() = default;
        /// @return true if Paho holds no outbound flow of this client on a live connection.
        virtual bool drained() const = 0;
        /// The gate opened: hand Paho what waits.
        virtual void resume() = 0;
    };

    /// @return the gate of this process.
    static connect_gate& process();

    void join(member* m);
    void leave(member* m);

    /// Waits until no other member holds the gate, takes it, then waits until every other member is
    /// drained or `timeout` has passed. @return the number of members still not drained.
    std::size_t close(member* self, std::chrono::milliseconds timeout);
    /// Gives the gate back (no-op if `self` does not hold it) and resumes the other members.
    void open(member* self);
    /// @return true while another member holds the gate: `m` must not hand Paho publishes.
    bool closed_to(const member* m) const {
        const member* h = holder_.load();
        return h != nullptr && h != m;
    }
    /// A member's last flow completed: wakes a waiting close(). Call without the member's own locks.
    void notify();

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::set<member*> members_;
    std::atomic<member*> holder_{nullptr};
};

}  // namespace xymqtt::detail
