// A resumed publish that the broker ends every connection at.
//
// Why: a broker that will not take a publish may have no way to say so but to drop the connection: under
// MQTT 3.1.1 one over its maximum packet size (which a 3.1.1 client is not told), or one a broker lowered
// its limit under after the client stored it. Paho re-sends the flows it resumes as soon as the CONNACK
// arrives, so such a flow ends every connection, and nothing behind it ever leaves: the client spins.
//
// Guarantees:
//  - A flow is named only when every connection for at least `patience` has reached its CONNACK with Paho
//    resuming that flow and ended within `within` of it, at least `strikes` such connections in a row, and
//    no publish of the client completed meanwhile. A completion, a connection resuming nothing or one that
//    lived longer starts the count again; so does naming a flow. Connects that fail before the CONNACK
//    neither count nor start it again (the packet was not sent).
//  - The flow named is the largest of those every counted connection resumed (a packet limit is the likely
//    cause, and the broker drops the connection at the first packet over it).
//  - Not thread-safe: the session calls it under its lock.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>

namespace xymqtt::detail {

class stuck_flows {
public:
    using clock = std::chrono::steady_clock;
    struct settings {
        unsigned strikes = 5;
        std::chrono::milliseconds within{2000};
        std::chrono::milliseconds patience{10000};
    };

    explicit stuck_flows(settings s) : settings_(s) {}

    /// A connection reached its CONNACK at `now`, Paho resuming `flows` (packet id -> size of its PUBLISH
    /// record); `completed`: the client's publishes completed so far.
    void connected(std::map<int, std::size_t> flows, std::uint64_t completed, clock::time_point now);
    /// That connection was lost at `now`.
    void lost(std::uint64_t completed, clock::time_point now);
    /// @return the packet id of the flow to give up on, once named (the count then starts again).
    std::optional<int> take();
    /// @return the connections counted so far (for the log).
    unsigned strikes() const { return strikes_; }

private:
    void restart();

    const settings settings_;
    bool up_ = false;                        // a connection is being watched
    clock::time_point connected_at_{};
    std::uint64_t completed_at_ = 0;
    std::map<int, std::size_t> flows_;       // what the watched connection resumed
    std::map<int, std::size_t> suspects_;    // resumed by every counted connection
    unsigned strikes_ = 0;
    clock::time_point first_strike_{}, last_strike_{};
};

}  // namespace xymqtt::detail
