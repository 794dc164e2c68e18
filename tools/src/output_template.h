// Output templates of subscribe and sub (-F/--template): mosquitto_sub's % placeholders and \ escapes,
// so that a format written for mosquitto_sub -F means the same here.
#pragma once

#include <string>
#include <vector>

#include "xymqtt/message.h"

namespace xymqtt::cli {

/// What a template can print of one message.
struct template_fields {
    const message* msg = nullptr;
    std::string event;     ///< subscribe: the event's name.
    std::string payload;   ///< sub: the payload as it is; subscribe: the event as JSON.
    std::string json;      ///< The line the default output prints.
};

class output_template {
public:
    /// @param events true for subscribe (which knows event names).
    /// @throw cli_error (usage) naming an unknown placeholder or escape.
    output_template(const std::string& text, bool events);
    std::string render(const template_fields& f) const;

private:
    enum class field { literal, topic, payload, base64, hex, hex_upper, length, content_type, id, event, json };
    struct part {
        field what;
        std::string text;  // for literals
    };
    std::vector<part> parts_;
};

}  // namespace xymqtt::cli
