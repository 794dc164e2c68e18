// libFuzzer harness: topic validation and matching (runtime/include/xymqtt/topic.h).
// Input: byte 0 selects the split point; the rest is split into a filter and a topic. Only invalid_topic
// may be thrown; matching must agree with the MQTT rules checked below.
#include <cstddef>
#include <cstdint>
#include <string>

#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

using namespace xymqtt;

namespace {

void check(bool ok) {
    if (!ok) __builtin_trap();
}

bool valid(void (*fn)(std::string_view), std::string_view s) {
    try {
        fn(s);
        return true;
    } catch (const invalid_topic&) {
        return false;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const std::size_t cut = rest.empty() ? 0 : data[0] % (rest.size() + 1);
    const std::string filter = rest.substr(0, cut), topic = rest.substr(cut);

    const bool name_ok = valid(validate_topic_name, topic);
    const bool filter_ok = valid(validate_topic_filter, filter);
    bool token_ok = true;
    try {
        validate_topic_token("t", topic);
    } catch (const invalid_topic&) {
        token_ok = false;
    }
    const bool utf8 = is_valid_utf8(topic);
    if (name_ok) {
        check(utf8 && topic.find('\0') == std::string::npos && topic.find_first_of("+#") == std::string::npos);
        check(topic_matches(topic, topic));  // a topic name is a filter that matches itself
        check(topic_matches("#", topic));    // names never start with '$'
        check(valid(validate_topic_filter, topic));
    }
    if (token_ok) {
        check(utf8 && !topic.empty() && topic.find_first_of("/+#") == std::string::npos &&
              topic.find('\0') == std::string::npos);
        // '+' matches any single level, except that first-level wildcards skip '$' topics (MQTT 4.7.2).
        check(topic_matches("+", topic) == (topic[0] != '$'));
    }
    if (filter_ok) {
        (void)topic_matches(filter, topic);
        (void)strip_share_prefix(filter);
    }
    (void)topic_matches(topic, filter);  // also on inputs that are not valid: no crash
    return 0;
}
