#include "commands/wire.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>

#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::wire {

using json = nlohmann::json;

namespace {

json parse_object(const std::string& text, const char* what) {
    json j = json::parse(text.empty() ? std::string("{}") : text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw parse_error(std::string(what) + " is not valid JSON");
    if (!j.is_object()) throw parse_error(std::string(what) + " is not a JSON object");
    return j;
}

// JSON text of a payload; invalid UTF-8 in a string (a handler's error text) becomes U+FFFD instead of
// throwing, so the outcome still goes out.
std::string to_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// MQTT 5 strings (user properties) must be UTF-8, or the broker drops the connection: replace what is not.
std::string valid_utf8(const std::string& in) {
    if (is_valid_utf8(in)) return in;
    std::string out;
    for (std::size_t i = 0; i < in.size();) {
        std::size_t len = 1;
        const auto c = static_cast<unsigned char>(in[i]);
        if (c >= 0xC0) len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (c < 0x80 || (i + len <= in.size() && is_valid_utf8(std::string_view(in).substr(i, len)))) {
            out.append(in, i, c < 0x80 ? 1 : len);
            i += c < 0x80 ? 1 : len;
        } else {
            out += "\xEF\xBF\xBD";  // U+FFFD
            ++i;
        }
    }
    return out;
}

message_properties binary_props(const std::string& message_id) {
    message_properties p;
    p.content_type = content_type_protobuf;
    p.correlation_data = message_id;
    return p;
}

// The two envelopes of every message of the protocol: a JSON object carrying the id, or the body as it is
// with the id in the correlation data.
outgoing json_envelope(json j, const std::string& message_id) {
    j["messageId"] = message_id;
    outgoing out;
    out.payload = to_text(j);
    out.props.content_type = content_type_json;
    return out;
}

outgoing binary_envelope(const std::string& body, const std::string& message_id) {
    outgoing out;
    out.payload = body;
    out.props = binary_props(message_id);
    return out;
}

}  // namespace

wire_format detect_format(const message_properties& props) {
    return props.content_type == content_type_protobuf ? wire_format::binary : wire_format::json;
}

outgoing encode_invoke(wire_format f, const std::string& message_id, const std::string& body,
                       std::optional<std::chrono::seconds> expiry) {
    outgoing out = f == wire_format::json ? json_envelope(parse_object(body, "request"), message_id)
                                          : binary_envelope(body, message_id);
    if (expiry) out.props.expiry_seconds = static_cast<std::uint32_t>(expiry->count());
    return out;
}

decoded_invoke decode_invoke(const std::string& payload, const message_properties& props) {
    decoded_invoke d;
    d.format = detect_format(props);
    if (d.format == wire_format::binary) {
        if (props.correlation_data.empty())
            throw undecodable_invoke("binary invoke without correlation data (message id)", "", d.format);
        d.message_id = props.correlation_data;
        if (d.message_id.size() > max_message_id)
            throw undecodable_invoke("correlation data is longer than " + std::to_string(max_message_id) + " bytes", "", d.format);
        d.body = payload;
        return d;
    }
    json j = json::parse(payload, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw undecodable_invoke("invoke is not a JSON object", "", d.format);
    const auto it = j.find("messageId");
    if (it == j.end() || !it->is_string() || it->get<std::string>().empty())
        throw undecodable_invoke("invoke has no string messageId", "", d.format);
    d.message_id = it->get<std::string>();
    if (d.message_id.size() > max_message_id)
        throw undecodable_invoke("messageId is longer than " + std::to_string(max_message_id) + " bytes", "", d.format);
    d.body = payload;
    return d;
}

outgoing encode_resolve(wire_format f, const std::string& message_id, const std::string& body) {
    if (f != wire_format::json) return binary_envelope(body, message_id);
    json j;
    try {
        j = parse_object(body, "result");
    } catch (const parse_error& e) {
        // The handler produced something that is not a JSON object: that is the handler's bug.
        throw command_error(500, std::string("handler returned an invalid JSON result: ") + e.what());
    }
    return json_envelope(std::move(j), message_id);
}

outgoing encode_reject(wire_format f, const std::string& message_id, int status, const std::string& message,
                       const std::string& body) {
    if (f == wire_format::json) {
        json j = json::object();
        if (!body.empty()) {
            json b = json::parse(body, nullptr, false);
            if (b.is_object()) j = std::move(b);
        }
        // A handler's own reject object is published as-is (xy-mqtt's behaviour); fill what it lacks.
        j["ok"] = false;
        if (!j.contains("status")) j["status"] = status;
        if (!j.contains("message")) j["message"] = message;
        return json_envelope(std::move(j), message_id);
    }
    outgoing out = binary_envelope(body, message_id);
    out.props.user = {{"ok", "false"}, {"status", std::to_string(status)}, {"message", valid_utf8(message)}};
    return out;
}

outgoing encode_cancel(wire_format f, const std::string& message_id) {
    return f == wire_format::json ? json_envelope(json::object(), message_id) : binary_envelope("", message_id);
}

std::optional<std::string> decode_message_id(const std::string& payload, const message_properties& props) {
    if (!props.correlation_data.empty()) return props.correlation_data;
    json j = json::parse(payload, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    const auto it = j.find("messageId");
    if (it == j.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
}

command_result decode_result(const std::string& command, bool rejected, const std::string& payload,
                             const message_properties& props) {
    command_result r;
    r.command = command;
    r.format = detect_format(props);
    r.body = payload;
    r.ok = !rejected;
    r.status = rejected ? 500 : 200;
    if (r.format == wire_format::binary) {
        if (props.correlation_data.empty()) throw parse_error("binary result without correlation data");
        r.message_id = props.correlation_data;
        if (rejected) {
            if (auto s = props.user_property("status")) {
                try {
                    r.status = std::stoi(*s);
                } catch (const std::exception&) {
                    throw parse_error("reject status is not a number: " + *s);
                }
            }
            r.message = props.user_property("message").value_or("");
        }
        return r;
    }
    json j = json::parse(payload, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw parse_error("result is not a JSON object");
    const auto id = j.find("messageId");
    if (id == j.end() || !id->is_string()) throw parse_error("result has no string messageId");
    r.message_id = id->get<std::string>();
    if (rejected) {
        const auto st = j.find("status");
        if (st != j.end()) {
            // Peers are not always strict about the type: accept 409, 409.0 and "409"; anything else,
            // including a number no int can hold, is reported as the default 500 (the reject itself still
            // counts).
            constexpr double lowest = std::numeric_limits<int>::min(), highest = std::numeric_limits<int>::max();
            if (st->is_number() && st->get<double>() >= lowest && st->get<double>() <= highest)
                r.status = st->is_number_float() ? static_cast<int>(st->get<double>())
                                                 : static_cast<int>(st->get<std::int64_t>());
            else if (st->is_string() && !st->get<std::string>().empty() &&
                     st->get<std::string>().find_first_not_of("0123456789") == std::string::npos &&
                     st->get<std::string>().size() < 6)
                r.status = std::stoi(st->get<std::string>());
        }
        const auto m = j.find("message");
        if (m != j.end() && m->is_string()) r.message = m->get<std::string>();
    }
    return r;
}

void validate_command(const std::string& command, const command_options& opts) {
    validate_topic_name(command);
    if (!opts.group.empty()) validate_topic_token("group", opts.group);
    if (opts.concurrency < 1 || opts.concurrency > max_concurrency)
        throw configuration_error("concurrency of " + command + " must be 1 to " + std::to_string(max_concurrency) +
                                  ", not " + std::to_string(opts.concurrency));
}

outgoing encode_outcome(wire_format f, const std::string& message_id, std::exception_ptr error,
                        const std::string& result, bool& rejected) {
    rejected = true;
    try {
        if (error) std::rethrow_exception(error);
        auto resolve = encode_resolve(f, message_id, result);  // throws for a result that is not JSON
        rejected = false;
        return resolve;
    } catch (const command_error& e) {
        return encode_reject(f, message_id, e.status(), e.what(), e.body());
    } catch (const parse_error& e) {
        return encode_reject(f, message_id, 400, e.what(), "");
    } catch (const std::exception& e) {
        return encode_reject(f, message_id, 500, e.what(), "");
    } catch (...) {
        return encode_reject(f, message_id, 500, "handler threw a non-standard exception", "");
    }
}

}  // namespace xymqtt::wire
