// Shared declarations of the xymqtt command-line tool: exit codes, errors, flags and the subcommands.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace xymqtt::cli {

/// Exit codes (documented in docs/cli.md).
enum exit_code : int {
    exit_ok = 0,
    exit_usage = 1,       ///< Bad flags, unknown service/command/event, missing or bad token, bad JSON input.
    exit_rejected = 2,    ///< `call`: the server rejected the call.
    exit_timeout = 3,     ///< No result / no publish confirmation in time.
    exit_cancelled = 4,   ///< `call --cancel-after` cancelled the call, or interrupted (Ctrl-C).
    exit_connection = 5,  ///< Cannot connect to the broker, or the broker refused an operation.
    exit_store = 6,       ///< The store cannot be opened or used (e.g. in use by another process).
    exit_schema = 7,      ///< Schemas cannot be loaded (parse errors, missing files, bad xymqtt options).
    exit_internal = 10,   ///< Anything unexpected.
};

/// An error that ends the tool with a one-line message and an exit code.
class cli_error : public std::runtime_error {
public:
    cli_error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

/// Where the schemas come from.
struct schema_flags {
    std::vector<std::string> protos;
    std::vector<std::string> import_paths;
    std::vector<std::string> descriptor_sets;
};

/// Broker, identity, store and encoding.
struct connection_flags {
    std::string broker;
    std::string client_id;
    std::string store;
    std::string store_type = "lmdb";
    std::string username;
    std::string password;
    bool clean = false;  ///< An ad-hoc session: clean at the broker, a temporary store.
    std::string cafile, capath, cert, key, key_password;
    bool insecure_no_verify_host = false;
    std::string format = "json";
    int mqtt_version = 5;
    int connect_timeout_ms = 10000;
    bool verbose = false;
};

/// Output options.
struct output_flags {
    bool pretty = false;
    std::optional<std::string> output_template;  ///< subscribe/sub `-F`: one line per message.
};

struct call_flags {
    std::string target;
    std::string json = "{}";
    std::vector<std::string> tokens;
    int timeout_ms = 30000;
    std::optional<int> cancel_after_ms;
};

struct publish_flags {
    std::string target;
    std::string json = "{}";
    std::vector<std::string> tokens;
    int timeout_ms = 10000;
    bool retain = false;
};

struct subscribe_flags {
    std::string target;
    std::vector<std::string> tokens;
    std::optional<std::size_t> count;
    std::optional<int> timeout_ms;
};

struct raw_publish_flags {
    std::string topic;
    std::string message;
    std::string content_type;
    int timeout_ms = 10000;
    bool retain = false;
};

struct raw_subscribe_flags {
    std::string filter;
    std::optional<std::size_t> count;
    std::optional<int> timeout_ms;
};

struct serve_flags {
    std::string target;
    std::string exec;
    std::vector<std::string> tokens;
    std::optional<std::size_t> count;
    std::optional<int> exec_timeout_ms;
    bool quiet = false;
};

struct describe_flags {
    std::string name;
    bool json = false;
};

struct store_flags {
    std::string dir;
    std::string store_type = "auto";
    std::string action;  // stats | list | show | replay | purge
    std::string id;
    std::string table;
    bool all = false;
    bool yes = false;
    bool json = false;
    std::optional<std::size_t> limit;
};

int run_call(const schema_flags&, const connection_flags&, const output_flags&, const call_flags&);
int run_pub(const connection_flags&, const raw_publish_flags&);
int run_sub(const connection_flags&, const output_flags&, const raw_subscribe_flags&);
int run_publish(const schema_flags&, const connection_flags&, const output_flags&, const publish_flags&);
int run_subscribe(const schema_flags&, const connection_flags&, const output_flags&, const subscribe_flags&);
int run_serve(const schema_flags&, const connection_flags&, const output_flags&, const serve_flags&);
int run_describe(const schema_flags&, const output_flags&, const describe_flags&);
int run_store(const schema_flags&, const output_flags&, const store_flags&);

/// Reads `--json` text: `-` = stdin, `@FILE` = the file, anything else as is.
std::string read_json_argument(const std::string& arg);
/// Standard base64 with padding (payloads that are not UTF-8 text, in JSON output).
std::string base64(const std::string& in);

/// Parses `name=value` token flags. @throw cli_error (usage)
std::map<std::string, std::string> parse_token_flags(const std::vector<std::string>& flags);

/// A stable client id per user and host: xymqtt-<user>-<host>-<name> (`name` sanitized).
std::string default_client_id(const std::string& name);
/// An ad-hoc client id of this process: xymqtt-<user>-<host>-<name>-<pid>.
std::string ad_hoc_client_id(const std::string& name);
/// The default store directory of a client id: $XDG_STATE_HOME/xymqtt/<id> or ~/.local/state/xymqtt/<id>.
std::string default_store_dir(const std::string& client_id);

/// Stop requests (SIGINT / SIGTERM) and a wake-up for waiting threads.
struct stop_state {
    std::mutex mu;
    std::condition_variable cv;
    bool stop = false;
    int signal = 0;
};
stop_state& stop();
/// Blocks SIGINT/SIGTERM in every thread and handles them on a thread of their own (sets stop()).
void install_stop_signals();
/// Wakes threads waiting on stop().cv.
void notify();

/// Prints a line to stderr, prefixed `xymqtt: `.
void note(const std::string& line);

}  // namespace xymqtt::cli
