// Schemas read at run time: .proto files (through protobuf's Importer) or protoc descriptor sets, the
// xymqtt contracts they declare (same semantics as generator/xymqtt_gen/model.py, whose table of schema
// rules the tool builds in: schema_rules.h), topics and JSON.
#pragma once

#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor_database.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/message.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "xymqtt/message.h"

namespace xymqtt::cli {

namespace pb = google::protobuf;

struct token_decl {
    std::string name;
    std::optional<std::string> default_value;
    std::string doc;
};

struct event_decl {
    std::string name;
    std::string topic;  ///< Pattern, e.g. `evt/{system}/tick`.
    const pb::Descriptor* type = nullptr;
};

struct command_decl {
    std::string name;    ///< lower_snake_case, e.g. `get_stock`.
    std::string method;  ///< The rpc's name, e.g. `GetStock`.
    std::string topic;   ///< Base topic pattern.
    const pb::Descriptor* request = nullptr;
    const pb::Descriptor* result = nullptr;
    const pb::Descriptor* reject = nullptr;  ///< Typed reject details, or null.
    std::uint32_t expiry_seconds = 0;
    std::string group;
    std::string doc;
};

struct service_decl {
    std::string name;
    std::string full_name;
    std::string file;
    std::string doc;
    std::vector<token_decl> tokens;
    std::vector<event_decl> events;
    std::vector<command_decl> commands;

    const token_decl* token(const std::string& n) const;
};

/// The loaded schemas.
class schema_set {
public:
    /// @throw cli_error (exit_schema) listing the problems; (exit_usage) without any schema.
    explicit schema_set(const schema_flags& flags);
    ~schema_set();

    const std::vector<service_decl>& services() const { return services_; }
    const pb::DescriptorPool& pool() const { return *pool_; }
    /// Files given (not their imports), in order.
    const std::vector<const pb::FileDescriptor*>& files() const { return files_; }

    /// By full or short name. @throw cli_error (usage)
    const service_decl& service(const std::string& name) const;
    /// `<Service>.<command>`; the command by its snake name or rpc name. @throw cli_error (usage)
    std::pair<const service_decl*, const command_decl*> command(const std::string& target) const;
    /// `<Service>.<event>` or `<Service>.all`. @throw cli_error (usage)
    std::pair<const service_decl*, std::vector<const event_decl*>> events(const std::string& target) const;

    /// A new empty message of `type`.
    std::unique_ptr<pb::Message> make(const pb::Descriptor* type) const;

private:
    void read_services(const pb::FileDescriptor* file, std::vector<std::string>& errors);

    std::unique_ptr<pb::compiler::DiskSourceTree> tree_;
    std::unique_ptr<pb::compiler::MultiFileErrorCollector> collector_;
    std::unique_ptr<pb::compiler::Importer> importer_;
    std::unique_ptr<pb::SimpleDescriptorDatabase> database_;
    std::unique_ptr<pb::DescriptorPool::ErrorCollector> pool_collector_;
    std::unique_ptr<pb::DescriptorPool> own_pool_;
    const pb::DescriptorPool* pool_ = nullptr;
    std::unique_ptr<pb::DynamicMessageFactory> factory_;
    std::vector<const pb::FileDescriptor*> files_;
    std::vector<service_decl> services_;
};

// -- topics ------------------------------------------------------------------------------------------

/// Checks that every given token is known: a service token or (events) a field token of one of
/// `events`. @throw cli_error (usage)
void check_tokens(const service_decl& s, const std::map<std::string, std::string>& given,
                  const std::vector<const event_decl*>& events = {});

/// Fills a topic pattern. Service tokens: given, else default, else a "missing token" error. Field
/// tokens (events): from `event` when publishing; given or `+` when subscribing (event == null).
/// @throw cli_error (usage) for a missing or invalid token.
std::string fill_topic(const service_decl& s, const std::string& pattern,
                       const std::map<std::string, std::string>& given, const pb::Descriptor* event_type,
                       const pb::Message* event);

/// The pattern with every token replaced by `+` (to match stored topics against a schema).
std::string wildcard_topic(const std::string& pattern);

// -- encoding ----------------------------------------------------------------------------------------

/// Protobuf JSON of `m` (lowerCamelCase, defaults printed), compact or indented.
std::string to_json(const pb::Message& m, bool pretty = false);
/// Parses JSON into `m`. @return an error message, or nothing on success.
std::optional<std::string> from_json(const std::string& text, pb::Message* m, bool ignore_unknown);
/// JSON or binary encoding of `m`.
std::string encode(const pb::Message& m, wire_format f);
/// Decodes `payload`. @return an error message, or nothing on success.
std::optional<std::string> decode(const std::string& payload, wire_format f, pb::Message* m);

wire_format parse_format(const std::string& name);

/// Describes the schemas (`xymqtt describe`).
std::string describe_text(const schema_set& s, const std::string& name);
std::string describe_json(const schema_set& s, const std::string& name);

}  // namespace xymqtt::cli
