/// @file topic.h
/// Topic validation and matching. Every publish is checked before it is stored, so a bad topic
/// fails at the call site instead of looping forever in the outbox (a broker drops the connection of
/// a client that publishes to a wildcard topic).
#pragma once

#include <string>
#include <string_view>

namespace xymqtt {

/// Checks a topic name for publishing: non-empty, at most 65535 bytes, valid UTF-8, no NUL, no `+`/`#`,
/// not starting with `$`.
/// @throw invalid_topic naming the problem.
void validate_topic_name(std::string_view topic);

/// Checks a subscription filter: valid UTF-8, no NUL, `+` and `#` only as whole levels, `#` last.
/// `$share/<group>/<filter>` is accepted with a non-empty group free of wildcards.
/// @throw invalid_topic naming the problem.
void validate_topic_filter(std::string_view filter);

/// Checks one topic token (a value filling `{name}` in a topic pattern): non-empty, valid UTF-8,
/// no `/`, `+`, `#` or NUL.
/// @param name the token's name, used in the error message.
/// @throw invalid_topic naming the token and the problem.
void validate_topic_token(std::string_view name, std::string_view value);

/// @return true if `topic` matches `filter` (MQTT rules; a `$share/<group>/` prefix is ignored).
bool topic_matches(std::string_view filter, std::string_view topic);

/// @return `filter` without a `$share/<group>/` prefix.
std::string_view strip_share_prefix(std::string_view filter);

/// @return true if `s` is well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

}  // namespace xymqtt
