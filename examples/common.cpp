#include "common.h"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <random>

#include <xymqtt/topic.h>

namespace example {

void add_common_flags(CLI::App& app, common_flags& flags) {
    app.add_option("--broker", flags.broker, "MQTT broker URI")->capture_default_str();
    app.add_option("--client-id", flags.client_id,
                   "Stable id of this application at the broker (names its session)")
        ->capture_default_str();
    app.add_option("--store", flags.store, "Directory of the durable store (default ./.xymqtt/<client-id>)");
    app.add_option("--format", flags.format, "Wire format of what this program sends")
        ->check(CLI::IsMember({"json", "binary"}))
        ->capture_default_str();
    app.add_option("--durability", flags.durability,
                   "fsync: synced to disk before anything is acknowledged (survives power loss); "
                   "process: survives a killed process, not a power loss")
        ->check(CLI::IsMember({"fsync", "process"}))
        ->capture_default_str();
    app.add_option("--system", flags.system, "The {system} topic token: evt/{system}/tick, cmd/{system}/ping")
        ->check([](const std::string& value) {
            try {
                xymqtt::validate_topic_token("system", value);
                return std::string();
            } catch (const xymqtt::invalid_topic& e) {
                return std::string(e.what());
            }
        })
        ->capture_default_str();

    // The broker's credentials and TLS files, as the xymqtt command-line tool takes them.
    if (const char* user = std::getenv("XYMQTT_USERNAME")) flags.username = user;
    if (const char* password = std::getenv("XYMQTT_PASSWORD")) flags.password = password;
    app.add_option("--username", flags.username, "User name at the broker (default $XYMQTT_USERNAME)");
    app.add_option("--password", flags.password,
                   "Password at the broker; prefer $XYMQTT_PASSWORD, which stays out of ps and the shell history");
    app.add_option("--cafile", flags.cafile, "TLS: PEM file of the CAs to trust (default: the system's)")
        ->check(CLI::ExistingFile);
    app.add_option("--cert", flags.cert, "TLS: client certificate (PEM), for mutual TLS; needs --key")
        ->check(CLI::ExistingFile);
    app.add_option("--key", flags.key, "TLS: private key of --cert (PEM)")->check(CLI::ExistingFile);
    app.final_callback([&flags] {
        if (flags.cert.empty() != flags.key.empty()) throw CLI::ValidationError("--cert and --key go together");
        const bool tls_uri = flags.broker.rfind("ssl://", 0) == 0 || flags.broker.rfind("mqtts://", 0) == 0;
        // A tcp:// connection would ignore the files and send everything, password included, in clear.
        if (!tls_uri && !(flags.cafile.empty() && flags.cert.empty()))
            throw CLI::ValidationError("--cafile, --cert and --key need a TLS broker URI (ssl:// or mqtts://), not " +
                                       flags.broker);
    });
}

xymqtt::client_options client_options(const common_flags& flags, xymqtt::hooks hooks) {
    xymqtt::client_options options;
    options.server_uri = flags.broker;
    options.client_id = flags.client_id;
    options.store_dir = flags.store.empty() ? "./.xymqtt/" + flags.client_id : flags.store;
    options.durability = flags.durability == "process" ? xymqtt::durability::process : xymqtt::durability::fsync;
    options.username = flags.username;
    options.password = flags.password;
    const bool tls_uri = flags.broker.rfind("ssl://", 0) == 0 || flags.broker.rfind("mqtts://", 0) == 0;
    if (tls_uri) {
        // The server certificate and its host name are verified (tls_options' defaults).
        xymqtt::tls_options tls;
        tls.ca_file = flags.cafile;
        tls.cert_file = flags.cert;
        tls.key_file = flags.key;
        options.tls = tls;
    }
    options.hooks = std::move(hooks);
    return options;
}

xymqtt::examples::Publisher::Options publisher_options(const common_flags& flags) {
    xymqtt::examples::Publisher::Options options;
    options.system = flags.system;
    options.format = flags.format == "json" ? xymqtt::wire_format::json : xymqtt::wire_format::binary;
    return options;
}

xymqtt::hooks print_hooks() {
    xymqtt::hooks hooks;
    hooks.on_connect = [](bool session_present) {
        // No session at the broker means a first start (or a broker that lost its data): the
        // subscriptions are made again and the outbox is sent again.
        say(std::string("connected (") + (session_present ? "session present" : "new session") + ")");
    };
    hooks.on_connection_lost = [](const std::string& cause) {
        say("connection lost: " + cause + " (reconnecting; publishes wait on disk)");
    };
    hooks.on_message_retry = [](const xymqtt::message& message, const std::string& error,
                                std::chrono::milliseconds delay) {
        say("  ↻ " + message.topic + " attempt " + std::to_string(message.attempt) + " failed (" + error +
            "): retry in " + std::to_string(delay.count()) + " ms");
    };
    hooks.on_dead_letter = [](const xymqtt::message& message, const std::string& reason) {
        say("  dead letter on " + message.topic + ": " + reason);
    };
    hooks.on_storage_error = [](const std::string& error) { say("storage error: " + error); };
    hooks.on_log = [](xymqtt::log_level level, const std::string& line) {
        // Warnings and errors only, e.g. "connect to tcp://... failed: ..." while the broker is down
        // (a lost connection is printed by on_connection_lost).
        if (level >= xymqtt::log_level::warning && line.rfind("connection lost", 0) != 0)
            say(std::string(level == xymqtt::log_level::error ? "error: " : "warning: ") + line);
    };
    return hooks;
}

void say(const std::string& line) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    std::cout << line << std::endl;  // endl flushes: the demo and the tests read us through a pipe
}

bool chance(double probability) {
    static std::mutex mutex;
    static std::mt19937_64 random{std::random_device{}()};
    std::lock_guard<std::mutex> lock(mutex);
    return std::bernoulli_distribution(probability)(random);
}

std::string iso8601_now() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
    char out[40];
    std::snprintf(out, sizeof out, "%s.%03dZ", text, static_cast<int>(millis));
    return out;
}

std::string format_ms(std::chrono::steady_clock::duration d) {
    char out[32];
    std::snprintf(out, sizeof out, "%.1f ms", std::chrono::duration<double, std::milli>(d).count());
    return out;
}

namespace {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

}  // namespace

stop_signal::stop_signal() {
    // Blocked here, the signals stay blocked in every thread created later (Paho's, the client's):
    // only sigwait() below receives them.
    const sigset_t set = stop_signals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    waiter_ = std::thread([this, set] {
        int received = 0;
        sigwait(&set, &received);
        update([&] { stopping_ = !closing_; });
    });
}

stop_signal::~stop_signal() {
    update([&] { closing_ = true; });
    // Wakes the waiting thread if no signal came: it then ends without requesting a stop.
    pthread_kill(waiter_.native_handle(), SIGTERM);
    waiter_.join();
}

bool stop_signal::requested() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stopping_;
}

}  // namespace example
