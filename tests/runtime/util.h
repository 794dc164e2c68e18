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

/// A store that passes everything to `inner`: tests override what they watch or break (commit).
class forwarding_store : public store {
public:
    explicit forwarding_store(std::shared_ptr<store> inner) : inner_(std::move(inner)) {}
    void commit(const std::vector<write_op>& batch) override { inner_->commit(batch); }
    std::optional<std::string> get(table t, const std::string& id) const override { return inner_->get(t, id); }
    void for_each(table t, const std::function<bool(const std::string&, const std::string&)>& fn) const override {
        inner_->for_each(t, fn);
    }
    std::optional<std::string> last_id(table t) const override { return inner_->last_id(t); }
    std::size_t count(table t) const override { return inner_->count(t); }
    session_records& session() override { return inner_->session(); }
    xymqtt::durability durability() const override { return inner_->durability(); }

private:
    std::shared_ptr<store> inner_;
};

/// Lines of a text file (missing file: none).
std::vector<std::string> read_lines(const std::string& path);

}  // namespace xymqtt::test
