// xymqtt: grpcurl for xymqtt contracts. See docs/cli.md.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <pwd.h>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include "cli.h"
#include "xymqtt/exception.h"

namespace xymqtt::cli {

stop_state& stop() {
    static stop_state s;
    return s;
}

void notify() { stop().cv.notify_all(); }

void install_stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread([set] {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) return;
        {
            std::lock_guard<std::mutex> lk(stop().mu);
            stop().stop = true;
            stop().signal = sig;
        }
        notify();
        // A second signal ends the tool at once.
        if (sigwait(&set, &sig) == 0) std::_Exit(128 + sig);
    }).detach();
}

void note(const std::string& line) {
    const std::string s = "xymqtt: " + line + "\n";
    std::fwrite(s.data(), 1, s.size(), stderr);
    std::fflush(stderr);
}

std::string read_json_argument(const std::string& arg) {
    if (arg == "-") {
        std::stringstream buf;
        buf << std::cin.rdbuf();
        return buf.str();
    }
    if (!arg.empty() && arg[0] == '@') {
        std::ifstream in(arg.substr(1));
        if (!in) throw cli_error(exit_usage, "cannot read " + arg.substr(1));
        std::stringstream buf;
        buf << in.rdbuf();
        return buf.str();
    }
    return arg;
}

std::map<std::string, std::string> parse_token_flags(const std::vector<std::string>& flags) {
    std::map<std::string, std::string> out;
    for (const auto& f : flags) {
        const auto eq = f.find('=');
        if (eq == std::string::npos || eq == 0)
            throw cli_error(exit_usage, "--token '" + f + "' is not name=value");
        const auto name = f.substr(0, eq);
        if (out.count(name)) throw cli_error(exit_usage, "token '" + name + "' given twice");
        out[name] = f.substr(eq + 1);
    }
    return out;
}

namespace {
std::string sanitize(const std::string& s) {
    std::string out;
    for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '_';
    return out;
}
}  // namespace

std::string default_client_id(const std::string& name) {
    std::string user;
    if (const auto* pw = ::getpwuid(::getuid())) user = pw->pw_name;
    if (user.empty())
        if (const char* u = std::getenv("USER")) user = u;
    if (user.empty()) user = std::to_string(::getuid());
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    return "xymqtt-" + sanitize(user) + "-" + sanitize(host) + "-" + sanitize(name);
}

std::string ad_hoc_client_id(const std::string& name) {
    return default_client_id(name) + "-" + std::to_string(::getpid());
}

std::string default_store_dir(const std::string& client_id) {
    std::string base;
    if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) {
        base = x;
    } else {
        std::string home;
        if (const char* h = std::getenv("HOME"); h && *h)
            home = h;
        else if (const auto* pw = ::getpwuid(::getuid()))
            home = pw->pw_dir;
        base = home + "/.local/state";
    }
    // The runtime creates the last level (0700); the levels above must exist.
    for (const auto& dir : {base, base + "/xymqtt"}) {
        std::string cur;
        for (std::size_t i = 0; i <= dir.size(); ++i) {
            if (i == dir.size() || (dir[i] == '/' && i > 0)) {
                cur = dir.substr(0, i);
                ::mkdir(cur.c_str(), 0700);
            }
        }
    }
    return base + "/xymqtt/" + client_id;
}

}  // namespace xymqtt::cli

using namespace xymqtt::cli;

