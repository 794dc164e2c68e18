// The loopback's broker and inbox in one data structure: what was published, the retained messages, and
// the lanes (one per subscribed filter, one per member of a shared subscription) with their deliveries.
// Not thread-safe: the loopback holds its lock around every call, and tells the time (its own clock).
//
//  - A publish is recorded and queued once on every matching lane; a shared filter's members take turns.
//  - A lane's deliveries run one at a time, in order; a retry goes back to the front of its lane.
//  - The last handler of a lane gone, its deliveries are parked until the filter is subscribed again.
//  - A delivery whose handler threw is retried up to the retry policy's attempts, then dead-lettered; a
//    parse_error dead-letters it at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "xymqtt/testing/loopback.h"

namespace xymqtt::detail {

class loopback_lanes {
public:
    using time_point = std::chrono::steady_clock::time_point;
    enum class handler_kind : std::uint8_t { user, internal };

    struct handler_entry {
        subscription_id id;
        handler_kind kind;
        std::shared_ptr<message_handler> fn;
    };
    struct delivery {
        message msg;
        std::uint64_t seq = 0;           // scheduling order: publish order, a retry goes to the back
        time_point due{};                // loopback clock; retries in threaded mode wait until then
        std::set<subscription_id> done;  // handlers that already succeeded for this message
    };
    struct lane {
        std::string filter;
        bool shared = false;
        std::vector<handler_entry> handlers;
        std::deque<delivery> queue;
        bool busy = false;
        bool removed = false;
    };
    /// A delivery taken from its lane to run (the lane is busy until release).
    struct job {
        std::shared_ptr<lane> l;
        delivery d;
        std::vector<handler_entry> handlers;
    };
    /// What became of a job's attempt.
    struct verdict {
        enum { handled, retry, dead } what = handled;
        std::chrono::milliseconds delay{0};  // retry: before the next attempt
        testing::dead_letter_record letter;  // dead: the record
    };

    // -- publishing and subscribing
    /// Records `pm` and queues it for every matching lane. @return whether a lane took it
    bool accept(const testing::published_message& pm, time_point now, std::int64_t wall_ms);
    subscription_id new_id() { return ++next_sub_id_; }
    /// Adds a handler to the lane of `filter` (a new lane per member of a shared filter). A new lane takes
    /// the deliveries parked for its filter, then (not shared) the retained messages that match.
    void add_handler(const std::string& filter, subscription_id id, handler_kind kind,
                     std::shared_ptr<message_handler> fn, time_point now, std::int64_t wall_ms);
    void remove_handler(subscription_id id);
    /// @return the user's handlers of exactly `filter`.
    std::set<subscription_id> user_handlers_of(const std::string& filter) const;
    std::optional<subscription_id> sole_handler(const std::string& filter) const;
    std::vector<std::pair<subscription_id, std::string>> handler_filters() const;

    // -- running
    /// @return the lane whose ready head was queued first (due by `now` unless `ignore_time`; of `filter`
    ///         if set), or nullptr.
    std::shared_ptr<lane> pick(time_point now, bool ignore_time, const std::string* filter) const;
    job claim(const std::shared_ptr<lane>& l);
    /// Settles a job's attempt: `failure` or `undecodable` (parse_error) if a handler threw.
    verdict conclude(const job& j, const std::optional<std::string>& failure,
                     const std::optional<std::string>& undecodable, const retry_policy& retry, time_point now);
    /// The job's lane may run its next delivery.
    void release(const job& j);
    bool idle() const;
    /// @return when the earliest delivery of a free lane is due, if any.
    std::optional<time_point> next_ready() const;

    // -- inspection
    std::vector<testing::published_message> published(const std::string* topic) const;
    void clear_published() { published_.clear(); }
    const std::vector<testing::dead_letter_record>& dead_letters() const { return dead_letters_; }
    bool replay_dead_letter(const std::string& id, time_point now);
    bool purge_dead_letter(const std::string& id);
    void clear_dead_letters() { dead_letters_.clear(); }
    std::vector<std::string> filters() const;
    testing::loopback_stats stats() const;
    void count_expired() { ++stats_.expired; }

private:
    void enqueue(lane& l, const testing::published_message& pm, time_point now, std::int64_t wall_ms);

    std::vector<std::shared_ptr<lane>> lanes_;
    std::map<subscription_id, std::vector<std::shared_ptr<lane>>> regs_;
    std::map<std::string, std::size_t> round_robin_;
    std::map<std::string, testing::published_message> retained_;
    std::map<std::string, std::deque<delivery>> parked_;  // deliveries of filters with no handler now
    subscription_id next_sub_id_ = 0;
    std::uint64_t next_seq_ = 0;
    std::uint64_t next_message_id_ = 0;
    std::size_t running_ = 0;

    std::vector<testing::published_message> published_;
    std::vector<testing::dead_letter_record> dead_letters_;
    testing::loopback_stats stats_;
};

}  // namespace xymqtt::detail
