// What the session needs from its client: the outbox, the inbox and the command protocol behind it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xymqtt/store.h"

namespace xymqtt::detail {

class session_host {
public:
    virtual ~session_host() = default;

    // -- the outbox's side of a connection
    /// A new Paho client: see outbox::new_client.
    virtual void new_client(const std::map<int, std::uint64_t>& resumable,
                            const std::function<bool(int, const stored_message&)>& carries) = 0;
    virtual void connecting() = 0;
    virtual void connect_returned(bool session_present) = 0;
    virtual void connect_failed() = 0;
    /// Connected, with room for `window` publishes in flight and the broker's maximum packet size (0: none).
    virtual void connected(std::size_t window, std::uint32_t max_packet_size) = 0;
    virtual void lost() = 0;
    /// Publish `seq` completed, or failed; `via`: the Paho client of its connection.
    virtual void delivered(std::uint64_t seq, int reason_code, const void* via) = 0;
    virtual void send_failed(std::uint64_t seq, int rc, int reason_code, const void* via) = 0;
    /// A flow the new Paho client resumed from the store ended.
    virtual void resumed_complete(int packet_id) = 0;
    /// The session gives up the flow it resumed under `packet_id`: see outbox::give_up_resumed.
    virtual bool give_up_resumed(int packet_id, const std::string& why) = 0;
    /// @return whether nothing of the client is in flight (for the process's connect gate).
    virtual bool drained() const = 0;
    /// Another client's connect is over: the outbox may send again.
    virtual void resume() = 0;

    // -- the inbox's side
    /// @return the filters to subscribe (the live lanes), and whether `filter` is still one.
    virtual std::vector<std::string> filters() const = 0;
    virtual bool wants(const std::string& filter) const = 0;
    /// A message arrived (on Paho's receive thread, with Paho's process-wide lock held). The host commits it,
    /// calls `stored` at once once committed, then hands it on. @return nothing once it is stored, else why
    /// it could not be (its acknowledgement must not leave).
    virtual std::optional<std::string> arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                               const std::function<void()>& stored) = 0;
    /// As `arrived`, but the commit is queued and Paho goes on (the acknowledgement waits in the session's
    /// gate). `done` is told once, on the thread that ends the commit: nothing once the message is stored,
    /// else why it could not be. The host may hand the message on before: until the acknowledgement
    /// leaves, a crash or a refusal only has the broker send it again.
    virtual void arrived_later(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                               std::function<void(const std::optional<std::string>& refused)> done) = 0;
    /// @return the MQTT 5 subscription identifier of `filter` (the same the inbox routes by).
    virtual std::uint32_t subscription_identifier(const std::string& filter) const = 0;
    /// The broker answered the SUBSCRIBE of `filter` with `reason_code` (refused from 0x80).
    virtual void subscription_answered(const std::string& filter, int reason_code) = 0;

    /// Runs `fn` at `at`, on the client's timer thread.
    virtual void schedule(std::chrono::steady_clock::time_point at, std::function<void()> fn) = 0;
};

}  // namespace xymqtt::detail