namespace {

void add_schema_flags(CLI::App* sub, schema_flags& sf, bool required_hint = true) {
    const char* g = "Schemas";
    sub->add_option("-s,--schema", sf.protos,
                    required_hint ? "A .proto file with xymqtt services (repeatable)"
                                  : "A .proto file, to decode payloads (repeatable)")
        ->type_name("FILE.proto")
        ->allow_extra_args(false)
        ->group(g);
    sub->add_option("-I,--import-path", sf.import_paths,
                    "Directory to find imports in (repeatable); also $XYMQTT_SCHEMA_PATH, then the xymqtt and "
                    "protobuf schema directories")
        ->type_name("DIR")
        ->allow_extra_args(false)
        ->group(g);
    sub->add_option("--descriptor-set", sf.descriptor_sets,
                    "A FileDescriptorSet from `protoc --include_imports -o FILE.pb` (instead of --schema)")
        ->type_name("FILE.pb")
        ->allow_extra_args(false)
        ->group(g);
}

void add_connection_flags(CLI::App* sub, connection_flags& cf) {
    const char* g = "Connection";
    sub->add_option("-b,--broker", cf.broker, "Broker URI (tcp://, ssl://, mqtt://, mqtts://); default $XYMQTT_BROKER or tcp://127.0.0.1:1883")
        ->type_name("URI")
        ->group(g);
    const bool serve = sub->get_name() == "serve";
    sub->add_option("--client-id", cf.client_id,
                    serve ? "MQTT client id; the durable session and the store belong to it (default: "
                            "xymqtt-<user>-<host>-serve-<command topic>, the same at each run)"
                          : "MQTT client id of a durable session, resumed by the next run with this id (default: an "
                            "ad-hoc session, as --clean, under xymqtt-<user>-<host>-<subcommand>-<pid>)")
        ->type_name("ID")
        ->group(g);
    sub->add_flag("--clean", cf.clean,
                  "Ad-hoc session that leaves nothing behind: clean at the broker, the store in a temporary "
                  "directory removed at exit (MQTT 5)")
        ->group(g);
    sub->add_option("--store", cf.store,
                    "Store directory of a durable session (default $XDG_STATE_HOME or ~/.local/state, "
                    "/xymqtt/<client-id>)")
        ->type_name("DIR")
        ->group(g);
    sub->add_option("--store-type", cf.store_type, "lmdb or sqlite")->capture_default_str()->group(g);
    sub->add_option("-u,--username", cf.username, "User name (also $XYMQTT_USERNAME)")->group(g);
    sub->add_option("--password", cf.password,
                    "Password; prefer $XYMQTT_PASSWORD, which stays out of the shell history")
        ->group(g);
    // TLS flags are spelled as mosquitto_pub's where it has them.
    sub->add_option("--cafile", cf.cafile, "TLS: PEM file of trusted CAs (default: the system's)")->type_name("FILE")->group(g);
    sub->add_option("--capath", cf.capath,
                    "TLS: directory of trusted CAs, named by hash as `openssl rehash` makes them (default: the system's)")
        ->type_name("DIR")
        ->group(g);
    sub->add_option("--cert", cf.cert, "TLS: client certificate (PEM)")->type_name("FILE")->group(g);
    sub->add_option("--key", cf.key, "TLS: client private key (PEM)")->type_name("FILE")->group(g);
    sub->add_option("--key-password", cf.key_password,
                    "TLS: password of an encrypted --key; prefer $XYMQTT_KEY_PASSWORD, which stays out of the "
                    "shell history")
        ->group(g);
    sub->add_flag("--insecure,--insecure-no-verify-host", cf.insecure_no_verify_host,
                  "TLS: do not check that the certificate names the host")
        ->group(g);
    sub->add_option("--mqtt-version", cf.mqtt_version, "5 or 4 (3.1.1)")->capture_default_str()->check(CLI::IsMember({5, 4}))->group(g);
    sub->add_option("--connect-timeout", cf.connect_timeout_ms, "Milliseconds to wait for the connection")
        ->capture_default_str()
        ->type_name("MS")
        ->group(g);
    sub->add_option("-f,--format", cf.format, "Payload encoding: json, or binary (protobuf, as the generated stubs)")
        ->capture_default_str()
        ->check(CLI::IsMember({"json", "binary"}))
        ->group(g);
    sub->add_flag("-v,--verbose", cf.verbose, "Log the client's activity to stderr")->group(g);
}

void add_pretty(CLI::App* sub, output_flags& of) { sub->add_flag("--pretty", of.pretty, "Indent JSON output"); }

void add_template(CLI::App* sub, output_flags& of, bool events) {
    sub->add_option("-F,--template", of.output_template,
                    std::string("Print each message as TEMPLATE (then a newline) instead of JSON: %t topic, %p payload") +
                        (events ? " (the event as JSON), %e event name" : " (as it is)") +
                        ", %b payload in base64, %x hex, %l length, %C content type, %m delivery id, %j the JSON "
                        "line, %% a %; escapes \\n \\t \\r \\e \\0 \\\\")
        ->type_name("TEMPLATE");
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    CLI::App app{"xymqtt: call, publish, subscribe and serve the commands and events of xymqtt contracts, and "
                 "inspect client stores. Schemas are read at run time (.proto files or descriptor sets)."};
    app.name("xymqtt");
    app.require_subcommand(1);
    app.set_version_flag("--version", XYMQTT_CLI_VERSION);
    app.footer("Exit codes: 0 ok, 1 usage/input, 2 rejected, 3 timeout, 4 cancelled, 5 connection, 6 store, "
               "7 schema, 10 internal. See docs/cli.md.");

    schema_flags sf;
    connection_flags cf;
    output_flags of;

    call_flags callf;
    auto* call = app.add_subcommand("call", "Call a command and print its result (or reject) as JSON");
    call->add_option("target", callf.target, "<Service>.<command>")->required();
    call->add_option("-j,--json", callf.json, "Request as JSON; '-' reads stdin, '@FILE' a file")->capture_default_str();
    call->add_option("-t,--token", callf.tokens, "Topic token, name=value (repeatable)")->type_name("NAME=VALUE")->allow_extra_args(false);
    call->add_option("--timeout", callf.timeout_ms, "Milliseconds to wait for the result (then the call is cancelled)")
        ->capture_default_str()
        ->type_name("MS");
    call->add_option("--cancel-after", callf.cancel_after_ms, "Cancel the call after this many milliseconds")->type_name("MS");
    add_schema_flags(call, sf);
    add_connection_flags(call, cf);
    add_pretty(call, of);

    publish_flags pubf;
    auto* publish = app.add_subcommand("publish", "Publish an event (or one per line of stdin with --json -)");
    publish->add_option("target", pubf.target, "<Service>.<event>")->required();
    publish->add_option("-j,--json", pubf.json, "Event as JSON; '-' reads one event per line from stdin, '@FILE' a file")
        ->capture_default_str();
    publish->add_option("-t,--token", pubf.tokens, "Topic token, name=value (repeatable)")->type_name("NAME=VALUE")->allow_extra_args(false);
    publish->add_option("--timeout", pubf.timeout_ms, "Milliseconds to wait for the broker's confirmation")
        ->capture_default_str()
        ->type_name("MS");
    publish->add_flag("--retain", pubf.retain, "Publish as a retained message");
    add_schema_flags(publish, sf);
    add_connection_flags(publish, cf);

    subscribe_flags subf;
    auto* subscribe = app.add_subcommand("subscribe", "Print events as JSON lines: {\"topic\",\"event\",\"payload\"}");
    subscribe->add_option("target", subf.target, "<Service>.<event>, or <Service>.all")->required();
    subscribe->add_option("-t,--token", subf.tokens,
                          "Topic token, name=value (repeatable); field tokens of events narrow the subscription")
        ->type_name("NAME=VALUE")->allow_extra_args(false);
    subscribe->add_option("-n,--count", subf.count, "Exit after this many events");
    subscribe->add_option("--timeout", subf.timeout_ms, "Exit with code 3 if --count events did not arrive in time")
        ->type_name("MS");
    add_schema_flags(subscribe, sf);
    add_connection_flags(subscribe, cf);
    add_pretty(subscribe, of);
    add_template(subscribe, of, true);

    raw_publish_flags rpubf;
    auto* pub = app.add_subcommand("pub", "Schema-free: publish raw payloads to a topic (for debugging)");
    pub->add_option("topic", rpubf.topic, "Topic name")->required();
    pub->add_option("-m,--message", rpubf.message,
                    "Payload; '-' publishes one message per line of stdin, '@FILE' a file's bytes")
        ->required();
    pub->add_option("--content-type", rpubf.content_type, "MQTT 5 content type (e.g. application/json)");
    pub->add_option("--timeout", rpubf.timeout_ms, "Milliseconds to wait for the broker's confirmation")
        ->capture_default_str()
        ->type_name("MS");
    pub->add_flag("--retain", rpubf.retain, "Publish as a retained message");
    add_connection_flags(pub, cf);

    raw_subscribe_flags rsubf;
    auto* sub = app.add_subcommand(
        "sub", "Schema-free: print the messages of a topic filter as JSON lines {\"topic\",\"payload\"} "
               "(payload_base64 when not UTF-8 text)");
    sub->add_option("filter", rsubf.filter, "Topic filter (+ and # allowed)")->required();
    sub->add_option("-n,--count", rsubf.count, "Exit after this many messages");
    sub->add_option("--timeout", rsubf.timeout_ms, "Exit with code 3 if --count messages did not arrive in time")
        ->type_name("MS");
    add_connection_flags(sub, cf);
    add_pretty(sub, of);
    add_template(sub, of, false);

    serve_flags servef;
    auto* serve = app.add_subcommand(
        "serve",
        "Answer calls of a command by running a shell command: request JSON on its stdin, result JSON from its "
        "stdout; a non-zero exit rejects (status 500 and its stderr, or {\"status\",\"message\",\"details\"} on stdout)");
    serve->add_option("target", servef.target, "<Service>.<command>")->required();
    serve->add_option("-e,--exec", servef.exec, "Shell command (run by /bin/sh -c) for each call")->required();
    serve->add_option("-t,--token", servef.tokens, "Topic token, name=value (repeatable)")->type_name("NAME=VALUE")->allow_extra_args(false);
    serve->add_option("-n,--count", servef.count, "Exit after answering this many calls");
    serve->add_option("--exec-timeout", servef.exec_timeout_ms, "Kill the command and reject with 504 after this long")
        ->type_name("MS");
    serve->add_flag("-q,--quiet", servef.quiet, "Do not log each call to stderr");
    add_schema_flags(serve, sf);
    add_connection_flags(serve, cf);

    describe_flags descf;
    auto* describe = app.add_subcommand("describe", "List services with their tokens, events and commands (topics, types); "
                                                    "or show a service, <Service>.<member> or message type");
    describe->add_option("name", descf.name, "A service, <Service>.<command|event>, or a message type");
    describe->add_flag("--json", descf.json, "Machine-readable output (services only)");
    add_schema_flags(describe, sf);

    store_flags storef;
    auto* store = app.add_subcommand("store", "Inspect and repair a client's store (the client must not be running)");
    store->add_option("dir", storef.dir, "Store directory (a client's --store)")->required();
    store->add_option("--store-type", storef.store_type, "auto, lmdb or sqlite")->capture_default_str();
    add_schema_flags(store, sf, false);
    store->require_subcommand(1);
    store->fallthrough();
    auto* stats = store->add_subcommand("stats", "Number of records per table");
    stats->add_flag("--json", storef.json, "JSON output");
    auto* list = store->add_subcommand("list", "One JSON line per record (default tables: outgoing, incoming, dead_letters)");
    list->add_option("--table", storef.table, "outgoing|outbox, incoming|inbox, dead_letters, results, calls");
    list->add_option("--limit", storef.limit, "At most this many records");
    auto* show = store->add_subcommand("show", "One record in full, payload decoded (with --schema: as its message type)");
    show->add_option("id", storef.id, "Record id")->required();
    show->add_option("--table", storef.table, "Only this table");
    auto* replay = store->add_subcommand("replay", "Move dead letters back to the inbox (handled on the client's next run)");
    replay->add_option("id", storef.id, "Dead letter id");
    replay->add_flag("--all", storef.all, "Every dead letter");
    auto* purge = store->add_subcommand("purge", "Delete records (default table: dead_letters); needs --yes");
    purge->add_option("id", storef.id, "Only this record");
    purge->add_option("--table", storef.table, "outgoing|outbox, incoming|inbox, dead_letters, results, calls");
    purge->add_flag("-y,--yes", storef.yes, "Really delete");
    for (auto* sub : {stats, list, show, replay, purge}) sub->fallthrough();

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? exit_ok : exit_usage;
    }

