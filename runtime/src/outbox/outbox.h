// The outbox: durable publishing. Publishes are committed to the store's outgoing table before they are
// sent, and leave it only once the broker has completed them or refused them for good.
//
// Guarantees:
//  - A publish whose commit has returned (or whose promise has not failed) is sent, and sent again after
//    every lost connection or restart, until the broker completes it (PUBCOMP) or refuses it for good: it
//    then becomes a dead letter, never vanishes. Its promise is satisfied once: delivered, refused, or
//    failed by close() (the publish stays stored and goes in the next run).
//  - Order: publishes go out in the order of their sequence numbers, except those sent again after a
//    failure, which go first.
//  - Window: at most `window` publishes are in flight (send_queue.h), flows resumed by the session
//    included.
//  - A refusal for now (broker busy, quota exceeded) sends the publish again after a backoff; a publish over
//    the broker's maximum packet size is refused here, before it can make the broker drop the connection.
//  - One sender thread, owned by the outbox, hands the session batches in order; a completion on the
//    session's receive thread may hand the next batch over from there. The outbox's lock is never held
//    while the session, the store or a hook is called.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/effects.h"
#include "outbox/committer.h"
#include "outbox/packet_size.h"
#include "outbox/pending.h"
#include "outbox/send_queue.h"
#include "xymqtt/client_options.h"
#include "xymqtt/store.h"

namespace xymqtt::detail {

/// What the outbox needs from the client: the session that carries its publishes, and the rest.
class outbox_host {
public:
    /// The connection a publish goes through: a Paho client, as the session names it (nullptr: the current).
    using via = const void*;
    /// Why the session did not take a publish.
    enum class refusal {
        none,          ///< taken: its outcome comes through on_delivered or on_send_failed
        disconnected,  ///< not connected: wait for the next connection
        buffer_full,   ///< the session's queue is full: wait for a completion
        other,         ///< anything else (a full disk): try again after a pause
    };
    struct item {
        std::uint64_t seq = 0;
        std::shared_ptr<stored_message> msg;
        bool sent = false;  ///< set by publish() when the session took it
    };

    virtual ~outbox_host() = default;
    /// Hands `batch` to the session through `v`, in order, up to the first refusal. Called without the
    /// outbox's lock. @return that refusal, or none.
    virtual refusal publish(std::vector<item>& batch, via v) = 0;
    /// @return whether `v` is the current connection's.
    virtual bool is_current(via v) const = 0;
    /// @return false while another client of the process needs this one to stop sending (it connects).
    virtual bool may_send() const = 0;
    /// Nothing may be in flight any more: another client waiting to connect may go on.
    virtual void maybe_drained() = 0;
    /// A publish refused for good: adds to `ops` what goes with its dead letter (an invoke's local reject,
    /// or the end of a call_async, failed at once). @return what to do once `ops` is committed.
    virtual std::function<void()> refused(const stored_message& msg, int reason_code, const std::string& why,
                                          std::vector<write_op>& ops) = 0;
    /// Runs `fn` at `at`, on the client's timer thread.
    virtual void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) = 0;
    /// The store refused a write: reported to the application.
    virtual void storage_failed(const std::string& what) = 0;
};

class outbox {
public:
    /// Recovers the publishes `s` holds (sent first) and starts the sender thread.
    /// @param opts the client's options (read only, outliving the outbox)
    outbox(outbox_host& host, store& s, committer& c, const client_options& opts);
    outbox(const outbox&) = delete;
    outbox& operator=(const outbox&) = delete;
    ~outbox();

    // -- publishing
    /// Commits `pub` in the background (in sequence order with the other submits), then sends it; `prom` (if
    /// set) is satisfied when the broker completes it, or fails if it cannot be stored or is refused.
    void submit(stored_publish pub, std::shared_ptr<std::promise<void>> prom);
    /// Commits `ops` with `pubs` atomically, on this thread, then sends them. @throw what the commit throws.
    void commit(std::vector<write_op> ops, std::vector<stored_publish> pubs);
    /// Publishes committed elsewhere (with a handled delivery): sent. `send_here`: this thread may hand one
    /// to the session (it runs no commit's completion).
    void stored(const std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs, bool send_here);
    /// A dead letter that the broker refused, replayed: sent again under its own sequence number, first.
    void replay(std::uint64_t seq, stored_message rec);
    /// @throw message_too_large if `m` is over the broker's maximum packet size (when known).
    void check_size(const stored_message& m) const;
    /// The broker's maximum packet size (0: none).
    void set_max_packet_size(std::uint32_t n) { max_packet_size_ = n; }

