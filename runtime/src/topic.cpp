#include "xymqtt/topic.h"

#include <string>

#include "xymqtt/exception.h"
#include "xymqtt/message.h"

namespace xymqtt {

bool is_valid_utf8(std::string_view s) {
    std::size_t i = 0;
    const std::size_t n = s.size();
    while (i < n) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t len;
        std::uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n) return false;
        for (std::size_t k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

namespace {

std::string quoted(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '\0')
            out += "\\0";
        else
            out += c;
    }
    return out + "\"";
}

void check_common(std::string_view what, std::string_view s) {
    if (s.empty()) throw invalid_topic(std::string(what) + " is empty");
    if (s.size() > 65535) throw invalid_topic(std::string(what) + " is longer than 65535 bytes");
    if (s.find('\0') != std::string_view::npos) throw invalid_topic(std::string(what) + " " + quoted(s) + " contains NUL");
    if (!is_valid_utf8(s)) throw invalid_topic(std::string(what) + " is not valid UTF-8");
}

}  // namespace

void validate_topic_name(std::string_view topic) {
    check_common("topic", topic);
    if (topic.find_first_of("+#") != std::string_view::npos)
        throw invalid_topic("topic " + quoted(topic) + " contains a wildcard (+ or #); wildcards are only for subscriptions");
    if (topic.front() == '$') throw invalid_topic("topic " + quoted(topic) + " starts with $, which is reserved for the broker");
}

void validate_topic_filter(std::string_view filter) {
    check_common("topic filter", filter);
    std::string_view rest = filter;
    if (rest.substr(0, 7) == "$share/") {
        const auto slash = rest.find('/', 7);
        if (slash == std::string_view::npos || slash == 7)
            throw invalid_topic("shared subscription " + quoted(filter) + " needs $share/<group>/<filter>");
        const auto group = rest.substr(7, slash - 7);
        if (group.find_first_of("+#") != std::string_view::npos)
            throw invalid_topic("share group in " + quoted(filter) + " contains a wildcard");
        rest = rest.substr(slash + 1);
        if (rest.empty()) throw invalid_topic("shared subscription " + quoted(filter) + " has an empty filter");
    }
    std::size_t start = 0;
    while (true) {
        const auto end = rest.find('/', start);
        const auto level = rest.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
        if (level.find_first_of("+#") != std::string_view::npos && level.size() != 1)
            throw invalid_topic("topic filter " + quoted(filter) + ": a wildcard must be a whole level");
        if (level == "#" && end != std::string_view::npos)
            throw invalid_topic("topic filter " + quoted(filter) + ": # must be the last level");
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
}

void validate_topic_token(std::string_view name, std::string_view value) {
    const std::string what = "topic token {" + std::string(name) + "}";
    if (value.empty()) throw invalid_topic(what + " is empty");
    if (value.find('\0') != std::string_view::npos) throw invalid_topic(what + " contains NUL");
    if (!is_valid_utf8(value)) throw invalid_topic(what + " is not valid UTF-8");
    if (value.find_first_of("/+#") != std::string_view::npos)
        throw invalid_topic(what + " = " + quoted(value) + " contains '/', '+' or '#'");
}

std::string_view strip_share_prefix(std::string_view filter) {
    if (filter.substr(0, 7) != "$share/") return filter;
    const auto slash = filter.find('/', 7);
    return slash == std::string_view::npos ? filter : filter.substr(slash + 1);
}

bool topic_matches(std::string_view filter, std::string_view topic) {
    filter = strip_share_prefix(filter);
    // Wildcards at the first level do not match topics starting with $ (MQTT 4.7.2).
    if (!topic.empty() && topic.front() == '$' && !filter.empty() && (filter.front() == '+' || filter.front() == '#'))
        return false;
    std::size_t f = 0, t = 0;
    while (true) {
        const auto fe = filter.find('/', f);
        const auto flevel = filter.substr(f, fe == std::string_view::npos ? std::string_view::npos : fe - f);
        if (flevel == "#") return true;
        if (t > topic.size()) return false;
        const auto te = topic.find('/', t);
        const auto tlevel = topic.substr(t, te == std::string_view::npos ? std::string_view::npos : te - t);
        if (flevel != "+" && flevel != tlevel) return false;
        const bool fend = fe == std::string_view::npos, tend = te == std::string_view::npos;
        if (fend && tend) return true;
        if (fend) return false;
        if (tend) {
            // "a/#" matches "a": the rest of the filter must be exactly "#".
            return filter.substr(fe + 1) == "#";
        }
        f = fe + 1;
        t = te + 1;
    }
}

namespace {

void check_property(const std::string& what, std::string_view s) {
    if (s.size() > 65535) throw invalid_property(what + " is longer than 65,535 bytes");
    if (!is_valid_utf8(s)) throw invalid_property(what + " is not valid UTF-8");
    if (s.find('\0') != std::string_view::npos) throw invalid_property(what + " contains U+0000");
}

}  // namespace

void validate_properties(const message_properties& props) {
    check_property("content type", props.content_type);
    if (props.correlation_data.size() > 65535) throw invalid_property("correlation data is longer than 65,535 bytes");
    if (!props.response_topic.empty()) {
        try {
            validate_topic_name(props.response_topic);
        } catch (const invalid_topic& e) {
            throw invalid_property(std::string("response topic: ") + e.what());
        }
    }
    for (const auto& [k, v] : props.user) {
        check_property("user property name " + quoted(k), k);
        check_property("user property " + quoted(k) + " value", v);
    }
}

}  // namespace xymqtt