    install_stop_signals();
    try {
        if (*call) return run_call(sf, cf, of, callf);
        if (*publish) return run_publish(sf, cf, of, pubf);
        if (*subscribe) return run_subscribe(sf, cf, of, subf);
        if (*pub) return run_pub(cf, rpubf);
        if (*sub) return run_sub(cf, of, rsubf);
        if (*serve) return run_serve(sf, cf, of, servef);
        if (*describe) {
            xymqtt::cli::schema_flags s = sf;
            return run_describe(s, of, descf);
        }
        if (*store) {
            for (auto* sub : {stats, list, show, replay, purge})
                if (*sub) storef.action = sub->get_name();
            return run_store(sf, of, storef);
        }
    } catch (const cli_error& e) {
        note(e.what());
        return e.code();
    } catch (const xymqtt::storage_error& e) {
        note(std::string("store error: ") + e.what());
        return exit_store;
    } catch (const xymqtt::invalid_topic& e) {
        note(e.what());
        return exit_usage;
    } catch (const xymqtt::configuration_error& e) {
        note(e.what());
        return exit_usage;
    } catch (const xymqtt::broker_error& e) {
        note(std::string("broker error: ") + e.what());
        return exit_connection;
    } catch (const std::exception& e) {
        note(std::string("error: ") + e.what());
        return exit_internal;
    }
    return exit_usage;
}
