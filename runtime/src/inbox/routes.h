// The inbox's lanes: which lane each stored delivery waits in, the deliveries that wait for a lane, and the
// subscriptions whose handlers each lane runs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/effects.h"
#include "xymqtt/transport.h"
#include "xymqtt/store.h"

namespace xymqtt::detail {

/// One subscription filter's lane: its handlers, and its deliveries in arrival order. Its thread runs
/// them one at a time (or up to `concurrency` with effects::later); the owner guards it with its lock.
struct lane : std::enable_shared_from_this<lane> {
    std::string filter;
    std::map<subscription_id, lane_handler> handlers;
    std::map<std::string, stored_message> queue;  // inbox id -> record, in arrival order
    std::string head_id;                          // delivery in progress, and the handlers done for it
    std::set<subscription_id> head_done;
    unsigned concurrency = 1;
    bool batch = false;             // its thread runs as SCHED_BATCH (see inbox::add_handler)
    std::string running;            // the delivery whose handlers run now on the lane's thread
    std::set<std::string> working;  // deliveries whose handlers finish later (effects::later)
    std::condition_variable cv;
    bool stopping = false;
    bool finished = false;  // the thread has left its loop
    bool detached = false;  // close() ran on this lane's thread and left it to end
    std::thread thread;
};

/// The MQTT 5 subscription identifier of a filter (1..268,435,455): the same in every process, so that
/// messages the broker queued for an earlier process carry the identifier this one expects.
std::uint32_t subscription_identifier(const std::string& filter);

/// The lanes of a client and the deliveries no lane takes yet (parked). Guarantees:
///  - A delivery is in at most one place: one lane's queue, or parked.
///  - A copy that names subscriptions (MQTT 5 subscription identifiers) goes to those lanes only; one that
///    names none of this client's goes to every live lane whose filter matches its topic; one that no lane
///    takes is parked until a lane whose filter matches it opens.
///  - A lane stops when its last handler goes; its deliveries are parked again, in order, except those at
///    work (running, or working with effects::later), which stay with it until they are done or released:
///    a new lane of the same filter never runs a delivery that the stopped one is still running.
///
/// Not thread-safe: the client guards it with its lock. The lanes' threads are the client's.
class routes {
public:
    /// @return the filters of the lanes a message on `topic` carrying `sub_ids` goes to, or {""} (parked).
    std::vector<std::string> lanes_for(const std::string& topic, const std::vector<std::uint32_t>& sub_ids) const;
    /// Queues delivery `id` on the live lane `rec.lane` names, or parks it. @return the lane to wake, or
    /// nullptr.
    std::shared_ptr<lane> route(const std::string& id, stored_message rec);
    /// Parks a delivery (one read from the store at start).
    void park(const std::string& id, stored_message rec) { parked_.emplace(id, std::move(rec)); }
    std::size_t parked() const { return parked_.size(); }

    /// @return the live lane of `filter`, or nullptr.
    lane* find(const std::string& filter) const;
    /// Opens a live lane for `filter` (a stopped lane of that filter is retired) and moves into it the
    /// parked deliveries stored for it, or stored for no lane and matching it. Its thread is not started.
    /// @return the lane, and the relabelling of the deliveries it took that were stored for no lane.
    std::pair<std::shared_ptr<lane>, std::vector<write_op>> open(const std::string& filter, unsigned concurrency);
    /// Adds handler `id` to the live lane `l`.
    void add_handler(subscription_id id, lane& l, lane_handler handler);
    struct removed {
        std::string filter;
        lane* stopped = nullptr;  ///< its lane, if this was its last handler: stopping, its deliveries parked
    };
    /// Removes handler `id`. @return what it was, or nothing if no handler has that id.
    std::optional<removed> remove_handler(subscription_id id);
    /// @return the handlers subscribed with `filter`.
    std::vector<subscription_id> handlers_of(const std::string& filter) const;
    /// @return every handler's filter, by handler.
    const std::unordered_map<subscription_id, std::string>& filters() const { return filter_of_; }

    /// Delivery `id` of lane `l` is handled: removed from it, or from the parked ones if the lane stopped
    /// meanwhile.
    void done(lane& l, const std::string& id) {
        l.queue.erase(id);
        parked_.erase(id);
    }
    /// The lane's handlers are no longer at work on delivery `id` (handled, or to be retried). If the lane
    /// stopped meanwhile and still holds it (a retry), it goes to the live lane of its filter, or is parked.
    /// @return the lane to wake, or nullptr.
    std::shared_ptr<lane> release(lane& l, const std::string& id);
    /// Delivery `id` is dead-lettered: removed wherever it waits.
    void erase(const std::string& id);
    /// @return the filters of the live lanes.
    std::vector<std::string> live_filters() const;
    /// Joins the retired lanes whose threads have left their loop (not the calling thread's own).
    void reap_retired();
    /// Calls `f(lane&)` for every lane, retired ones too.
    void for_each(const std::function<void(lane&)>& f) const;

private:
    // Shared: a lane is woken after its owner's lock is released, when it may already have been retired.
    std::map<std::string, std::shared_ptr<lane>> lanes_;  // by filter
    std::vector<std::shared_ptr<lane>> retired_;
    std::map<std::string, stored_message> parked_;  // inbox records with no live lane
    std::unordered_map<subscription_id, std::string> filter_of_;
};

}  // namespace xymqtt::detail
