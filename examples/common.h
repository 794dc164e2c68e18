// What the four examples share: the common command-line flags, the client options they map to,
// printing hooks, thread-safe output, and a clean stop on Ctrl-C / SIGTERM.
//
// The interesting code is in the examples themselves; this file only keeps them short.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <xymqtt/client.h>

#include "examples/publisher.xymqtt.h"

namespace example {

/// The flags every example has.
struct common_flags {
    std::string broker = "tcp://127.0.0.1:1883";
    std::string client_id;   ///< Defaults to the example's name.
    std::string store;       ///< Defaults to ./.xymqtt/<client-id>.
    std::string format = "binary";
    std::string durability = "fsync";
    std::string system = "publisher";
    std::string username;    ///< Defaults to $XYMQTT_USERNAME; empty = none.
    std::string password;    ///< Defaults to $XYMQTT_PASSWORD (stays out of `ps` and shell history).
    std::string cafile;      ///< TLS: PEM file of trusted CAs; empty = the system's.
    std::string cert;        ///< TLS: client certificate (PEM), for mutual TLS.
    std::string key;         ///< TLS: the client certificate's private key (PEM, unencrypted).
};

/// Adds --broker, --client-id, --store, --format, --durability, --system and the broker's credentials
/// and TLS files (--username, --password, --cafile, --cert, --key) to `app`, and checks them together.
void add_common_flags(CLI::App& app, common_flags& flags);

/// The client's options for `flags`; `hooks` print what happens (see print_hooks). TLS is on for an
/// ssl:// or mqtts:// broker URI, with --cafile, --cert and --key as its files.
xymqtt::client_options client_options(const common_flags& flags, xymqtt::hooks hooks);

/// The generated stubs' options: the `{system}` topic token and the wire format.
xymqtt::examples::Publisher::Options publisher_options(const common_flags& flags);

/// Hooks that print connections, retries and dead letters, so that what the runtime does is visible.
xymqtt::hooks print_hooks();

/// Prints one line to stdout at once (also when stdout is a pipe). Safe from any thread.
void say(const std::string& line);

/// @return true with the given probability (0 never, 1 always). Safe from any thread.
bool chance(double probability);

/// @return now, in UTC, as ISO 8601 with milliseconds (xy-mqtt's `new Date().toISOString()`).
std::string iso8601_now();

/// @return `d` in milliseconds with one decimal, e.g. "4.2 ms".
std::string format_ms(std::chrono::steady_clock::duration d);

/// Ends the program cleanly on Ctrl-C (SIGINT) or SIGTERM, and lets it wait for its own conditions
/// at the same time, without polling.
///
/// Construct it first in main(), before the client: it blocks both signals for every thread started
/// afterwards and receives them on a thread of its own, so no signal interrupts Paho or a handler.
/// State that a wait's condition reads is changed through update(), which wakes the waits.
class stop_signal {
public:
    stop_signal();
    ~stop_signal();
    stop_signal(const stop_signal&) = delete;
    stop_signal& operator=(const stop_signal&) = delete;

    /// @return true once SIGINT or SIGTERM arrived.
    bool requested() const;

    /// Runs `change` under the lock, then wakes every wait.
    template <class Change>
    void update(Change change) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            change();
        }
        changed_.notify_all();
    }

    /// @return `read()`, run under the lock (for state that update() changes).
    template <class Read>
    auto read(Read read) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return read();
    }

    /// Waits until `done()` is true or a stop is requested. @return done()
    template <class Done>
    bool wait(Done done) {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || done(); });
        return done();
    }

    /// Waits until `done()` is true, a stop is requested, or `deadline`. @return done()
    template <class Done>
    bool wait_until(std::chrono::steady_clock::time_point deadline, Done done) {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait_until(lock, deadline, [&] { return stopping_ || done(); });
        return done();
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool stopping_ = false;
    bool closing_ = false;
    std::thread waiter_;
};

}  // namespace example
