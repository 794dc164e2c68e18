// `xymqtt store DIR stats|list|show|replay|purge`: a client's store, read and repaired offline.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <ctime>
#include <sys/stat.h>
#include <unistd.h>

#include "schema.h"
#include "xymqtt/exception.h"
#include "xymqtt/store.h"
#include "xymqtt/topic.h"

namespace xymqtt::cli {

namespace {

using ojson = nlohmann::ordered_json;

constexpr table all_tables[] = {table::outgoing, table::incoming, table::dead_letters,
                                table::results,  table::calls};
constexpr table message_tables[] = {table::outgoing, table::incoming, table::dead_letters};

const char* table_role(table t) {
    switch (t) {
        case table::outgoing: return "outbox: publishes not yet completed";
        case table::incoming: return "inbox: deliveries not yet handled";
        case table::dead_letters: return "undecodable or out of attempts";
        case table::results: return "command server: outcomes by message id";
        case table::calls: return "command caller: calls awaiting a result";
    }
    return "";
}

std::optional<table> parse_table(const std::string& name) {
    if (name == "outgoing" || name == "outbox") return table::outgoing;
    if (name == "incoming" || name == "inbox") return table::incoming;
    if (name == "dead_letters" || name == "dead-letters" || name == "dead") return table::dead_letters;
    if (name == "results") return table::results;
    if (name == "calls") return table::calls;
    return std::nullopt;
}

table checked_table(const std::string& name) {
    auto t = parse_table(name);
    if (!t)
        throw cli_error(exit_usage, "unknown table '" + name +
                                        "' (outgoing|outbox, incoming|inbox, dead_letters, results, calls)");
    return *t;
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

std::unique_ptr<store> open(const store_flags& f, std::string* kind) {
    if (!exists(f.dir)) throw cli_error(exit_store, "no such directory: " + f.dir);
    store_kind k;
    if (f.store_type == "lmdb") {
        k = store_kind::lmdb;
    } else if (f.store_type == "sqlite") {
        k = store_kind::sqlite;
    } else if (f.store_type == "auto") {
        if (exists(f.dir + "/xymqtt.sqlite3"))
            k = store_kind::sqlite;
        else if (exists(f.dir + "/data.mdb"))
            k = store_kind::lmdb;
        else
            throw cli_error(exit_store, "no xymqtt store in " + f.dir + " (neither data.mdb nor xymqtt.sqlite3)");
    } else {
        throw cli_error(exit_usage, "unknown store type '" + f.store_type + "' (auto, lmdb or sqlite)");
    }
    *kind = k == store_kind::lmdb ? "lmdb" : "sqlite";
    try {
        store_options o;
        o.durability = durability::fsync;
        return open_store(k, f.dir, o);
    } catch (const error& e) {
        throw cli_error(exit_store, "cannot open the store " + f.dir + ": " + e.what() +
                                        " (is the client using it still running?)");
    }
}

std::string iso_time(std::int64_t ms) {
    if (ms <= 0) return "";
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm {};
    ::gmtime_r(&secs, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return buf;
}

/// Progress of a long operation, on stderr: a line every `step` records (and a final count).
class progress {
public:
    progress(std::string what, std::size_t total) : what_(std::move(what)), total_(total), tty_(::isatty(2)) {}
    void tick() {
        ++done_;
        if (total_ < 1000) return;
        const std::size_t step = tty_ ? 100 : std::max<std::size_t>(1000, total_ / 10);
        if (done_ % step == 0 || done_ == total_) {
            if (tty_)
                std::fprintf(stderr, "\rxymqtt: %s %zu/%zu", what_.c_str(), done_, total_);
            else
                std::fprintf(stderr, "xymqtt: %s %zu/%zu\n", what_.c_str(), done_, total_);
            if (tty_ && done_ == total_) std::fputc('\n', stderr);
        }
    }

private:
    std::string what_;
    std::size_t total_;
    std::size_t done_ = 0;
    bool tty_;
};

/// The payload as JSON: decoded with a schema matching the topic, else JSON text, text, or base64.
void add_payload(ojson& out, const stored_message& m, const schema_set* schemas) {
    if (schemas) {
        const wire_format fmt = m.props.content_type == "application/x-protobuf" ? wire_format::binary : wire_format::json;
        auto try_type = [&](const pb::Descriptor* type, const char* role) {
            if (!type) return false;
            auto msg = schemas->make(type);
            if (decode(m.payload, fmt, msg.get())) return false;
            out["type"] = type->full_name();
            if (*role) out["role"] = role;
            out["payload"] = ojson::parse(to_json(*msg));
            return true;
        };
        for (const auto& s : schemas->services()) {
            for (const auto& e : s.events)
                if (topic_matches(wildcard_topic(e.topic), m.topic) && try_type(e.type, "event")) return;
            for (const auto& c : s.commands) {
                const auto base = wildcard_topic(c.topic);
                if (topic_matches(base + "/invoke", m.topic) && try_type(c.request, "invoke")) return;
                if (topic_matches(base + "/resolve", m.topic) && try_type(c.result, "resolve")) return;
                if (topic_matches(base + "/reject", m.topic)) {
                    if (fmt == wire_format::json) {
                        auto j = ojson::parse(m.payload, nullptr, false);
                        if (j.is_object()) {
                            out["role"] = "reject";
                            out["payload"] = j;
                            return;
                        }
                    }
                    if (try_type(c.reject, "reject")) return;
                }
            }
        }
    }
    if (is_valid_utf8(m.payload)) {
        auto j = ojson::parse(m.payload, nullptr, false);
        if (!j.is_discarded() && !m.payload.empty())
            out["payload"] = j;
        else
            out["payload_text"] = m.payload;
    } else {
        out["payload_base64"] = base64(m.payload);
    }
}

ojson summary(table t, const std::string& id, const std::string& value) {
    ojson out;
    out["table"] = table_name(t);
    out["id"] = id;
    try {
        const auto m = decode_record(value);
        out["topic"] = m.topic;
        out["bytes"] = m.payload.size();
        if (m.created_ms) out["created"] = iso_time(m.created_ms);
        if (!m.kind.empty()) out["kind"] = m.kind;
        if (m.attempts) out["attempts"] = m.attempts;
        if (!m.error.empty()) out["error"] = m.error;
    } catch (const storage_error& e) {
        out["bytes"] = value.size();
        out["undecodable"] = e.what();
    }
    return out;
}

ojson detail(table t, const std::string& id, const std::string& value, const schema_set* schemas) {
    ojson out;
    out["table"] = table_name(t);
    out["id"] = id;
    stored_message m;
    try {
        m = decode_record(value);
    } catch (const storage_error& e) {
        out["undecodable"] = e.what();
        out["value_base64"] = base64(value);
        return out;
    }
    out["topic"] = m.topic;
    if (!m.kind.empty()) out["kind"] = m.kind;
    if (m.created_ms) out["created"] = iso_time(m.created_ms);
    if (!m.lane.empty()) out["lane"] = m.lane;
    if (m.attempts) out["attempts"] = m.attempts;
    if (m.next_attempt_ms) out["next_attempt"] = iso_time(m.next_attempt_ms);
    if (!m.error.empty()) out["error"] = m.error;
    if (m.retain) out["retain"] = true;
    ojson props = ojson::object();
    if (!m.props.content_type.empty()) props["content_type"] = m.props.content_type;
    if (!m.props.correlation_data.empty()) {
        if (is_valid_utf8(m.props.correlation_data))
            props["correlation_data"] = m.props.correlation_data;
        else
            props["correlation_data_base64"] = base64(m.props.correlation_data);
    }
    if (!m.props.response_topic.empty()) props["response_topic"] = m.props.response_topic;
    if (m.props.expiry_seconds) props["expiry_seconds"] = *m.props.expiry_seconds;
    if (!m.props.user.empty()) {
        ojson user = ojson::array();
        for (const auto& [k, v] : m.props.user) user.push_back({k, v});
        props["user"] = user;
    }
    if (!props.empty()) out["properties"] = props;
    out["bytes"] = m.payload.size();
    add_payload(out, m, schemas);
    return out;
}

void print(const ojson& j, bool pretty) {
    const auto s = pretty ? j.dump(2) : j.dump();
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
}

}  // namespace

int run_store(const schema_flags& sf, const output_flags& of, const store_flags& f) {
    std::unique_ptr<schema_set> schemas;
    if (!sf.protos.empty() || !sf.descriptor_sets.empty()) schemas = std::make_unique<schema_set>(sf);
    std::string kind;
    auto st = open(f, &kind);
    try {
        if (f.action == "stats") {
            if (f.json) {
                ojson out;
                out["store"] = f.dir;
                out["type"] = kind;
                for (auto t : all_tables) out[table_name(t)] = st->count(t);
                print(out, of.pretty);
            } else {
                std::printf("store %s (%s)\n", f.dir.c_str(), kind.c_str());
                for (auto t : all_tables)
                    std::printf("  %-13s %8zu   %s\n", table_name(t), st->count(t), table_role(t));
            }
            return exit_ok;
        }
        if (f.action == "list") {
            std::vector<table> tables;
            if (f.table.empty())
                tables.assign(std::begin(message_tables), std::end(message_tables));
            else
                tables.push_back(checked_table(f.table));
            std::size_t n = 0;
            for (auto t : tables) {
                st->for_each(t, [&](const std::string& id, const std::string& value) {
                    if (f.limit && n >= *f.limit) return false;
                    print(summary(t, id, value), false);
                    ++n;
                    return true;
                });
            }
            std::fflush(stdout);
            return exit_ok;
        }
        if (f.action == "show") {
            if (f.id.empty()) throw cli_error(exit_usage, "show needs a record ID (see `store DIR list`)");
            std::vector<table> tables;
            if (f.table.empty())
                tables.assign(std::begin(all_tables), std::end(all_tables));
            else
                tables.push_back(checked_table(f.table));
            bool found = false;
            for (auto t : tables) {
                if (auto v = st->get(t, f.id)) {
                    print(detail(t, f.id, *v, schemas.get()), true);
                    found = true;
                }
            }
            if (!found) throw cli_error(exit_usage, "no record " + f.id + " in " + (f.table.empty() ? "the store" : f.table));
            return exit_ok;
        }
        if (f.action == "replay") {
            // A dead letter goes back to the inbox, as client::replay_dead_letter does it: handled again
            // by the client's next run (with the handler of its lane).
            if (f.id.empty() == !f.all)
                throw cli_error(exit_usage, "replay needs a dead letter ID or --all");
            std::vector<std::string> ids;
            if (f.all) {
                st->for_each(table::dead_letters, [&](const std::string& id, const std::string&) {
                    ids.push_back(id);
                    return true;
                });
            } else {
                if (!st->get(table::dead_letters, f.id)) throw cli_error(exit_usage, "no dead letter " + f.id);
                ids.push_back(f.id);
            }
            progress p("replayed", ids.size());
            std::vector<write_op> batch;
            auto flush = [&] {
                if (!batch.empty()) st->commit(batch);
                batch.clear();
            };
            for (const auto& id : ids) {
                auto v = st->get(table::dead_letters, id);
                if (!v) continue;
                stored_message m = decode_record(*v);
                m.error.clear();
                m.attempts = 0;
                m.next_attempt_ms = 0;
                batch.push_back({table::dead_letters, id, std::nullopt});
                batch.push_back({table::incoming, id, encode_record(m)});
                if (batch.size() >= 1000) flush();
                p.tick();
            }
            flush();
            note("replayed " + std::to_string(ids.size()) + " dead letter" + (ids.size() == 1 ? "" : "s") +
                 " to the inbox; the client handles them on its next run");
            return exit_ok;
        }
        if (f.action == "purge") {
            const table t = f.table.empty() ? table::dead_letters : checked_table(f.table);
            std::vector<std::string> ids;
            if (!f.id.empty()) {
                if (!st->get(t, f.id)) throw cli_error(exit_usage, "no record " + f.id + " in " + table_name(t));
                ids.push_back(f.id);
            } else {
                st->for_each(t, [&](const std::string& id, const std::string&) {
                    ids.push_back(id);
                    return true;
                });
            }
            if (!f.yes) {
                note("would delete " + std::to_string(ids.size()) + " record" + (ids.size() == 1 ? "" : "s") + " from " +
                     table_name(t) + "; add --yes to do it");
                return exit_usage;
            }
            progress p("purged", ids.size());
            std::vector<write_op> batch;
            for (const auto& id : ids) {
                batch.push_back({t, id, std::nullopt});
                if (batch.size() >= 1000) {
                    st->commit(batch);
                    batch.clear();
                }
                p.tick();
            }
            if (!batch.empty()) st->commit(batch);
            note("purged " + std::to_string(ids.size()) + " record" + (ids.size() == 1 ? "" : "s") + " from " +
                 table_name(t));
            return exit_ok;
        }
    } catch (const storage_error& e) {
        throw cli_error(exit_store, std::string("store error: ") + e.what());
    }
    throw cli_error(exit_usage, "unknown store action '" + f.action + "'");
}

}  // namespace xymqtt::cli
