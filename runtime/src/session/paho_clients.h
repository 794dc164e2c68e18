// The Paho clients of one session: the current one (a fresh one for every connection), the ones of earlier
// connections, and the ones a failed publish left with freed memory.
//
// Guarantees:
//  - A replaced client is kept, not destroyed, until release(): destroying a Paho client while Paho's
//    shared threads still hold work of it crashes (reconnect storms).
//  - A tainted client (see taint) is never destroyed, for the life of the process: destroying it would
//    free memory a second time and corrupt the heap of the whole process. Its callbacks are emptied.
//  - is_current compares without a lock, so Paho's callbacks can tell an earlier connection's report.
//  - Until a tainted client is disconnected, tainted_clients::process() counts it as connected (see there).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace mqtt {
class async_client;
class iasync_client;
}  // namespace mqtt

namespace xymqtt::detail {

/// The tainted Paho clients of the process that may still be connected.
///
/// Why: the failed PUBLISH that taints a client stays in its outbound flows with its topic and payload
/// freed, and Paho only queues that client's disconnect. Until Paho has processed it, the client still
/// counts as connected, and another client's CONNACK with flows to resume makes Paho re-send the
/// outbound flows of every connected client of the process (connect_gate.h): the freed publish among
/// them, read from memory that may belong to something else by then (docs/reliability.md, F11). A
/// connect that sets off that resend first waits here until no tainted client is connected.
///
/// Guarantees: await_disconnected() returns 0 only when every client added and not forgotten has been
/// seen disconnected once; a tainted client is never connected again (the session makes a fresh Paho
/// client for every connection), so it is then dropped. Thread-safe; Paho is asked with no lock held.
class tainted_clients {
public:
    /// @return the registry of this process.
    static tainted_clients& process();

    /// Adds `c`, which must stay alive until it is seen disconnected or forgotten.
    void add(mqtt::iasync_client* c);
    /// Drops `c` (a client about to be destroyed).
    void forget(const void* c);
    /// Waits until no client added is connected, or until `deadline`.
    /// @return the number still connected at the deadline (0: none).
    std::size_t await_disconnected(std::chrono::steady_clock::time_point deadline);

private:
    std::mutex mu_;
    std::vector<mqtt::iasync_client*> live_;
};

class paho_clients {
public:
    /// @param log told how many clients were kept undestroyed at release
    explicit paho_clients(std::function<void(std::size_t kept)> log) : log_(std::move(log)) {}

    /// @return the current client (nullptr before the first connection and after release).
    std::shared_ptr<mqtt::async_client> current() const;
    /// @return whether `via` is the current client.
    bool is_current(const void* via) const { return via && via == current_.load(); }
    /// Retires the current client (no report of it is current any more).
    void retire();
    /// Makes `cli` the current client.
    void install(std::shared_ptr<mqtt::async_client> cli);
    /// Marks `via` as holding freed memory (Paho's threads call this) and adds it to tainted_clients.
    void taint(mqtt::iasync_client* via);
    /// Lets go of every client: the tainted ones are kept for the life of the process, the rest destroyed.
    void release();

private:
    void keep_tainted();  // with mu_ held

    std::function<void(std::size_t)> log_;
    mutable std::mutex mu_;
    std::atomic<const void*> current_{nullptr};  // cli_, for comparisons without mu_
    std::shared_ptr<mqtt::async_client> cli_;
    std::vector<std::shared_ptr<mqtt::async_client>> retired_;  // disconnected, destroyed at release()
    std::mutex taint_mu_;  // not mu_: destroying a Paho client under mu_ fails its tokens
    std::set<const void*> tainted_;
};

}  // namespace xymqtt::detail
