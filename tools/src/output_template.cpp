#include "output_template.h"

#include "cli.h"

namespace xymqtt::cli {

namespace {

const char* placeholders(bool events) {
    return events ? "%t topic, %p payload (JSON), %e event, %b base64, %x/%X hex, %l length, %C content type, "
                    "%m delivery id, %j JSON line, %% a %"
                  : "%t topic, %p payload, %b base64, %x/%X hex, %l length, %C content type, %m delivery id, "
                    "%j JSON line, %% a %";
}

std::string hex(const std::string& in, bool upper) {
    const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    std::string out;
    out.reserve(in.size() * 2);
    for (unsigned char c : in) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

}  // namespace

output_template::output_template(const std::string& text, bool events) {
    auto literal = [&](char c) {
        if (parts_.empty() || parts_.back().what != field::literal) parts_.push_back({field::literal, {}});
        parts_.back().text += c;
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c != '%' && c != '\\') {
            literal(c);
            continue;
        }
        if (i + 1 == text.size())
            throw cli_error(exit_usage, std::string("--template ends in a lone ") + c +
                                            (c == '%' ? " (%% prints a %)" : " (\\\\ prints a \\)"));
        const char n = text[++i];
        if (c == '\\') {
            switch (n) {
                case 'n': literal('\n'); break;
                case 't': literal('\t'); break;
                case 'r': literal('\r'); break;
                case 'e': literal('\x1b'); break;
                case '0': literal('\0'); break;
                case '\\': literal('\\'); break;
                default:
                    throw cli_error(exit_usage, std::string("--template: unknown escape \\") + n +
                                                    " (escapes: \\n, \\t, \\r, \\e, \\0, \\\\)");
            }
            continue;
        }
        field f;
        switch (n) {
            case '%': literal('%'); continue;
            case 't': f = field::topic; break;
            case 'p': f = field::payload; break;
            case 'b': f = field::base64; break;
            case 'x': f = field::hex; break;
            case 'X': f = field::hex_upper; break;
            case 'l': f = field::length; break;
            case 'C': f = field::content_type; break;
            case 'm': f = field::id; break;
            case 'j': f = field::json; break;
            case 'e':
                if (!events)
                    throw cli_error(exit_usage, "--template: %e (the event name) is for subscribe; sub has no schema");
                f = field::event;
                break;
            default:
                throw cli_error(exit_usage, std::string("--template: unknown placeholder %") + n + " (placeholders: " +
                                                placeholders(events) + ")");
        }
        parts_.push_back({f, {}});
    }
}

std::string output_template::render(const template_fields& f) const {
    std::string out;
    const auto& m = *f.msg;
    for (const auto& p : parts_) {
        switch (p.what) {
            case field::literal: out += p.text; break;
            case field::topic: out += m.topic; break;
            case field::payload: out += f.payload; break;
            case field::base64: out += base64(m.payload); break;
            case field::hex: out += hex(m.payload, false); break;
            case field::hex_upper: out += hex(m.payload, true); break;
            case field::length: out += std::to_string(m.payload.size()); break;
            case field::content_type: out += m.props.content_type; break;
            case field::id: out += m.id; break;
            case field::event: out += f.event; break;
            case field::json: out += f.json; break;
        }
    }
    return out;
}

}  // namespace xymqtt::cli
