// The outbox's publishes on their way to the broker: what waits to be sent, in which order, and the window
// of those in flight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "outbox/seq_runs.h"
#include "xymqtt/store.h"

namespace xymqtt::detail {

/// Where each stored, uncompleted publish of a client stands between the store and Paho. A publish is in
/// exactly one place:
///  - waiting: to be sent again (it failed in flight, or a dead letter was replayed), in memory (new), or
///    on disk only (stored while offline or far behind, or left by an earlier run);
///  - in flight: handed to Paho, whose completion or failure is awaited;
///  - resumed: a flow a new Paho client restored and finishes under its own packet id.
///
/// Guarantees:
///  - Order: take() hands out what is to be sent again first, then the rest by sequence number (the
///    outbox's order), whether it waits in memory or on disk.
///  - Window: take() never brings in_flight() (in flight plus resumed) above window(). Resumed flows count,
///    so that they and new publishes together stay within what the broker takes (half its receive maximum:
///    a broker given more queues the rest, and Mosquitto 2.0 then acknowledges a resend of a queued one
///    without delivering it).
///  - No publish is handed out while Paho resumes it.
///
/// Not thread-safe: its owner (the client) guards it with its lock.
class send_queue {
public:
    /// A publish's message; nullptr when only the store has it (read before sending).
    using record = std::shared_ptr<stored_message>;
    struct item {
        std::uint64_t seq = 0;
        record msg;
    };

    // -- waiting

    /// A newly stored publish, kept in memory if `msg` is set, else on disk only.
    void add(std::uint64_t seq, record msg);
    /// A publish to send before anything newer: one that failed in flight, or a replayed dead letter.
    void again(std::uint64_t seq, record msg);
    /// @return publishes waiting to be sent, and how many of them are new ones kept in memory.
    std::size_t waiting() const { return again_.size() + on_disk_.size() + in_memory_.size(); }
    std::size_t in_memory() const { return in_memory_.size(); }
    /// @return publishes to be sent again (a reconnect's count, for the log).
    std::size_t to_send_again() const { return again_.size(); }

    // -- the window

    void set_window(std::size_t w) { window_ = w; }
    std::size_t window() const { return window_; }
    std::size_t in_flight() const { return in_flight_.size() + resumed_.size(); }
    /// @return true if something waits and the window has room for a burst: half the window, or all that
    /// waits if less. Paho then gets a burst instead of one publish (and one wake-up of its send thread)
    /// per completion, and the other half keeps the pipeline full meanwhile.
    bool burst_ready() const;
    /// Moves up to `max` waiting publishes in flight, as far as the window allows, in order.
    std::vector<item> take(std::size_t max);
    /// Paho took `seq`: its message is kept for a resend (if it is still in flight).
    void keep(std::uint64_t seq, record msg);
    /// Paho did not take `seq`: it waits to be sent again (if it is still in flight).
    void not_taken(std::uint64_t seq, record msg);
    /// `seq` is gone from the store: nothing to send (if it is still in flight).
    void drop(std::uint64_t seq) { in_flight_.erase(seq); }

    // -- outcomes

    /// `seq` completed (delivered, or refused for good). @return false if it was neither in flight nor
    /// waiting to be sent again: completed already.
    bool finish(std::uint64_t seq);
    /// Takes `seq` out of flight (a failure, a refusal). @return its message (nullptr if only the store has
    /// it), or nothing if it was not in flight.
    std::optional<record> take_back(std::uint64_t seq);
    /// @return how many times `seq` was refused for now before this refusal (for its backoff).
    std::uint32_t count_refusal(std::uint64_t seq) { return refusals_[seq]++; }
    void forget_refusals(std::uint64_t seq) { refusals_.erase(seq); }

    // -- connections

    /// A new Paho client replaces the last: what was in flight, and the flows the last client resumed and
    /// did not finish, are sent again, except those the new client resumes: `resumable` (packet id ->
    /// publish), as far as `resumes(packet id, publish, message)` confirms the flow is that publish.
    void new_client(const std::map<int, std::uint64_t>& resumable,
                    const std::function<bool(int, std::uint64_t, record)>& resumes);
    /// The broker had no session, and Paho dropped the flows it was resuming: they are sent again.
    void session_lost();
    /// @return true if Paho resumes a flow under `packet_id`.
    bool resumes(int packet_id) const { return resumed_.count(packet_id) > 0; }
    /// The flow Paho resumed under `packet_id` has ended. @return its publish, now in flight until it is
    /// finished or taken back, or nothing if no resumed flow has that packet id.
    std::optional<std::uint64_t> end_resumed(int packet_id);
    std::size_t resumed() const { return resumed_.size(); }
    /// @return true if nothing is in flight, resumed flows included.
    bool drained() const { return in_flight_.empty() && resumed_.empty(); }

private:
    std::map<std::uint64_t, record> again_;      // sent, failed (or replayed): to send again first
    seq_runs on_disk_;                           // stored, only on disk
    std::map<std::uint64_t, record> in_memory_;  // stored, in memory, not yet sent
    std::map<std::uint64_t, record> in_flight_;  // handed to Paho
    std::map<int, std::uint64_t> resumed_;       // packet id -> publish: flows Paho resumed itself
    std::set<std::uint64_t> resumed_seqs_;
    std::map<std::uint64_t, std::uint32_t> refusals_;  // refusals for now, per publish (backoff)
    std::size_t window_ = 1;
};

}  // namespace xymqtt::detail
