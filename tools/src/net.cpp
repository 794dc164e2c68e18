// The subcommands that talk to a broker: call, publish, subscribe, serve.
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "exec.h"
#include "output_template.h"
#include "schema.h"
#include "xymqtt/client.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt::cli {

namespace {

using ojson = nlohmann::ordered_json;
using namespace std::chrono_literals;

/// A store directory that lives as long as an ad-hoc session: $TMPDIR/[xymqtt-]<client id>.XXXXXX.
class temp_store {
public:
    explicit temp_store(const std::string& client_id) {
        const char* tmp = std::getenv("TMPDIR");
        std::string name = client_id.rfind("xymqtt-", 0) == 0 ? client_id : "xymqtt-" + client_id;
        std::replace(name.begin(), name.end(), '/', '_');
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + name + ".XXXXXX";
        if (!::mkdtemp(pattern.data()))
            throw cli_error(exit_store, "cannot create a temporary store " + pattern + ": " + std::strerror(errno));
        path_ = pattern;
    }
    ~temp_store() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
        if (ec) note("warning: cannot remove the temporary store " + path_ + ": " + ec.message());
    }
    temp_store(const temp_store&) = delete;
    temp_store& operator=(const temp_store&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

/// The tool's client and, for an ad-hoc session, its temporary store, removed once the client is gone.
struct session {
    std::unique_ptr<temp_store> store;  // declared first: destroyed after the client
    std::unique_ptr<client> c;
    bool clean = false;
    client* operator->() const { return c.get(); }
    client& operator*() const { return *c; }
};

// Who the tool is at the broker. With --client-id: a durable session, resumed by the next run with that
// id. Without it, `serve` keeps a stable id per command (it must get the calls made while it restarts),
// and the other subcommands take an ad-hoc id of their own (with the pid: two terminals never take each
// other's session over) and, as nobody can name that id again, a clean session that leaves nothing
// behind. `stable_name` names the stable default id (xymqtt-<user>-<host>-<stable_name>).
session open_client(const connection_flags& f, const std::string& subcommand, const std::string& stable_name,
                    const std::function<void(client_options&)>& customize = {}) {
    client_options o;
    o.server_uri = f.broker;
    if (o.server_uri.empty()) {
        const char* env = std::getenv("XYMQTT_BROKER");
        o.server_uri = env && *env ? env : "tcp://127.0.0.1:1883";
    }
    if (f.mqtt_version != 5 && f.mqtt_version != 4)
        throw cli_error(exit_usage, "--mqtt-version must be 5 or 4");
    o.mqtt_version = f.mqtt_version;
    const bool ad_hoc_default = subcommand != "serve";
    if (f.clean && f.mqtt_version != 5)
        throw cli_error(exit_usage, "--clean needs MQTT 5: over MQTT 3.1.1 the client always asks for a persistent "
                                    "session");
    if (f.clean && !f.store.empty())
        throw cli_error(exit_usage, "--clean keeps no store: leave out --store");
    session s;
    if (!f.client_id.empty()) {
        o.client_id = f.client_id;
        s.clean = f.clean;
    } else if (f.clean || (ad_hoc_default && f.mqtt_version == 5)) {
        if (!f.store.empty())
            throw cli_error(exit_usage, "--store needs --client-id: without one the session is ad hoc and its store "
                                        "temporary");
        o.client_id = ad_hoc_client_id(subcommand);
        s.clean = true;
    } else {
        // MQTT 3.1.1 cannot have an ad-hoc session here (see --clean): the stable id, as for serve.
        o.client_id = default_client_id(stable_name);
    }
    if (s.clean) {
        s.store = std::make_unique<temp_store>(o.client_id);
        o.store_dir = s.store->path();
        // The runtime asks for clean start off and refuses a session expiry of 0: the shortest it takes
        // ends the session a second after the tool disconnects (run_subscription also unsubscribes first,
        // so nothing is queued for it meanwhile).
        o.session_expiry = std::chrono::seconds(1);
    } else {
        o.store_dir = f.store.empty() ? default_store_dir(o.client_id) : f.store;
    }
    if (f.store_type == "lmdb")
        o.store_type = store_kind::lmdb;
    else if (f.store_type == "sqlite")
        o.store_type = store_kind::sqlite;
    else
        throw cli_error(exit_usage, "unknown store type '" + f.store_type + "' (lmdb or sqlite)");
    o.username = f.username;
    if (o.username.empty())
        if (const char* env = std::getenv("XYMQTT_USERNAME")) o.username = env;
    o.password = f.password;
    if (o.password.empty())
        if (const char* env = std::getenv("XYMQTT_PASSWORD")) o.password = env;
    std::string key_password = f.key_password;
    if (key_password.empty())
        if (const char* env = std::getenv("XYMQTT_KEY_PASSWORD")) key_password = env;
    if (!f.key_password.empty() && f.key.empty()) throw cli_error(exit_usage, "--key-password needs --key");
    if (!f.cert.empty() != !f.key.empty()) throw cli_error(exit_usage, "--cert and --key go together");
    const bool tls_uri = o.server_uri.rfind("ssl://", 0) == 0 || o.server_uri.rfind("mqtts://", 0) == 0;
    if (!tls_uri && (!f.cafile.empty() || !f.capath.empty() || !f.cert.empty() || !f.key.empty()))
        throw cli_error(exit_usage, "--cafile, --capath, --cert and --key need an ssl:// or mqtts:// broker URI (" +
                                        o.server_uri + " is plain MQTT, passwords included)");
    if (tls_uri) {
        for (const auto* file : {&f.cafile, &f.capath, &f.cert, &f.key})
            if (!file->empty() && ::access(file->c_str(), R_OK) != 0)
                throw cli_error(exit_usage, "cannot read " + *file + ": " + std::strerror(errno));
        tls_options t;
        t.ca_file = f.cafile;
        t.ca_path = f.capath;
        t.cert_file = f.cert;
        t.key_file = f.key;
        if (!f.key.empty()) t.key_password = key_password;
        t.verify_host = !f.insecure_no_verify_host;
        o.tls = t;
    }
    o.connect_timeout = std::chrono::milliseconds(f.connect_timeout_ms);
    o.reconnect_max = 2000ms;
    if (f.verbose) {
        o.hooks.on_log = [](log_level level, const std::string& line) {
            static const char* names[] = {"debug", "info", "warning", "error"};
            note(std::string(names[static_cast<int>(level)]) + ": " + line);
        };
        note(std::string(s.clean ? "ad-hoc" : "durable") + " session of client " + o.client_id + ", store " +
             o.store_dir);
    } else {
        // The tool reports what fails itself, one line and an exit code; the client's log is for -v.
        o.hooks.on_log = [](log_level, const std::string&) {};
    }
    if (customize) customize(o);
    const auto id = o.client_id;
    const auto dir = o.store_dir;
    try {
        s.c = std::make_unique<client>(std::move(o));
    } catch (const storage_error& e) {
        throw cli_error(exit_store, "cannot open the store " + dir + " of client " + id + ": " + e.what() +
                                        " (another process with this client id? pass --client-id/--store)");
    } catch (const configuration_error& e) {
        throw cli_error(exit_usage, e.what());
    }
    return s;
}

/// Where a message the tool could not finish stays: the outbox of a durable session, nowhere for an
/// ad-hoc one.
std::string kept_for_next_run(const session& s, const std::string& what) {
    if (s.clean) return what + " is lost with the ad-hoc session (pass --client-id to keep it for the next run)";
    return what + " stays in the outbox of client " + s->options().client_id + " and is sent on its next run";
}

void connect_client(client& c, const connection_flags& f) {
    c.connect();
    if (!c.wait_connected(std::chrono::milliseconds(f.connect_timeout_ms))) {
        auto why = c.stats().last_error;
        const auto uri = c.options().server_uri;
        c.close();
        throw cli_error(exit_connection, "cannot connect to " + uri + " within " + std::to_string(f.connect_timeout_ms) +
                                             " ms" + (why.empty() ? std::string() : ": " + why));
    }
}

/// Waits until the subscriptions made so far are active at the broker: subscribes a probe topic of
/// its own, publishes to it and waits for it to come back (the broker handles one connection's
/// packets in order). @return false if it did not come back in time (e.g. an ACL forbids it).
bool confirm_subscriptions(client& c, std::chrono::milliseconds timeout) {
    struct state {
        std::promise<void> arrived;
        std::atomic<bool> set{false};
    };
    auto st = std::make_shared<state>();
    auto fut = st->arrived.get_future();
    const std::string topic = "xymqtt-cli/probe/" + make_message_id();
    const auto id = c.subscribe(topic, [st](const message&) {
        if (!st->set.exchange(true)) st->arrived.set_value();
    });
    bool ok = false;
    try {
        c.publish(topic, "probe");
        ok = fut.wait_for(timeout) == std::future_status::ready;
    } catch (const error&) {
    }
    c.unsubscribe(id);
    return ok;
}

/// Waits for stop() (a signal, or a handler asking to stop); false on timeout.
bool wait_for_stop(std::optional<std::chrono::milliseconds> timeout) {
    auto& s = stop();
    std::unique_lock<std::mutex> lk(s.mu);
    if (!timeout) {
        s.cv.wait(lk, [&] { return s.stop; });
        return true;
    }
    return s.cv.wait_for(lk, *timeout, [&] { return s.stop; });
}

void request_stop() {
    {
        std::lock_guard<std::mutex> lk(stop().mu);
        stop().stop = true;
    }
    notify();
}

bool stop_requested() {
    std::lock_guard<std::mutex> lk(stop().mu);
    return stop().stop;
}

void print_line(const std::string& line) {
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

std::string trim(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    std::size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
}

/// The reject as the tool prints it: status, message and (typed) details.
ojson reject_json(const schema_set& schemas, const command_decl& cmd, const command_result& r) {
    ojson out;
    out["status"] = r.status;
    out["message"] = r.message;
    if (r.format == wire_format::json) {
        auto body = ojson::parse(r.body.empty() ? std::string("{}") : r.body, nullptr, false);
        if (body.is_object()) {
            for (const char* k : {"ok", "status", "message", "messageId"}) body.erase(k);
            if (!body.empty()) {
                if (cmd.reject) {
                    auto details = schemas.make(cmd.reject);
                    if (!from_json(body.dump(), details.get(), true))
                        out["details"] = ojson::parse(to_json(*details));
                    else
                        out["details"] = body;
                } else {
                    out["details"] = body;
                }
            }
        }
    } else if (!r.body.empty()) {
        if (cmd.reject) {
            auto details = schemas.make(cmd.reject);
            if (!decode(r.body, wire_format::binary, details.get()))
                out["details"] = ojson::parse(to_json(*details));
            else
                out["details_base64"] = base64(r.body);
        } else {
            out["details_base64"] = base64(r.body);
        }
    }
    return out;
}

wire_format checked_format(const connection_flags& f) {
    const auto fmt = parse_format(f.format);
    if (fmt == wire_format::binary && f.mqtt_version != 5)
        throw cli_error(exit_usage, "--format binary needs MQTT 5 (the message id travels in MQTT 5 properties)");
    return fmt;
}

// Publishes each (topic, payload) and waits for the broker's confirmation of all, within `timeout_ms`.
void publish_all(session& c, const connection_flags& cf, const std::vector<std::pair<std::string, std::string>>& messages,
                 const publish_options& po, int timeout_ms) {
    std::vector<std::future<void>> done;
    for (auto& [topic, payload] : messages) {
        done.push_back(c->publish(topic, payload, po));
        if (cf.verbose) note("published " + topic);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (auto& d : done) {
        if (d.wait_until(deadline) != std::future_status::ready) {
            const auto kept = kept_for_next_run(c, "it");
            c->close();
            throw cli_error(exit_timeout, "publish not confirmed by the broker within " + std::to_string(timeout_ms) +
                                              " ms; " + kept);
        }
        try {
            d.get();
        } catch (const broker_error& e) {
            c->close();
            throw cli_error(exit_connection, std::string("the broker refused the publish: ") + e.what());
        }
    }
}

// What a subscriber has printed, shared with its handlers.
struct printed_lines {
    std::mutex mu;
    std::size_t printed = 0;
    std::atomic<std::uint64_t> returned{0};
    std::optional<std::size_t> limit;

    /// Prints `line` unless the count is reached (then the handler throws: the message stays in the inbox
    /// for the next run of a durable session).
    void print(const std::string& line) {
        {
            std::lock_guard<std::mutex> lk(mu);
            if (limit && printed >= *limit) throw std::runtime_error("subscriber is stopping");
            print_line(line);
            ++printed;
            if (limit && printed == *limit) request_stop();
        }
        ++returned;
    }
};

// Connects, confirms the subscriptions to `filters`, waits for the count, a stop or the timeout, and closes.
int run_subscription(session& s, const connection_flags& cf, const std::vector<std::string>& filters, printed_lines& st,
                     std::optional<int> timeout_ms, const char* what) {
    auto& c = *s;
    connect_client(c, cf);
    if (confirm_subscriptions(c, 10s)) {
        ++st.returned;
        std::string all;
        for (const auto& x : filters) all += (all.empty() ? "" : " ") + x;
        note("subscribed to " + all);
    } else {
        note("warning: could not confirm the subscriptions (a probe message did not come back)");
    }
    const bool stopped = wait_for_stop(timeout_ms ? std::optional<std::chrono::milliseconds>(*timeout_ms) : std::nullopt);
    // The last printed message is removed from the inbox before closing (else it is printed again next run).
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (c.stats().handled < st.returned && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(2ms);
    // An ad-hoc session leaves no subscription behind: the broker, which handles a connection's packets in
    // order, drops them before the disconnect, so nothing is queued for the session until it expires.
    if (s.clean)
        for (const auto& x : filters) c.unsubscribe(x);
    c.close();
    if (!stopped) {
        std::lock_guard<std::mutex> lk(st.mu);
        throw cli_error(exit_timeout, "received " + std::to_string(st.printed) + " of " +
                                          std::to_string(st.limit.value_or(0)) + " " + what + " within " +
                                          std::to_string(*timeout_ms) + " ms");
    }
    return exit_ok;
}

}  // namespace

std::string base64(const std::string& in) {
    // OpenSSL's encoder takes an int length: whole groups of 3 bytes at a time, so that only the last
    // piece is padded.
    constexpr std::size_t piece = std::size_t(3) << 20;
    std::string out;
    for (std::size_t off = 0; off < in.size(); off += piece) {
        const std::size_t n = std::min(piece, in.size() - off);
        const std::size_t at = out.size();
        out.resize(at + 4 * ((n + 2) / 3) + 1);  // EVP_EncodeBlock ends with a NUL
        const int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(&out[at]),
                                            reinterpret_cast<const unsigned char*>(in.data() + off), static_cast<int>(n));
        out.resize(at + static_cast<std::size_t>(written));
    }
    return out;
}

// -- call --------------------------------------------------------------------------------------------

int run_call(const schema_flags& sf, const connection_flags& cf, const output_flags& of, const call_flags& f) {
    schema_set schemas(sf);
    const auto [svc, cmd] = schemas.command(f.target);
    const auto tokens = parse_token_flags(f.tokens);
    check_tokens(*svc, tokens);
    const auto topic = fill_topic(*svc, cmd->topic, tokens, nullptr, nullptr);
    auto request = schemas.make(cmd->request);
    if (auto e = from_json(read_json_argument(f.json), request.get(), false))
        throw cli_error(exit_usage, "invalid JSON for " + cmd->request->full_name() + ": " + *e);
    const auto format = checked_format(cf);
    if (f.timeout_ms <= 0) throw cli_error(exit_usage, "--timeout must be positive");

    // The cancel (of --cancel-after, Ctrl-C or the timeout) is sent before the tool exits: seen by the
    // on_packet_send hook, then completed when the outbox is empty.
    struct cancel_state {
        std::mutex mu;
        std::condition_variable cv;
        bool sent = false;
    };
    auto cs = std::make_shared<cancel_state>();
    const std::string cancel_topic = topic + "/cancel";
    auto c = open_client(cf, "call", "call", [&](client_options& o) {
        o.hooks.on_packet_send = [cs, cancel_topic](const std::string& t, const std::string&) {
            if (t != cancel_topic) return;
            std::lock_guard<std::mutex> lk(cs->mu);
            cs->sent = true;
            cs->cv.notify_all();
        };
    });
    connect_client(*c, cf);
    call_options co;
    co.format = format;
    if (cmd->expiry_seconds) co.expiry = std::chrono::seconds(cmd->expiry_seconds);
    auto flush_cancel = [&] {
        {
            std::unique_lock<std::mutex> lk(cs->mu);
            if (!cs->cv.wait_for(lk, 5s, [&] { return cs->sent; })) {
                note("warning: the cancel was not sent; " + kept_for_next_run(c, "it"));
                return;
            }
        }
        if (!c->wait_outbox_empty(5s)) note("warning: the broker did not confirm the cancel");
        else if (cf.verbose) note("cancel sent");
    };
    {
        std::lock_guard<std::mutex> lk(cs->mu);
        cs->sent = false;  // a cancel left in the outbox by an earlier run does not count
    }
    auto pending = c->call_async(topic, encode(*request, format), co, std::chrono::milliseconds(f.timeout_ms));
    if (cf.verbose) note("called " + topic + " (message id " + pending.handle.message_id() + ")");

    const auto start = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> cancel_at;
    if (f.cancel_after_ms) cancel_at = start + std::chrono::milliseconds(*f.cancel_after_ms);
    auto finish_cancel = [&](const std::string& why) {
        try {
            pending.handle.cancel();
        } catch (const error& e) {
            note(std::string("cannot cancel: ") + e.what());
        }
        flush_cancel();
        c->close();
        throw cli_error(exit_cancelled, why);
    };
    for (;;) {
        auto step = 20ms;
        if (pending.result.wait_for(step) == std::future_status::ready) break;
        if (stop_requested()) finish_cancel("interrupted: call " + pending.handle.message_id() + " cancelled");
        if (cancel_at && std::chrono::steady_clock::now() >= *cancel_at)
            finish_cancel("call " + pending.handle.message_id() + " cancelled after " +
                          std::to_string(*f.cancel_after_ms) + " ms");
    }
    command_result r;
    try {
        r = pending.result.get();
    } catch (const timeout_error&) {
        flush_cancel();  // the runtime cancelled the call: let the cancel go out
        c->close();
        throw cli_error(exit_timeout, "no result from " + topic + " within " + std::to_string(f.timeout_ms) +
                                          " ms (call cancelled)");
    } catch (const client_closed& e) {
        throw cli_error(exit_connection, e.what());
    }
    c->close();
    if (r.ok) {
        auto result = schemas.make(cmd->result);
        if (auto e = decode(r.body, r.format, result.get()))
            throw cli_error(exit_internal, "cannot decode the result as " + cmd->result->full_name() + ": " + *e);
        print_line(to_json(*result, of.pretty));
        return exit_ok;
    }
    const auto out = reject_json(schemas, *cmd, r);
    print_line(of.pretty ? out.dump(2) : out.dump());
    note("rejected: " + std::to_string(r.status) + (r.message.empty() ? "" : " " + r.message));
    return exit_rejected;
}

// -- publish -----------------------------------------------------------------------------------------

int run_publish(const schema_flags& sf, const connection_flags& cf, const output_flags&, const publish_flags& f) {
    schema_set schemas(sf);
    const auto [svc, events] = schemas.events(f.target);
    if (events.size() != 1) throw cli_error(exit_usage, "publish needs one event, not 'all'");
    const auto* ev = events[0];
    const auto tokens = parse_token_flags(f.tokens);
    check_tokens(*svc, tokens, events);
    const auto format = parse_format(cf.format);

    // Every event is checked before anything is published: `--json -` reads one JSON object per line.
    std::vector<std::string> texts;
    if (f.json == "-") {
        for (std::string line; std::getline(std::cin, line);)
            if (!trim(line).empty()) texts.push_back(line);
    } else {
        texts.push_back(read_json_argument(f.json));
    }
    std::vector<std::pair<std::string, std::string>> messages;  // topic, payload
    for (std::size_t i = 0; i < texts.size(); ++i) {
        auto event = schemas.make(ev->type);
        if (auto e = from_json(texts[i], event.get(), false))
            throw cli_error(exit_usage, "invalid JSON for " + ev->type->full_name() +
                                            (texts.size() > 1 ? " (line " + std::to_string(i + 1) + ")" : "") + ": " + *e);
        messages.emplace_back(fill_topic(*svc, ev->topic, tokens, ev->type, event.get()), encode(*event, format));
    }

    auto c = open_client(cf, "publish", "publish");
    connect_client(*c, cf);
    publish_options po;
    po.props.content_type = format == wire_format::json ? "application/json" : "application/x-protobuf";
    po.retain = f.retain;
    publish_all(c, cf, messages, po, f.timeout_ms);
    c->close();
    return exit_ok;
}

// -- subscribe ---------------------------------------------------------------------------------------

int run_subscribe(const schema_flags& sf, const connection_flags& cf, const output_flags& of,
                  const subscribe_flags& f) {
    schema_set schemas(sf);
    const auto [svc, events] = schemas.events(f.target);
    const auto tokens = parse_token_flags(f.tokens);
    check_tokens(*svc, tokens, events);
    const auto fallback = parse_format(cf.format);
    std::optional<output_template> templ;
    if (of.output_template) templ.emplace(*of.output_template, true);
    if (f.count && *f.count == 0) return exit_ok;

    auto c = open_client(cf, "subscribe", "subscribe");
    printed_lines st;
    st.limit = f.count;
    std::vector<std::string> filters;
    for (const auto* ev : events) {
        auto filter = fill_topic(*svc, ev->topic, tokens, ev->type, nullptr);
        filters.push_back(filter);
        c->subscribe(filter, [&st, ev, &schemas, fallback, &templ, pretty = of.pretty](const message& m) {
            auto event = schemas.make(ev->type);
            wire_format fmt = fallback;
            if (m.props.content_type == "application/json") fmt = wire_format::json;
            if (m.props.content_type == "application/x-protobuf") fmt = wire_format::binary;
            if (auto e = decode(m.payload, fmt, event.get())) {
                note("cannot decode " + m.topic + " as " + ev->type->full_name() + " (moved to dead letters): " + *e);
                throw parse_error(*e);
            }
            const auto payload = to_json(*event);
            ojson line;
            line["topic"] = m.topic;
            line["event"] = ev->name;
            line["payload"] = ojson::parse(payload);
            auto json = pretty ? line.dump(2) : line.dump();
            st.print(templ ? templ->render({&m, ev->name, payload, std::move(json)}) : json);
        });
    }
    return run_subscription(c, cf, filters, st, f.timeout_ms, "events");
}

// -- pub and sub: schema-free, for debugging ---------------------------------------------------------

int run_pub(const connection_flags& cf, const raw_publish_flags& f) {
    try {
        validate_topic_name(f.topic);
    } catch (const invalid_topic& e) {
        throw cli_error(exit_usage, e.what());
    }
    std::vector<std::pair<std::string, std::string>> messages;  // topic, payload
    if (f.message == "-") {
        for (std::string line; std::getline(std::cin, line);) messages.emplace_back(f.topic, line);
    } else if (!f.message.empty() && f.message[0] == '@') {
        std::ifstream in(f.message.substr(1), std::ios::binary);
        if (!in) throw cli_error(exit_usage, "cannot read " + f.message.substr(1));
        std::stringstream bytes;
        bytes << in.rdbuf();
        messages.emplace_back(f.topic, bytes.str());
    } else {
        messages.emplace_back(f.topic, f.message);
    }
    auto c = open_client(cf, "pub", "pub");
    connect_client(*c, cf);
    publish_options po;
    po.retain = f.retain;
    po.props.content_type = f.content_type;
    publish_all(c, cf, messages, po, f.timeout_ms);
    c->close();
    return exit_ok;
}

int run_sub(const connection_flags& cf, const output_flags& of, const raw_subscribe_flags& f) {
    try {
        validate_topic_filter(f.filter);
    } catch (const invalid_topic& e) {
        throw cli_error(exit_usage, e.what());
    }
    std::optional<output_template> templ;
    if (of.output_template) templ.emplace(*of.output_template, false);
    if (f.count && *f.count == 0) return exit_ok;
    auto c = open_client(cf, "sub", "sub");
    printed_lines st;
    st.limit = f.count;
    c->subscribe(f.filter, [&st, &templ, pretty = of.pretty](const message& m) {
        ojson line;
        line["topic"] = m.topic;
        // Text as it is; anything else (protobuf, say) in base64.
        if (is_valid_utf8(m.payload))
            line["payload"] = m.payload;
        else
            line["payload_base64"] = base64(m.payload);
        if (!m.props.content_type.empty()) line["content_type"] = m.props.content_type;
        auto json = pretty ? line.dump(2) : line.dump();
        st.print(templ ? templ->render({&m, {}, m.payload, std::move(json)}) : json);
    });
    return run_subscription(c, cf, {f.filter}, st, f.timeout_ms, "messages");
}

// -- serve -------------------------------------------------------------------------------------------

int run_serve(const schema_flags& sf, const connection_flags& cf, const output_flags&, const serve_flags& f) {
    schema_set schemas(sf);
    const auto [svc, cmd] = schemas.command(f.target);
    const auto tokens = parse_token_flags(f.tokens);
    check_tokens(*svc, tokens);
    const auto topic = fill_topic(*svc, cmd->topic, tokens, nullptr, nullptr);
    if (f.exec.empty()) throw cli_error(exit_usage, "--exec CMD is required");
    if (f.count && *f.count == 0) return exit_ok;

    // The stable default id names the command (its topic): serves of different commands do not collide.
    auto c = open_client(cf, "serve", "serve-" + topic);
    struct shared {
        std::mutex mu;
        std::size_t calls = 0;
        std::atomic<std::uint64_t> returned{0};
    };
    auto st = std::make_shared<shared>();
    const auto* command = cmd;
    const auto* service = svc;
    command_options co;
    co.group = cmd->group;
    c->command_register(topic, [&schemas, command, service, st, f, topic](const invocation& inv, call_context& ctx) -> std::string {
        struct counted {
            std::shared_ptr<shared> st;
            std::optional<std::size_t> limit;
            ~counted() {
                ++st->returned;
                std::lock_guard<std::mutex> lk(st->mu);
                if (limit && ++st->calls == *limit) request_stop();
            }
        } count_on_exit{st, f.count};
        auto log = [&](const std::string& what) {
            if (!f.quiet) note("call " + inv.message_id + ": " + what);
        };
        auto request = schemas.make(command->request);
        if (auto e = decode(inv.body, inv.format, request.get())) {
            log("rejected 400: undecodable request");
            throw parse_error("invalid " + command->request->full_name() + ": " + *e);
        }
        auto control = std::make_shared<exec_control>();
        ctx.on_cancel([control] { control->terminate(); });
        std::map<std::string, std::string> env{
            {"XYMQTT_COMMAND", topic},
            {"XYMQTT_SERVICE", service->full_name},
            {"XYMQTT_COMMAND_NAME", command->name},
            {"XYMQTT_MESSAGE_ID", inv.message_id},
            {"XYMQTT_ATTEMPT", std::to_string(inv.attempt)},
            {"XYMQTT_FORMAT", inv.format == wire_format::json ? "json" : "binary"},
        };
        exec_result r;
        try {
            r = run_shell(f.exec, to_json(*request) + "\n", env, *control,
                          f.exec_timeout_ms ? std::optional<std::chrono::milliseconds>(*f.exec_timeout_ms) : std::nullopt);
        } catch (const std::exception& e) {
            log(std::string("rejected 500: ") + e.what());
            throw command_error(500, e.what());
        }
        // What the command says on stderr is passed on (for a reject it is the message instead).
        if (!f.quiet && (r.exit_code == 0 || ctx.cancelled() || r.timed_out) && !r.err.empty()) {
            std::fwrite(r.err.data(), 1, r.err.size(), stderr);
            if (r.err.back() != '\n') std::fputc('\n', stderr);
            std::fflush(stderr);
        }
        if (ctx.cancelled()) {
            log("cancelled");
            throw command_error(499, "cancelled");
        }
        if (r.timed_out) {
            log("rejected 504: timed out");
            throw command_error(504, "command timed out after " + std::to_string(*f.exec_timeout_ms) + " ms");
        }
        if (r.exit_code == 0) {
            auto result = schemas.make(command->result);
            const auto out = trim(r.out);
            if (auto e = from_json(out.empty() ? "{}" : out, result.get(), true)) {
                log("rejected 500: output is not a " + command->result->full_name());
                throw command_error(500, "output of the command is not a valid " + command->result->full_name() + ": " + *e);
            }
            log("resolved");
            return encode(*result, inv.format);
        }
        // Rejected: the status/message/details of a JSON object on stdout, else 500 with stderr.
        int status = 500;
        std::string message = trim(r.err);
        if (message.empty()) message = "command exited with status " + std::to_string(r.exit_code);
        std::string body;
        auto obj = ojson::parse(trim(r.out), nullptr, false);
        if (obj.is_object()) {
            if (obj.contains("status") && obj["status"].is_number_integer()) status = obj["status"].get<int>();
            if (obj.contains("message") && obj["message"].is_string()) message = obj["message"].get<std::string>();
            if (obj.contains("details") && obj["details"].is_object()) {
                if (command->reject) {
                    auto details = schemas.make(command->reject);
                    if (auto e = from_json(obj["details"].dump(), details.get(), true))
                        note("call " + inv.message_id + ": details are not a " + command->reject->full_name() + ": " + *e);
                    else
                        body = encode(*details, inv.format);
                } else if (inv.format == wire_format::json) {
                    body = obj["details"].dump();
                }
            }
        }
        log("rejected " + std::to_string(status) + ": " + message);
        throw command_error(status, message, body);
    }, co);
    connect_client(*c, cf);
    if (confirm_subscriptions(*c, 10s)) {
        ++st->returned;
        note("serving " + topic + (co.group.empty() ? "" : " (group " + co.group + ")"));
    } else {
        note("warning: serving " + topic + ", but could not confirm the subscription (a probe message did not come back)");
    }
    wait_for_stop(std::nullopt);
    // Outcomes of finished calls are published before the tool exits.
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (c->stats().handled < st->returned && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(2ms);
    c->wait_outbox_empty(5s);
    if (c.clean) c->command_unregister(topic);  // an ad-hoc session leaves no subscription behind
    c->close();
    return exit_ok;
}

}  // namespace xymqtt::cli
