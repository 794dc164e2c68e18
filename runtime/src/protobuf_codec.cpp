#include "xymqtt/protobuf_codec.h"

#include <google/protobuf/stubs/common.h>  // GOOGLE_PROTOBUF_VERSION
#include <google/protobuf/util/json_util.h>

#include "xymqtt/exception.h"

namespace xymqtt::protobuf {

std::string encode(const google::protobuf::Message& message, wire_format format) {
    std::string out;
    if (format == wire_format::json) {
        google::protobuf::util::JsonPrintOptions options;
        // Every field, defaults included, as xy-mqtt peers expect. Protobuf 26 renamed the option.
#if GOOGLE_PROTOBUF_VERSION >= 5026000
        options.always_print_fields_with_no_presence = true;
#else
        options.always_print_primitive_fields = true;
#endif
        const auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
        if (!status.ok()) {
            throw error("cannot encode " + message.GetTypeName() + " as JSON: " + status.ToString());
        }
    } else if (!message.SerializeToString(&out)) {
        throw error("cannot encode " + message.GetTypeName());
    }
    return out;
}

void decode(const std::string& payload, wire_format format, google::protobuf::Message* message) {
    if (format == wire_format::json) {
        google::protobuf::util::JsonParseOptions options;
        options.ignore_unknown_fields = true;
        const auto status = google::protobuf::util::JsonStringToMessage(payload, message, options);
        if (!status.ok()) {
            throw parse_error("invalid JSON for " + message->GetTypeName() + ": " + status.ToString());
        }
    } else if (!message->ParseFromString(payload)) {
        throw parse_error("invalid protobuf bytes for " + message->GetTypeName());
    }
}

publish_options event_options(wire_format format) {
    publish_options options;
    options.props.content_type = format == wire_format::json ? content_type::json : content_type::protobuf;
    return options;
}

wire_format event_format(const message& delivery, wire_format fallback) {
    if (delivery.props.content_type == content_type::json) return wire_format::json;
    if (delivery.props.content_type == content_type::protobuf) return wire_format::binary;
    return fallback;
}

}  // namespace xymqtt::protobuf
