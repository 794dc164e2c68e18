#include "schema.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/stubs/common.h>  // GOOGLE_PROTOBUF_VERSION
#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "schema_rules.h"
#include "xymqtt/exception.h"
#include "xymqtt/options.pb.h"
#include "xymqtt/topic.h"

namespace xymqtt::cli {

namespace {

constexpr const char* options_file = "xymqtt/options.proto";

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

std::string absolute(const std::string& path) {
    char buf[PATH_MAX];
    if (::realpath(path.c_str(), buf)) return buf;
    return path;
}

std::string parent_dir(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string trim_doc(const std::string& text) {
    std::istringstream in(text);
    std::string line, out;
    while (std::getline(in, line)) {
        if (!line.empty() && line[0] == ' ') line.erase(0, 1);
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        if (!out.empty()) out += '\n';
        out += line;
    }
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

class file_errors : public pb::compiler::MultiFileErrorCollector {
public:
    explicit file_errors(std::vector<std::string>* errors) : errors_(errors) {}
    void AddError(const std::string& filename, int line, int column, const std::string& message) override {
        if (line < 0)
            errors_->push_back(filename + ": " + message);
        else
            errors_->push_back(filename + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
                               message);
    }
    void AddWarning(const std::string&, int, int, const std::string&) override {}

private:
    std::vector<std::string>* errors_;
};

class pool_errors : public pb::DescriptorPool::ErrorCollector {
public:
    explicit pool_errors(std::vector<std::string>* errors) : errors_(errors) {}
    void AddError(const std::string& filename, const std::string& element, const pb::Message*, ErrorLocation,
                  const std::string& message) override {
        errors_->push_back(filename + ": " + (element.empty() ? "" : element + ": ") + message);
    }

private:
    std::vector<std::string>* errors_;
};

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (c == sep) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}

std::string join_errors(const std::vector<std::string>& errors) {
    std::string out;
    for (std::size_t i = 0; i < errors.size() && i < 5; ++i) out += (i ? "; " : "") + errors[i];
    if (errors.size() > 5) out += "; and " + std::to_string(errors.size() - 5) + " more";
    return out;
}

void closure(const pb::FileDescriptor* f, std::set<std::string>& names) {
    if (!names.insert(f->name()).second) return;
    for (int i = 0; i < f->dependency_count(); ++i) closure(f->dependency(i), names);
}

/// Resolves a type name as protoc resolves a field type in `package`; checks the file imports it.
const pb::Descriptor* resolve_message(const pb::DescriptorPool& pool, const std::string& type_name,
                                      const pb::FileDescriptor* file, std::string* problem) {
    if (type_name.empty()) {
        *problem = "no message type given";
        return nullptr;
    }
    std::vector<std::string> candidates;
    if (type_name[0] == '.') {
        candidates.push_back(type_name.substr(1));
    } else {
        std::vector<std::string> scope = file->package().empty() ? std::vector<std::string>{} : split(file->package(), '.');
        for (std::size_t n = scope.size() + 1; n-- > 0;) {
            std::string c;
            for (std::size_t i = 0; i < n; ++i) c += scope[i] + ".";
            candidates.push_back(c + type_name);
        }
    }
    for (const auto& c : candidates) {
        if (const auto* d = pool.FindMessageTypeByName(c)) {
            std::set<std::string> names;
            closure(file, names);
            if (!names.count(d->file()->name())) {
                *problem = "message type '" + type_name + "' (" + d->full_name() + ") is defined in " +
                           d->file()->name() + ", which " + file->name() + " does not import";
                return nullptr;
            }
            return d;
        }
    }
    *problem = "unknown message type '" + type_name + "'";
    return nullptr;
}

// options.proto installed beside the tool: <prefix>/bin/xymqtt -> <prefix>/share/xymqtt/proto, wherever the
// prefix is (/usr from the Debian package, /usr/local, or a prefix that was moved).
std::string installed_schema_dir() {
    char exe[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return {};
    std::string dir(exe, static_cast<std::size_t>(n));
    dir.erase(dir.find_last_of('/') + 1);
    return dir + XYMQTT_SCHEMA_DIR_FROM_BIN;
}

std::vector<std::string> default_import_paths(const std::vector<std::string>& given) {
    std::vector<std::string> paths;
    for (const auto& p : given) paths.push_back(p);
    if (const char* env = std::getenv("XYMQTT_SCHEMA_PATH"))
        for (const auto& p : split(env, ':'))
            if (!p.empty()) paths.push_back(p);
    for (const auto& p : {std::string(XYMQTT_SCHEMA_DIR_BUILD), installed_schema_dir()})
        if (!p.empty() && exists(p + "/" + options_file)) paths.push_back(p);
    for (const auto& p : split(XYMQTT_PROTOBUF_INCLUDE_DIR, ';'))
        if (!p.empty() && exists(p + "/google/protobuf/descriptor.proto")) paths.push_back(p);
    if (exists("/usr/include/google/protobuf/descriptor.proto")) paths.push_back("/usr/include");
    return paths;
}

}  // namespace

const token_decl* service_decl::token(const std::string& n) const {
    for (const auto& t : tokens)
        if (t.name == n) return &t;
    return nullptr;
}

schema_set::~schema_set() = default;

schema_set::schema_set(const schema_flags& flags) {
    if (flags.protos.empty() && flags.descriptor_sets.empty())
        throw cli_error(exit_usage, "no schemas: pass --schema FILE.proto or --descriptor-set FILE.pb");
    std::vector<std::string> errors;
    if (!flags.descriptor_sets.empty() && !flags.protos.empty())
        throw cli_error(exit_usage, "use either --schema or --descriptor-set, not both");

    if (!flags.descriptor_sets.empty()) {
        database_ = std::make_unique<pb::SimpleDescriptorDatabase>();
        std::vector<std::string> names;
        std::set<std::string> seen;
        for (const auto& path : flags.descriptor_sets) {
            std::ifstream in(path, std::ios::binary);
            if (!in) throw cli_error(exit_schema, "cannot read descriptor set " + path);
            std::stringstream buf;
            buf << in.rdbuf();
            pb::FileDescriptorSet set;
            if (!set.ParseFromString(buf.str()))
                throw cli_error(exit_schema, path + " is not a FileDescriptorSet (protoc --include_imports -o FILE)");
            for (const auto& f : set.file()) {
                if (!seen.insert(f.name()).second) continue;
                database_->Add(f);
                names.push_back(f.name());
            }
        }
        pool_collector_ = std::make_unique<pool_errors>(&errors);
        own_pool_ = std::make_unique<pb::DescriptorPool>(database_.get(), pool_collector_.get());
        pool_ = own_pool_.get();
        for (const auto& name : names) {
            const auto* f = pool_->FindFileByName(name);
            if (!f) {
                errors.push_back(name + ": cannot be built (missing imports? use protoc --include_imports)");
                continue;
            }
            if (name == options_file || name.rfind("google/protobuf/", 0) == 0) continue;
            files_.push_back(f);
        }
    } else {
        tree_ = std::make_unique<pb::compiler::DiskSourceTree>();
        const auto paths = default_import_paths(flags.import_paths);
        for (const auto& p : paths) tree_->MapPath("", absolute(p));
        // Files outside every import path: their own directory becomes one (after the others).
        std::vector<std::string> virtual_names;
        for (const auto& proto : flags.protos) {
            if (!exists(proto)) {
                virtual_names.push_back(proto);  // a name relative to an import path
                continue;
            }
            const std::string disk = absolute(proto);
            std::string virt, shadow;
            auto r = tree_->DiskFileToVirtualFile(disk, &virt, &shadow);
            if (r == pb::compiler::DiskSourceTree::NO_MAPPING) {
                tree_->MapPath("", parent_dir(disk));
                r = tree_->DiskFileToVirtualFile(disk, &virt, &shadow);
            }
            if (r == pb::compiler::DiskSourceTree::SHADOWED)
                throw cli_error(exit_schema, proto + " is shadowed by " + shadow + " (same name in an earlier import path)");
            if (r != pb::compiler::DiskSourceTree::SUCCESS) throw cli_error(exit_schema, "cannot read " + proto);
            virtual_names.push_back(virt);
        }
        collector_ = std::make_unique<file_errors>(&errors);
        importer_ = std::make_unique<pb::compiler::Importer>(tree_.get(), collector_.get());
        for (const auto& name : virtual_names) {
            const auto* f = importer_->Import(name);
            if (!f) {
                if (errors.empty()) errors.push_back(name + ": not found in the import paths (-I)");
                continue;
            }
            files_.push_back(f);
        }
        pool_ = importer_->pool();
    }
    if (!errors.empty()) throw cli_error(exit_schema, "cannot load schemas: " + join_errors(errors));

    factory_ = std::make_unique<pb::DynamicMessageFactory>(pool_);
    // Services of the given files and of everything they import.
    std::set<std::string> done;
    std::vector<const pb::FileDescriptor*> todo(files_.rbegin(), files_.rend());
    std::vector<const pb::FileDescriptor*> order;
    while (!todo.empty()) {
        const auto* f = todo.back();
        todo.pop_back();
        if (!done.insert(f->name()).second) continue;
        order.push_back(f);
        for (int i = f->dependency_count(); i-- > 0;) todo.push_back(f->dependency(i));
    }
    for (const auto* f : order) read_services(f, errors);
    if (!errors.empty()) throw cli_error(exit_schema, "invalid xymqtt options: " + join_errors(errors));
}

namespace {
// What is wrong with a topic pattern of service `s` (of an event of type `event_type`, whose singular
// string and integer fields may be tokens too), or nothing. The generator's rules, word for word: those
// that need no schema from its table (schema_rules.h), the others as generator/xymqtt_gen/model.py's
// parse_topic has them; tests/schema_rules/topic_patterns.txt holds both to them.
std::optional<std::string> topic_problem(const std::string& pattern, const service_decl& s,
                                         const pb::Descriptor* event_type);
}  // namespace

void schema_set::read_services(const pb::FileDescriptor* file, std::vector<std::string>& errors) {
    for (int si = 0; si < file->service_count(); ++si) {
        const auto* sd = file->service(si);
        // Reparse the options through the generated options classes: custom options the pool kept as
        // unknown fields become the extensions of xymqtt/options.pb.h.
        pb::ServiceOptions so;
        so.ParseFromString(sd->options().SerializeAsString());
        std::vector<pb::MethodOptions> mos(static_cast<std::size_t>(sd->method_count()));
        bool any_command = false;
        for (int mi = 0; mi < sd->method_count(); ++mi) {
            mos[static_cast<std::size_t>(mi)].ParseFromString(sd->method(mi)->options().SerializeAsString());
            any_command = any_command || mos[static_cast<std::size_t>(mi)].HasExtension(xymqtt::command);
        }
        if (so.ExtensionSize(xymqtt::token) == 0 && so.ExtensionSize(xymqtt::event) == 0 && !any_command) continue;

        service_decl s;
        s.name = sd->name();
        s.full_name = sd->full_name();
        s.file = file->name();
        pb::SourceLocation loc;
        if (sd->GetSourceLocation(&loc)) s.doc = trim_doc(loc.leading_comments);
        const std::string where = file->name() + ": service " + sd->name();
        for (int i = 0; i < so.ExtensionSize(xymqtt::token); ++i) {
            const auto& t = so.GetExtension(xymqtt::token, i);
            token_decl td;
            td.name = t.name();
            if (t.has_default_()) td.default_value = t.default_();
            td.doc = t.doc();
            s.tokens.push_back(td);
        }
        for (int i = 0; i < so.ExtensionSize(xymqtt::event); ++i) {
            const auto& e = so.GetExtension(xymqtt::event, i);
            event_decl ed;
            ed.name = e.name();
            ed.topic = e.topic();
            std::string problem;
            ed.type = resolve_message(*pool_, e.type(), file, &problem);
            if (!ed.type) {
                errors.push_back(where + ": event " + e.name() + ": " + problem);
                continue;
            }
            if (auto p = topic_problem(ed.topic, s, ed.type)) {
                errors.push_back(where + ": event " + e.name() + ": " + *p);
                continue;
            }
            s.events.push_back(ed);
        }
        for (int mi = 0; mi < sd->method_count(); ++mi) {
            const auto& mo = mos[static_cast<std::size_t>(mi)];
            if (!mo.HasExtension(xymqtt::command)) continue;
            const auto* md = sd->method(mi);
            const auto& c = mo.GetExtension(xymqtt::command);
            command_decl cd;
            cd.name = schema_rules::built_in().snake(md->name());
            cd.method = md->name();
            cd.topic = c.topic();
            cd.request = md->input_type();
            cd.result = md->output_type();
            cd.expiry_seconds = c.expiry_seconds();
            cd.group = c.group();
            if (md->GetSourceLocation(&loc)) cd.doc = trim_doc(loc.leading_comments);
            if (auto p = topic_problem(cd.topic, s, nullptr)) {
                errors.push_back(where + ": command " + cd.name + ": " + *p);
                continue;
            }
            if (!c.reject().empty()) {
                std::string problem;
                cd.reject = resolve_message(*pool_, c.reject(), file, &problem);
                if (!cd.reject) {
                    errors.push_back(where + ": command " + cd.name + ": reject: " + problem);
                    continue;
                }
            }
            s.commands.push_back(cd);
        }
        services_.push_back(std::move(s));
    }
}

const service_decl& schema_set::service(const std::string& name) const {
    std::vector<const service_decl*> found;
    for (const auto& s : services_)
        if (s.full_name == name) return s;
    for (const auto& s : services_)
        if (s.name == name) found.push_back(&s);
    if (found.size() == 1) return *found[0];
    if (found.size() > 1) {
        std::string names;
        for (const auto* s : found) names += (names.empty() ? "" : ", ") + s->full_name;
        throw cli_error(exit_usage, "service name '" + name + "' is ambiguous: " + names);
    }
    std::string known;
    for (const auto& s : services_) known += (known.empty() ? "" : ", ") + s.full_name;
    throw cli_error(exit_usage, "unknown service '" + name + "' (services: " + (known.empty() ? "none" : known) + ")");
}

namespace {
std::pair<std::string, std::string> split_target(const std::string& target, const char* what) {
    const auto dot = target.rfind('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == target.size())
        throw cli_error(exit_usage, "'" + target + "' is not <Service>.<" + what + ">");
    return {target.substr(0, dot), target.substr(dot + 1)};
}
}  // namespace

std::pair<const service_decl*, const command_decl*> schema_set::command(const std::string& target) const {
    const auto [sname, cname] = split_target(target, "command");
    const auto& s = service(sname);
    for (const auto& c : s.commands)
        if (c.name == cname || c.method == cname) return {&s, &c};
    std::string known;
    for (const auto& c : s.commands) known += (known.empty() ? "" : ", ") + c.name;
    throw cli_error(exit_usage, "unknown command '" + cname + "' of service " + s.full_name +
                                    " (commands: " + (known.empty() ? "none" : known) + ")");
}

std::pair<const service_decl*, std::vector<const event_decl*>> schema_set::events(const std::string& target) const {
    const auto [sname, ename] = split_target(target, "event|all");
    const auto& s = service(sname);
    std::vector<const event_decl*> out;
    for (const auto& e : s.events)
        if (ename == "all" || e.name == ename) out.push_back(&e);
    if (out.empty()) {
        std::string known;
        for (const auto& e : s.events) known += (known.empty() ? "" : ", ") + e.name;
        if (ename == "all") throw cli_error(exit_usage, "service " + s.full_name + " declares no events");
        throw cli_error(exit_usage, "unknown event '" + ename + "' of service " + s.full_name +
                                        " (events: " + (known.empty() ? "none" : known) + ")");
    }
    return {&s, out};
}

std::unique_ptr<pb::Message> schema_set::make(const pb::Descriptor* type) const {
    const auto* proto = factory_->GetPrototype(type);
    if (!proto) throw cli_error(exit_internal, "cannot create a message of type " + type->full_name());
    return std::unique_ptr<pb::Message>(proto->New());
}

// -- topics ------------------------------------------------------------------------------------------

namespace {

std::optional<std::string> level_token(const std::string& level) { return schema_rules::built_in().level_token(level); }

const pb::FieldDescriptor* field_token(const pb::Descriptor* type, const std::string& name) {
    if (!type) return nullptr;
    const auto* f = type->FindFieldByName(name);
    if (!f || f->is_repeated()) return nullptr;
    switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_STRING:
            return f->type() == pb::FieldDescriptor::TYPE_STRING ? f : nullptr;
        case pb::FieldDescriptor::CPPTYPE_INT32:
        case pb::FieldDescriptor::CPPTYPE_INT64:
        case pb::FieldDescriptor::CPPTYPE_UINT32:
        case pb::FieldDescriptor::CPPTYPE_UINT64:
            return f;
        default:
            return nullptr;
    }
}

std::optional<std::string> topic_problem(const std::string& pattern, const service_decl& s,
                                         const pb::Descriptor* event_type) {
    const auto& rules = schema_rules::built_in();
    if (auto problem = rules.pattern_problem(pattern)) return problem;
    for (const auto& level : split(pattern, '/')) {
        if (auto problem = rules.level_problem(pattern, level)) return problem;
        const auto name = rules.level_token(level);
        if (!name) continue;
        if (s.token(*name)) continue;
        if (event_type && event_type->FindFieldByName(*name)) {
            if (field_token(event_type, *name)) continue;
            return "token '{" + *name + "}' is field " + event_type->full_name() + "." + *name +
                   ", which is not a singular string or integer field";
        }
        std::vector<std::string> known;
        for (const auto& t : s.tokens) known.push_back(t.name);
        std::sort(known.begin(), known.end());
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        return "unknown token '{" + *name + "}' in topic '" + pattern + "': not a token of service " + s.name +
               (event_type ? " nor a field of " + event_type->full_name() : std::string()) +
               " (declared tokens: " + (list.empty() ? "none" : list) + ")";
    }
    return std::nullopt;
}

std::string field_value(const pb::Message& m, const pb::FieldDescriptor* f) {
    const auto* r = m.GetReflection();
    switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_STRING:
            return r->GetString(m, f);
        case pb::FieldDescriptor::CPPTYPE_INT32:
            return std::to_string(r->GetInt32(m, f));
        case pb::FieldDescriptor::CPPTYPE_INT64:
            return std::to_string(r->GetInt64(m, f));
        case pb::FieldDescriptor::CPPTYPE_UINT32:
            return std::to_string(r->GetUInt32(m, f));
        case pb::FieldDescriptor::CPPTYPE_UINT64:
            return std::to_string(r->GetUInt64(m, f));
        default:
            return {};
    }
}

void validate_token(const std::string& name, const std::string& value) {
    try {
        validate_topic_token(name, value);
    } catch (const invalid_topic& e) {
        throw cli_error(exit_usage, e.what());
    }
}

}  // namespace

void check_tokens(const service_decl& s, const std::map<std::string, std::string>& given,
                  const std::vector<const event_decl*>& events) {
    for (const auto& [name, value] : given) {
        bool known = s.token(name) != nullptr;
        for (const auto* e : events)
            known = known || (e->topic.find("{" + name + "}") != std::string::npos && field_token(e->type, name));
        if (!known) {
            std::string names;
            for (const auto& t : s.tokens) names += (names.empty() ? "" : ", ") + t.name;
            throw cli_error(exit_usage, "unknown token '" + name + "' for service " + s.full_name +
                                            " (tokens: " + (names.empty() ? "none" : names) + ")");
        }
        validate_token(name, value);
    }
}

std::string fill_topic(const service_decl& s, const std::string& pattern,
                       const std::map<std::string, std::string>& given, const pb::Descriptor* event_type,
                       const pb::Message* event) {
    std::string out;
    for (const auto& level : split(pattern, '/')) {
        if (!out.empty()) out += '/';
        const auto name = level_token(level);
        if (!name) {
            out += level;
            continue;
        }
        if (const auto* t = s.token(*name)) {
            auto it = given.find(*name);
            std::string value;
            if (it != given.end())
                value = it->second;
            else if (t->default_value)
                value = *t->default_value;
            else
                throw cli_error(exit_usage, "missing token '" + *name + "' of service " + s.full_name +
                                                ": pass --token " + *name + "=VALUE");
            validate_token(*name, value);
            out += value;
            continue;
        }
        const auto* f = field_token(event_type, *name);
        if (!f) throw cli_error(exit_schema, "topic '" + pattern + "': unknown token {" + *name + "}");
        if (event) {
            if (given.count(*name))
                throw cli_error(exit_usage, "token '" + *name + "' is a field of " + event_type->full_name() +
                                                ": set it in the JSON, not with --token");
            const auto value = field_value(*event, f);
            validate_token(*name, value);
            out += value;
        } else {
            auto it = given.find(*name);
            out += it != given.end() ? it->second : "+";
        }
    }
    return out;
}

std::string wildcard_topic(const std::string& pattern) {
    std::string out;
    for (const auto& level : split(pattern, '/')) {
        if (!out.empty()) out += '/';
        out += level_token(level) ? "+" : level;
    }
    return out;
}

// -- encoding ----------------------------------------------------------------------------------------

std::string to_json(const pb::Message& m, bool pretty) {
    pb::util::JsonPrintOptions o;
    // Every field, defaults included. Protobuf 26 renamed the option.
#if GOOGLE_PROTOBUF_VERSION >= 5026000
    o.always_print_fields_with_no_presence = true;
#else
    o.always_print_primitive_fields = true;
#endif
    o.add_whitespace = pretty;
    std::string out;
    const auto st = pb::util::MessageToJsonString(m, &out, o);
    if (!st.ok()) throw cli_error(exit_internal, "cannot print " + m.GetTypeName() + " as JSON: " + st.ToString());
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

std::optional<std::string> from_json(const std::string& text, pb::Message* m, bool ignore_unknown) {
    pb::util::JsonParseOptions o;
    o.ignore_unknown_fields = ignore_unknown;
    const auto st = pb::util::JsonStringToMessage(text, m, o);
    if (st.ok()) return std::nullopt;
    std::string message(st.message());
    return message.substr(0, message.find('\n'));  // one line
}

std::string encode(const pb::Message& m, wire_format f) {
    if (f == wire_format::json) return to_json(m);
    std::string out;
    if (!m.SerializeToString(&out)) throw cli_error(exit_internal, "cannot encode " + m.GetTypeName());
    return out;
}

std::optional<std::string> decode(const std::string& payload, wire_format f, pb::Message* m) {
    if (f == wire_format::json) return from_json(payload, m, true);
    if (!m->ParseFromString(payload)) return std::string("invalid protobuf bytes for ") + m->GetTypeName();
    return std::nullopt;
}

wire_format parse_format(const std::string& name) {
    if (name == "json") return wire_format::json;
    if (name == "binary") return wire_format::binary;
    throw cli_error(exit_usage, "unknown format '" + name + "' (json or binary)");
}

// -- describe ----------------------------------------------------------------------------------------

namespace {

std::string indent(const std::string& doc, const std::string& prefix) {
    std::string out;
    for (const auto& line : split(doc, '\n')) out += prefix + line + "\n";
    return out;
}

std::string pad(const std::string& s, std::size_t n) { return s.size() >= n ? s + " " : s + std::string(n - s.size(), ' '); }

bool matches(const service_decl& s, const std::string& name) {
    return name.empty() || name == s.name || name == s.full_name;
}

}  // namespace

std::string describe_text(const schema_set& set, const std::string& name) {
    if (!name.empty()) {
        // A message or enum type: its definition.
        if (const auto* d = set.pool().FindMessageTypeByName(name)) return d->DebugString();
        if (const auto* d = set.pool().FindEnumTypeByName(name)) return d->DebugString();
        bool any = false;
        for (const auto& s : set.services()) any = any || matches(s, name);
        if (!any) {
            // `<Service>.<command>` or `<Service>.<event>`: the request/result or event definitions.
            const auto dot = name.rfind('.');
            if (dot != std::string::npos) {
                const auto& s = set.service(name.substr(0, dot));
                const auto member = name.substr(dot + 1);
                for (const auto& c : s.commands)
                    if (c.name == member || c.method == member) {
                        std::string out = "command " + s.full_name + "." + c.name + "  topic " + c.topic + "\n";
                        out += "request " + c.request->DebugString();
                        out += "result " + c.result->DebugString();
                        if (c.reject) out += "reject details " + c.reject->DebugString();
                        return out;
                    }
                for (const auto& e : s.events)
                    if (e.name == member)
                        return "event " + s.full_name + "." + e.name + "  topic " + e.topic + "\n" + e.type->DebugString();
            }
            set.service(name);  // throws "unknown service"
        }
    }
    std::ostringstream out;
    bool first = true;
    for (const auto& s : set.services()) {
        if (!matches(s, name)) continue;
        if (!first) out << "\n";
        first = false;
        out << "service " << s.full_name << " (" << s.file << ")\n";
        if (!s.doc.empty()) out << indent(s.doc, "  # ");
        if (!s.tokens.empty()) {
            out << "  tokens:\n";
            for (const auto& t : s.tokens) {
                std::string line = "    {" + t.name + "}";
                line = pad(line, 20) + (t.default_value ? "default \"" + *t.default_value + "\"" : std::string("required"));
                if (!t.doc.empty()) line = pad(line, 44) + "# " + split(t.doc, '\n')[0];
                out << line << "\n";
            }
        }
        if (!s.events.empty()) {
            out << "  events:\n";
            for (const auto& e : s.events)
                out << pad("    " + e.name, 20) << pad(e.topic, 44) << e.type->full_name() << "\n";
        }
        if (!s.commands.empty()) {
            out << "  commands:\n";
            for (const auto& c : s.commands) {
                out << pad("    " + c.name, 20) << pad(c.topic, 44) << c.request->full_name() << " -> "
                    << c.result->full_name() << "\n";
                std::string extra;
                if (c.reject) extra += "reject " + c.reject->full_name();
                if (c.expiry_seconds) extra += std::string(extra.empty() ? "" : ", ") + "expiry " + std::to_string(c.expiry_seconds) + " s";
                if (!c.group.empty()) extra += std::string(extra.empty() ? "" : ", ") + "group " + c.group;
                if (!extra.empty()) out << pad("", 20) << "(" << extra << ")\n";
                if (!c.doc.empty()) out << indent(c.doc, std::string(20, ' ') + "# ");
            }
        }
    }
    if (first) out << "no xymqtt services in the schemas\n";
    return out.str();
}

std::string describe_json(const schema_set& set, const std::string& name) {
    using json = nlohmann::ordered_json;
    json services = json::array();
    for (const auto& s : set.services()) {
        if (!matches(s, name)) continue;
        json js;
        js["service"] = s.full_name;
        js["file"] = s.file;
        if (!s.doc.empty()) js["doc"] = s.doc;
        js["tokens"] = json::array();
        for (const auto& t : s.tokens) {
            json jt;
            jt["name"] = t.name;
            jt["required"] = !t.default_value;
            if (t.default_value) jt["default"] = *t.default_value;
            if (!t.doc.empty()) jt["doc"] = t.doc;
            js["tokens"].push_back(jt);
        }
        js["events"] = json::array();
        for (const auto& e : s.events)
            js["events"].push_back(json{{"name", e.name}, {"topic", e.topic}, {"type", e.type->full_name()}});
        js["commands"] = json::array();
        for (const auto& c : s.commands) {
            json jc{{"name", c.name},
                    {"rpc", c.method},
                    {"topic", c.topic},
                    {"request", c.request->full_name()},
                    {"result", c.result->full_name()}};
            if (c.reject) jc["reject"] = c.reject->full_name();
            if (c.expiry_seconds) jc["expiry_seconds"] = c.expiry_seconds;
            if (!c.group.empty()) jc["group"] = c.group;
            if (!c.doc.empty()) jc["doc"] = c.doc;
            js["commands"].push_back(jc);
        }
        services.push_back(js);
    }
    if (!name.empty() && services.empty()) set.service(name);  // throws "unknown service"
    return services.dump(2);
}

int run_describe(const schema_flags& sf, const output_flags&, const describe_flags& f) {
    schema_set s(sf);
    const auto text = f.json ? describe_json(s, f.name) + "\n" : describe_text(s, f.name);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return exit_ok;
}

}  // namespace xymqtt::cli
