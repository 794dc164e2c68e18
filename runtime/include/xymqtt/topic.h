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
/// @param topic the topic name.
/// @throw xymqtt::invalid_topic naming the problem.
void validate_topic_name(std::string_view topic);

/// Checks a subscription filter: non-empty, at most 65535 bytes, valid UTF-8, no NUL, `+` and `#` only
/// as whole levels, `#` last. `$share/<group>/<filter>` is accepted with a non-empty group free of
/// wildcards and a non-empty filter.
/// @param filter the topic filter.
/// @throw xymqtt::invalid_topic naming the problem.
void validate_topic_filter(std::string_view filter);

/// Checks one topic token (a value filling `{name}` in a topic pattern): non-empty, valid UTF-8,
/// no `/`, `+`, `#` or NUL.
/// @param name the token's name, used in the error message.
/// @param value the token's value.
/// @throw xymqtt::invalid_topic naming the token and the problem.
void validate_topic_token(std::string_view name, std::string_view value);

/// Matches a topic name against a filter by MQTT's rules: `+` matches one level, `#` the rest (also
/// none: `a/#` matches `a`), and wildcards at the first level do not match topics starting with `$`.
/// Neither argument is validated.
/// @param filter the topic filter; a `$share/<group>/` prefix is ignored.
/// @param topic the topic name.
/// @return true if `topic` matches `filter`.
bool topic_matches(std::string_view filter, std::string_view topic);

/// Removes the prefix of a shared subscription.
/// @param filter a topic filter, shared or not.
/// @return `filter` without a `$share/<group>/` prefix (a view into `filter`).
std::string_view strip_share_prefix(std::string_view filter);

/// Checks UTF-8.
/// @param s the bytes to check.
/// @return true if `s` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace xymqtt
