// What a handler inside the runtime hands back with the delivery it handled, and a publish made for the
// outbox: the common words of the inbox, the outbox and the command protocol.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "xymqtt/message.h"
#include "xymqtt/store.h"

namespace xymqtt {

/// What a lane handler wants done together with the removal of its delivery from the inbox.
struct effects {
    std::vector<write_op> ops;                                             ///< Committed atomically with it.
    std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>> publishes;  ///< Outbox puts to send.
    std::vector<std::function<void()>> after_commit;                       ///< Run once committed.
    /// Set by a handler whose work finishes later, on another thread (a command served with a concurrency
    /// above 1). The lane calls it with `finish` and goes on with its next delivery, up to its concurrency;
    /// the delivery stays in the inbox until `finish` is called, once, with the rest of the effects.
    std::function<void(std::function<void(effects)> finish)> later;
};

/// A handler inside the runtime: the user's handlers and the command protocol's.
using lane_handler = std::function<void(const message&, effects&)>;

namespace detail {

/// A publish made for the outbox: its sequence number, message, and the write that stores it.
struct stored_publish {
    std::uint64_t seq;
    std::shared_ptr<stored_message> msg;
    write_op op;
};

}  // namespace detail

}  // namespace xymqtt
