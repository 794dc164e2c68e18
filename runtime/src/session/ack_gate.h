// The acknowledgement gate. With durability fsync over plain TCP, Paho's connection to the broker runs
// through this in-process relay, which holds the acknowledgement of each arriving message (PUBACK, PUBREC,
// PUBCOMP under its packet id) until the message is durable. Paho's receive callback can then return at
// once, the broker keeps several messages in flight, and the arrivals are committed in groups: one sync
// for all that arrived meanwhile, instead of one sync and a broker round trip per message.
//
// Guarantees:
//  - An acknowledgement held under a packet id leaves only after release() of that id for the same
//    connection, and nothing Paho wrote after it leaves before it: the stream keeps its order.
//  - cut(), a broker connection that ends and a Paho socket that closes each end the connection, and what
//    is held then never leaves.
//  - Only a socket of this process is joined to the broker: a connection to the gate's port from anywhere
//    else is closed at once.
//  - Bytes from the broker are passed on as they come.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "xymqtt/logging.h"

namespace xymqtt::detail {

class ack_gate {
public:
    /// Listens on 127.0.0.1 (a port of the system's choice) and starts the relay thread.
    /// @param log told of connections it ends or refuses
    /// @throw std::system_error when no socket can be made
    explicit ack_gate(std::function<void(log_level, const std::string&)> log);
    ~ack_gate();
    ack_gate(const ack_gate&) = delete;
    ack_gate& operator=(const ack_gate&) = delete;

    /// @return the URI Paho connects to ("tcp://127.0.0.1:<port>").
    const std::string& uri() const { return uri_; }
    /// @return the gate's port (the peer of Paho's socket).
    int port() const { return port_; }

    /// Ends the current connection and connects to the broker at `host`:`port`; the next connection Paho
    /// makes to uri() is joined to it. Acknowledgements held for earlier connections are forgotten.
    /// @throw std::runtime_error naming the reason (refused, unreachable, timed out, unknown host)
    void prepare(const std::string& host, int port, std::chrono::milliseconds timeout);
    /// Holds the acknowledgement of the flow `packet_id` (called before Paho can send it).
    /// @return the connection it belongs to, for release()
    std::uint64_t hold(int packet_id);
    /// Lets the acknowledgement of `packet_id` leave, if `connection` is still the current one.
    void release(std::uint64_t connection, int packet_id);
    /// Ends the current connection: nothing held leaves.
    void cut();
    /// @return the acknowledgements held now (for tests and statistics).
    std::size_t held() const;

private:
    struct pair;
    void run();
    void clear(pair& p);
    void drop(pair& p, const std::string& why);
    bool own_socket(int accepted) const;
    void wake();

    std::function<void(log_level, const std::string&)> log_;
    int listener_ = -1, wake_fd_ = -1;
    int port_ = 0;
    std::string uri_;

    mutable std::mutex mu_;
    std::unordered_set<int> held_;
    std::uint64_t connection_ = 0;
    int pending_ = -1;       // broker socket prepared, waiting for Paho's connection
    bool cut_ = false;       // end the current pair
    std::atomic<int> blocked_on_{-1};  // the packet id the relay waits for
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace xymqtt::detail
