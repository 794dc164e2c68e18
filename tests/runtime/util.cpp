#include "util.h"

#include "xymqtt/exception.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace xymqtt::test {

std::string unique_id(const std::string& name) { return "t-" + name + "-" + make_message_id().substr(0, 12); }

client_options options_for(const temp_dir& dir, const std::string& name, const std::string& uri) {
    client_options o;
    o.server_uri = uri;
    o.client_id = unique_id(name);
    o.store_dir = dir / name;
    o.durability = durability::process;
    o.reconnect_max = std::chrono::milliseconds(500);
    o.retry.initial = std::chrono::milliseconds(20);
    o.retry.cap = std::chrono::milliseconds(200);
    if (std::getenv("XYMQTT_TEST_LOG")) {
        o.hooks.on_log = [id = o.client_id](log_level, const std::string& s) { std::fprintf(stderr, "[%s] %s\n", id.c_str(), s.c_str()); };
    }
    return o;
}

std::unique_ptr<client> connected(client_options opts) {
    auto c = std::make_unique<client>(std::move(opts));
    c->connect();
    REQUIRE(c->wait_connected(std::chrono::seconds(10)));
    return c;
}

void recorder::add(const std::string& s) {
    std::lock_guard<std::mutex> lk(mu_);
    items_.push_back(s);
}
std::vector<std::string> recorder::items() const {
    std::lock_guard<std::mutex> lk(mu_);
    return items_;
}
std::size_t recorder::size() const {
    std::lock_guard<std::mutex> lk(mu_);
    return items_.size();
}
bool recorder::wait_size(std::size_t n, std::chrono::milliseconds timeout) const {
    return eventually([&] { return size() >= n; }, timeout);
}

std::vector<std::string> read_lines(const std::string& path) {
    std::vector<std::string> out;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

std::size_t publish_until_heard(client& pub, const std::string& topic, const std::string& payload,
                                const recorder& heard, std::chrono::milliseconds each, const publish_options& opts) {
    std::size_t published = 0;
    REQUIRE(eventually([&] {
        pub.publish(topic, payload, opts).get();
        ++published;
        return heard.wait_size(1, each);
    }, std::chrono::seconds(20)));
    return published;
}

void wait_until_served(client& caller, const std::string& command, const std::string& body,
                       std::chrono::milliseconds each) {
    REQUIRE(eventually([&] {
        auto p = caller.call_async(command, body, {}, each);
        try {
            return p.result.get().ok;
        } catch (const timeout_error&) {
            return false;
        }
    }, std::chrono::seconds(30)));
}

}  // namespace xymqtt::test
