// Shared helpers of the runtime integration tests.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <map>
#include <set>
#include <vector>

#include "support/broker.h"
#include "support/eventually.h"
#include "support/forwarding_store.h"
#include "support/temp_dir.h"
#include "xymqtt/client.h"
#include "xymqtt/store.h"

namespace xymqtt::test {

/// A client id no other test uses (sessions at the shared broker are per id).
std::string unique_id(const std::string& name);

/// Options for a client of the shared test broker with its store in `dir`/`name`.
client_options options_for(const temp_dir& dir, const std::string& name, const std::string& uri = shared_broker_uri());

/// Creates, connects and waits for a client. Fails the test if it cannot connect.
std::unique_ptr<client> connected(client_options opts);

/// Calls `command` with `body` until a call is answered (each waits `each`): a server's SUBSCRIBE is
/// asynchronous, and an invoke sent before it reaches the broker finds no subscriber. Fails the test if
/// none is answered within 30 s.
void wait_until_served(client& caller, const std::string& command, const std::string& body = "warm",
                       std::chrono::milliseconds each = std::chrono::milliseconds(500));

class recorder;

/// Publishes `payload` to `topic` until `heard` holds something, waiting up to `each` after each publish: a
/// SUBSCRIBE is asynchronous, and what is published before the broker has it reaches nobody. Fails the test
/// if nothing is heard within 20 s.
/// @return how many were published (the ones not heard may still arrive later).
std::size_t publish_until_heard(client& pub, const std::string& topic, const std::string& payload,
                                const recorder& heard,
                                std::chrono::milliseconds each = std::chrono::milliseconds(300),
                                const publish_options& opts = {});

/// Thread-safe record of what handlers saw.
class recorder {
public:
    void add(const std::string& s);
    std::vector<std::string> items() const;
    std::size_t size() const;
    bool wait_size(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;

private:
    mutable std::mutex mu_;
    std::vector<std::string> items_;
};

/// Lines of a text file (missing file: none).
std::vector<std::string> read_lines(const std::string& path);

}  // namespace xymqtt::test
