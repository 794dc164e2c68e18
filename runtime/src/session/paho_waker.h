// Wakes Paho's receive thread while a client of the process connects.
//
// Why: Paho C 1.3's one receive thread (for every client of the process) notices that a new connection's
// TCP handshake has completed only at the start of a cycle: it polls the sockets for writing with no
// timeout, then for reading for up to 1 s (Socket_getReadySocket). When the process has another client
// connected and quiet, that second poll runs its full second, so the CONNECT leaves up to 1 s late, and a
// refused connect is noticed up to 1 s late: failovers of 1.1 to 3.4 s where 50 ms would do
// (docs/cluster.md). Any packet arriving for any client ends the poll. So while a client connects, another
// connected client of the process sends an UNSUBSCRIBE of a filter nobody subscribes (the broker answers
// it with an UNSUBACK). An UNSUBSCRIBE is no flow Paho resends at a CONNACK (connect_gate.h): it is safe
// while the gate is closed.
//
// Guarantees: a client is asked to send only while it is registered, and deregistering waits for a wake
// under way; nothing is sent through a client that is not connected. Thread-safe.
#pragma once

#include <mutex>
#include <set>

namespace xymqtt::detail {

class paho_clients;

class paho_waker {
public:
    /// The filter the wake-up UNSUBSCRIBE names.
    static constexpr const char* filter = "$xymqtt/wake";

    /// @return the waker of this process.
    static paho_waker& process();

    void join(const paho_clients* c);
    /// Returns once no wake-up uses `c`.
    void leave(const paho_clients* c);
    /// Has one connected client other than `self` send the wake-up. @return whether one did.
    bool wake(const paho_clients* self);

private:
    std::mutex mu_;  // held while a client is asked to send: leave() waits for it
    std::set<const paho_clients*> clients_;
};

}  // namespace xymqtt::detail