    // -- the session's reports
    /// Publish `seq` completed with `reason_code` (a refusal from 0x80). `from`: the connection whose
    /// receive thread this is, if any (the next batch may then be handed over from here).
    void on_delivered(std::uint64_t seq, int reason_code, outbox_host::via from = nullptr);
    /// Publish `seq` failed with the session's code `rc` (lost with its connection), or was refused with
    /// `reason_code` (from 0x80).
    void on_send_failed(std::uint64_t seq, int rc, int reason_code, outbox_host::via from);
    /// The flow the session resumed under `packet_id` ended.
    void on_resumed_complete(int packet_id);
    /// The session gives up the flow it resumed under `packet_id` (the broker ends every connection at
    /// it): its publish becomes a dead letter, for `why`. @return false if no resumed flow has that id.
    bool give_up_resumed(int packet_id, const std::string& why);

    // -- connections
    /// A new session client replaces the last: see send_queue::new_client. `carries(packet id, message)`
    /// says whether the session's flow under that packet id is that message.
    void new_client(const std::map<int, std::uint64_t>& resumable,
                    const std::function<bool(int, const stored_message&)>& carries);
    /// The connect is under way: resumed flows that end meanwhile wait for its outcome.
    void connecting();
    /// The connect returned: with `session_present`, the broker kept the session; without, the flows the
    /// session was resuming are sent again.
    void connect_returned(bool session_present);
    /// The connect failed.
    void connect_failed();
    /// Connected, with room for `window` publishes in flight: sending starts.
    void up(std::size_t window);
    /// The connection is lost: sending waits for the next.
    void down();

    // -- state
    std::size_t size() const;
    std::uint64_t published() const { return published_; }
    /// @return whether the outbox emptied within `timeout`.
    bool wait_empty(std::chrono::milliseconds timeout);
    /// @return whether nothing is in flight (or there is no connection).
    bool drained() const;
    /// Wakes the sender if it has work (another client's connect is over).
    void wake();
    /// Stops the sender thread.
    void stop();
    /// Fails the promises still waiting (client_closed): their publishes stay stored for the next run.
    void fail_pending();

private:
    /// Lock held. @return whether the sender should run now.
    bool has_work() const;
    void sender_loop();
    enum class outcome { sent, held, pause };
    /// Hands the session the next batch, in outbox order; one thread at a time. `lk` held, released while
    /// the session is called. @param from the connection to publish through (nullptr: the current one)
    outcome dispatch(std::unique_lock<std::mutex>& lk, outbox_host::via from);
    void on_stored(std::uint64_t seq, std::shared_ptr<stored_message> msg, bool send_here);
    /// The broker refused `seq` for good: a dead letter.
    void refuse(std::uint64_t seq, int reason_code, const std::string& why = {});
    /// The broker refused `seq` for now: sent again after a backoff.
    void refuse_for_now(std::uint64_t seq, int reason_code);
    /// A flow left the session's queue (completed, failed or refused): a publish refused as full may go.
    /// mu_ held.
    void made_room() {
        buffer_full_ = false;
        ++freed_;
    }
    std::shared_ptr<stored_message> read(std::uint64_t seq) const;
    void log(log_level level, const std::string& text) const;

    outbox_host& host_;
    store& store_;
    committer& committer_;
    const client_options& opts_;

    mutable std::mutex mu_;
    std::condition_variable send_cv_;
    send_queue sendq_;  // what waits to be sent, what is in flight, and the window
    pending_publishes pending_;  // the count and the promises (a lock of its own, taken after mu_)
    bool connected_ = false;
    bool send_blocked_ = false;  // the session is not connected: wait for the next connection
    bool buffer_full_ = false;   // the session's queue is full: wait for a completion
    std::uint64_t freed_ = 0;    // flows that left the session's queue so far (made_room)
    bool dispatching_ = false;   // a thread is in dispatch(), handing the session a batch
    std::uint64_t gen_ = 0;      // counts connections: a refusal seen by the sender is for one of them
    bool connecting_ = false;
    std::vector<int> removed_while_connecting_;
    bool stopping_ = false;
    std::mutex seq_mu_;  // keeps submitted commits in sequence order
    std::atomic<std::uint32_t> max_packet_size_{0};
    std::atomic<std::uint64_t> published_{0};
    std::thread sender_;
};

}  // namespace xymqtt::detail
