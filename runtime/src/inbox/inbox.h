// The inbox: stored deliveries, the lanes whose threads run their handlers, retries and dead letters.
//
// Guarantees:
//  - A delivery taken in (`take`) stays in the store's incoming table until its handlers have all returned
//    and its removal is committed, together with the effects they asked for (effects): a crash at any point
//    hands it to the handlers again, never loses it. A crash hands again at most the deliveries at work and
//    inbox_host::max_unsynced_removals handled ones whose removal was not yet durable.
//  - A lane runs its deliveries in arrival order, one at a time (or up to its concurrency with
//    effects::later). A handler that throws is retried after the retry policy's delay, with the attempt
//    count stored, so that the backoff and `max_attempts` hold across restarts; a delivery that cannot be
//    decoded (parse_error), or that has used up its attempts, becomes a dead letter, with the reason.
//  - A failed commit never loses or skips a delivery: the inbox commits again until the store takes it
//    (storage back-off) or the client closes; the delivery then waits in the store for the next run.
//  - The inbox's lock is never held while a handler, a hook or the host runs.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "inbox/routes.h"
#include "xymqtt/client_options.h"
#include "xymqtt/dead_letter.h"
#include "xymqtt/store.h"

namespace xymqtt::detail {

/// What the inbox needs from the client that owns it.
class inbox_host {
public:
    virtual ~inbox_host() = default;
    /// Most plain removals a host may have returned from `commit` before they are durable.
    static constexpr std::size_t max_unsynced_removals = 64;
    /// Commits `ops` atomically. `soon`: a plain removal (a handled delivery without effects), which the
    /// host may join to a later commit and return before it is durable, at most max_unsynced_removals at a
    /// time: one that is never stored costs a redelivery after a restart, never the message.
    /// @throw client_closed once the client closes; storage_error (and the like) if the store refuses it.
    virtual void commit(const std::vector<write_op>& ops, bool soon) = 0;
    /// Queues a bookkeeping commit that nobody awaits (a lost one is redone at the next start), ahead of
    /// every commit asked for after it. Called with the inbox's lock held: must not wait for anything that
    /// takes it.
    virtual void record(std::vector<write_op> ops) = 0;
    /// Publishes committed with a handled delivery (effects::publishes): the outbox sends them.
    virtual void publishes_stored(std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs) = 0;
    /// The store refused a commit: reported to the application (it is retried).
    virtual void storage_failed(const std::string& what) = 0;
};

/// @return delivery `id` (inbox record `rec`) as the handlers see it on attempt `attempt`.
message message_of(const std::string& id, const stored_message& rec, std::uint32_t attempt);

class inbox {
public:
    /// @param opts the client's options: its retry policy and hooks (read only, outliving the inbox)
    inbox(inbox_host& host, const client_options& opts);
    inbox(const inbox&) = delete;
    inbox& operator=(const inbox&) = delete;
    /// Waits for lanes that `join` left to end (close() from a handler). Call `halt` and `join` before.
    ~inbox();

    /// Reads the deliveries a previous run left in `s`: they wait (parked) for the lane of their filter. An
    /// unreadable record becomes a dead letter. @return how many wait.
    std::size_t recover(store& s);

    // -- arrivals
    /// @return the filters of the lanes a message on `topic` carrying `sub_ids` goes to, or {""} (parked).
    std::vector<std::string> lanes_for(const std::string& topic, const std::vector<std::uint32_t>& sub_ids) const;
    /// Deliveries committed to the incoming table: queued to their lanes (or parked), whose threads are woken.
    void take(std::vector<std::pair<std::string, stored_message>> recs);
    /// A delivery handled outside the lanes (an awaited result answered at arrival): counted as handled.
    void handled_elsewhere() { ++handled_; }

    // -- subscriptions
    /// Adds handler `id` on the lane of `filter`, opening the lane (and starting its thread) if it has none.
    /// @param batch a lane opened here runs as SCHED_BATCH if client_options::batch_lanes: for event
    ///        streams, not for lanes a call waits on (a batch lane may start a little later)
    /// @return whether a lane was opened (the filter needs a SUBSCRIBE).
    bool add_handler(subscription_id id, const std::string& filter, lane_handler handler, unsigned concurrency,
                     bool batch = false);
    /// Removes handler `id`. @return its filter if that was its lane's last handler (the lane stops, its
    /// deliveries wait parked), else nothing.
    std::optional<std::string> remove_handler(subscription_id id);
    /// @return the handlers subscribed with `filter`.
    std::vector<subscription_id> handlers_of(const std::string& filter) const;
    /// @return every handler with its filter.
    std::vector<std::pair<subscription_id, std::string>> handler_filters() const;
    /// @return the filters of the live lanes.
    std::vector<std::string> live_filters() const;
    /// @return whether `filter` has a live lane.
    bool has_lane(const std::string& filter) const;
    /// @return the one handler of the live lane `filter`, if it has exactly one.
    std::optional<subscription_id> sole_handler(const std::string& filter) const;

    // -- dead letters
    /// @return the dead letters in `s`, unreadable ones with the reason in `record.error`.
    static std::vector<dead_letter> dead_letters(const store& s);
    /// Dead letter `id` (`rec`, cleared of its error and attempts) goes back into the inbox. @throw what the
    /// commit throws.
    void replay(const std::string& id, stored_message rec);
    /// Counts dead letters made or removed elsewhere (refused publishes, replays to the outbox, purges).
    void count_dead(long delta);

    // -- state
    std::size_t size() const;
    std::size_t dead() const;
    std::uint64_t handled() const { return handled_; }
    std::uint64_t retries() const { return retries_; }
    /// @return whether the inbox emptied within `timeout`.
    bool wait_empty(std::chrono::milliseconds timeout);

    // -- threads
    /// Marks the calling thread as one that runs this inbox's handlers (the lanes' and a command's own).
    void mark_handler_thread() const;
    /// @return whether the calling thread runs this inbox's handlers.
    bool on_handler_thread() const;
    /// Lanes take no new delivery; the ones at work finish theirs.
    void halt();
    /// Joins the lanes' threads; the calling thread's own lane (close() from a handler) is left to end.
    void join();

private:
    void lane_loop(lane* l);
    void process(lane* l, const std::string& id, stored_message rec,
                 std::vector<std::pair<subscription_id, lane_handler>> handlers);
    /// A delivery handled: commits its effects with its removal from the inbox.
    void complete(lane* l, const std::string& id, effects fx);
    void dead_letter_record(const std::string& id, stored_message rec, const std::string& reason, bool parse);
    /// Commits until the store takes it. @throw client_closed once closing.
    void commit_until_stored(const std::vector<write_op>& ops, bool soon = false);
    void log(log_level level, const std::string& text) const;
    template <class F, class... A>
    void fire(const F& hook, A&&... args) const;

    inbox_host& host_;
    const client_options& opts_;
    mutable std::mutex mu_;
    std::condition_variable state_cv_;  // the count, and lanes that ended
    routes routes_;
    std::size_t count_ = 0;
    std::size_t dead_ = 0;
    std::atomic<bool> halted_{false};
    std::atomic<std::uint64_t> handled_{0}, retries_{0};
};

}  // namespace xymqtt::detail
