/// @file dead_letter.h
/// A message that the client gave up on, as client::dead_letters() lists it.
///
/// A delivery moves to the dead letters when a handler cannot decode it (it throws parse_error) or
/// when it runs out of `retry_policy::max_attempts`; a publish moves there when the broker refuses it
/// for good. A dead letter stays in the store until it is replayed (client::replay_dead_letter) or
/// purged (client::purge_dead_letter), and never blocks the messages behind it.
#pragma once

#include <string>

#include "xymqtt/store.h"

namespace xymqtt {

/// A record in the dead-letter table.
struct dead_letter {
    std::string id;         ///< Store id of the record, for replay_dead_letter and purge_dead_letter.
    stored_message record;  ///< The message, with `error` saying why it was dead-lettered.
};

}  // namespace xymqtt
