/// @file stats.h
/// A client's counters and gauges: client::stats() for programs and tests, client::metrics() for
/// monitoring systems.
///
/// Counters count from the client's construction; gauges (outbox, inbox, dead letters, connected) say
/// how things stand when they are read. Each call returns a fresh snapshot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace xymqtt {

/// Counters, for tests, tools and monitoring.
struct client_stats {
    std::size_t outbox = 0;        ///< Publishes stored and not yet completed.
    std::size_t inbox = 0;         ///< Deliveries stored and not yet handled.
    std::size_t dead_letters = 0;  ///< Records in the dead-letter table.
    std::uint64_t published = 0;   ///< Publishes completed since start.
    std::uint64_t delivered = 0;   ///< Deliveries committed since start.
    std::uint64_t handled = 0;     ///< Deliveries handled since start.
    std::uint64_t retries = 0;     ///< Handler runs that threw (other than parse_error) since start.
    std::uint64_t nagle_streams = 0;  ///< Streams of arrivals that Nagle's algorithm was on for (adaptive_nagle).
    bool connected = false;        ///< true while connected to the broker.
    /// The server URI of the current connection, or of the last one tried while disconnected.
    std::string server_uri;
    /// Why the last connection attempt failed or the connection was lost ("" while connected):
    /// e.g. "connect to tcp://... failed: not authorized: bad user name or password".
    std::string last_error;
};

/// One figure of client::metrics(), in the form Prometheus and OpenTelemetry take.
struct metric {
    /// How a figure behaves over time.
    enum class kind {
        counter,  ///< Only grows, from 0 at the client's construction.
        gauge,    ///< The value now; goes up and down.
    };
    std::string name;  ///< e.g. `xymqtt_published_total`; counters end in `_total`
    kind type;         ///< Counter or gauge.
    double value;      ///< The figure when metrics() was called.
    std::string help;  ///< one line: what it counts
};

}  // namespace xymqtt
