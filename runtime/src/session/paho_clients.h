// The Paho clients of one session: the current one (a fresh one for every connection), the ones of earlier
// connections, and the ones a failed publish left with freed memory.
//
// Guarantees:
//  - A replaced client is kept, not destroyed, until release(): destroying a Paho client while Paho's
//    shared threads still hold work of it crashes (reconnect storms).
//  - A tainted client (see taint) is never destroyed, for the life of the process: destroying it would
//    free memory a second time and corrupt the heap of the whole process. Its callbacks are emptied.
//  - is_current compares without a lock, so Paho's callbacks can tell an earlier connection's report.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace mqtt {
class async_client;
}  // namespace mqtt

namespace xymqtt::detail {

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
    /// Marks `via` as holding freed memory (Paho's threads call this).
    void taint(const void* via);
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
