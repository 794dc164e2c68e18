// Scenario 1: event throughput end to end, publisher and subscriber in separate processes.
#include <mqtt/async_client.h>

#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <unordered_map>

#include "xy.h"

namespace bench {

namespace {

// What a subscriber measures: first send time seen, last arrival, per-message latency.
class tally {
public:
    explicit tally(std::size_t expect) : expect_(expect) { lat_ms_.reserve(expect); }
    void on_message(const std::string& payload) {
        std::uint64_t index;
        std::int64_t sent;
        read_payload(payload, index, sent);
        const auto now = wall_ns();
        std::lock_guard<std::mutex> lk(mu_);
        if (index == probe_index) {
            probe_ = true;
            cv_.notify_all();
            return;
        }
        if (seen_.size() < expect_ + 1) seen_.resize(expect_ + 1);
        if (index < seen_.size() && seen_[index]) {
            ++dups_;
            return;
        }
        if (index < seen_.size()) seen_[index] = true;
        if (received_ == 0 || sent < first_sent_) first_sent_ = sent;
        if (received_ == 0) first_recv_ = now;
        last_recv_ = now;
        lat_ms_.push_back(double(now - sent) / 1e6);
        if (++received_ >= expect_) cv_.notify_all();
    }
    bool wait_probe(std::chrono::seconds t) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, t, [&] { return probe_; });
    }
    bool wait_all(std::chrono::seconds t) {
        std::unique_lock<std::mutex> lk(mu_);
        return cv_.wait_for(lk, t, [&] { return received_ >= expect_; });
    }
    void report(result& r) {
        std::lock_guard<std::mutex> lk(mu_);
        const double secs = double(last_recv_ - first_sent_) / 1e9;
        r.set("received", double(received_)).set("duplicates", double(dups_));
        r.set("elapsed_s", secs).set("msgs_per_s", secs > 0 ? double(received_) / secs : 0);
        r.set("lat_p50_ms", percentile(lat_ms_, 50)).set("lat_p99_ms", percentile(lat_ms_, 99));
    }

private:
    std::size_t expect_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool probe_ = false;
    std::size_t received_ = 0, dups_ = 0;
    std::vector<bool> seen_;
    std::int64_t first_sent_ = 0, first_recv_ = 0, last_recv_ = 0;
    std::vector<double> lat_ms_;
};

int xy_sub(const args& a) {
    const auto topic = a.str("topic", "bench/evt");
    tally t(std::size_t(a.num("count", 1000)));
    xymqtt::client c(xy_options(a));
    c.subscribe(topic, [&](const xymqtt::message& m) { t.on_message(m.payload); });
    c.connect();
    if (!c.wait_connected(std::chrono::seconds(10))) throw std::runtime_error("not connected");
    // The probe comes back once the broker has processed our SUBSCRIBE (same connection, in order).
    std::string probe(16, '\0');
    std::memcpy(probe.data(), &probe_index, 8);
    (void)c.publish(topic, probe);
    if (!t.wait_probe(std::chrono::seconds(20))) throw std::runtime_error("probe did not come back");
    say("ready");
    std::atomic<bool> stop{false};
    std::thread progress;
    if (a.has("progress"))  // per-second arrivals and Paho-side stats on stderr, for diagnosis
        progress = std::thread([&] {
            std::uint64_t last = 0;
            while (!stop) {
                std::this_thread::sleep_for(std::chrono::seconds(1));
                const auto st = c.stats();
                std::cerr << "progress delivered " << st.delivered << " (+" << st.delivered - last << ") handled "
                          << st.handled << " inbox " << st.inbox << std::endl;
                last = st.delivered;
            }
        });
    const bool all = t.wait_all(std::chrono::seconds(a.num("timeout", 600)));
    stop = true;
    if (progress.joinable()) progress.join();
    result r;
    r.set("mode", "xy-sub").set("complete", all ? 1 : 0);
    t.report(r);
    r.print();
    c.close();
    return all ? 0 : 3;
}

int xy_pub(const args& a) {
    const auto topic = a.str("topic", "bench/evt");
    const long count = a.num("count", 1000);
    const auto size = std::size_t(a.num("size", 100));
    xymqtt::client c(xy_options(a));
    c.connect();
    if (!c.wait_connected(std::chrono::seconds(10))) throw std::runtime_error("not connected");
    const auto t0 = mono_ns();
    for (long i = 0; i < count; ++i) c.post(topic, make_payload(size, std::uint64_t(i)));  // no future kept
    const auto t1 = mono_ns();
    // wait_outbox_empty alone returns at once while the first publishes are still being stored (the
    // outbox count only grows after their commit), so wait for the completions first.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.num("timeout", 600));
    while (c.stats().published < std::uint64_t(count) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const bool done = c.wait_outbox_empty(std::chrono::seconds(a.num("timeout", 600)));
    const auto t2 = mono_ns();
    result r;
    r.set("mode", "xy-pub").set("complete", done ? 1 : 0).set("count", double(count));
    r.set("enqueue_s", double(t1 - t0) / 1e9).set("drain_s", double(t2 - t0) / 1e9);
    r.set("pub_msgs_per_s", double(count) / (double(t2 - t0) / 1e9));
    r.print();
    c.close();
    return done ? 0 : 3;
}

// Paho's records kept in a map (--paho-persistence memory): not crash-safe, but Paho does all its own work of
// a persistent client (serializing each packet state, reading a queued publish back before sending it), at
// the cost of a map update per record. The least a crash-safe client on Paho pays, whatever its store.
class memory_persistence : public mqtt::iclient_persistence {
public:
    void open(const mqtt::string&, const mqtt::string&) override {}
    void close() override {}
    void clear() override {
        std::lock_guard<std::mutex> lk(mu_);
        records_.clear();
    }
    bool contains_key(const mqtt::string& key) override {
        std::lock_guard<std::mutex> lk(mu_);
        return records_.count(key) != 0;
    }
    mqtt::string_collection keys() const override {
        std::lock_guard<std::mutex> lk(mu_);
        mqtt::string_collection out;
        for (const auto& kv : records_) out.push_back(kv.first);
        return out;
    }
    void put(const mqtt::string& key, const std::vector<mqtt::string_view>& bufs) override {
        std::string v;
        for (const auto& b : bufs) v.append(b.data(), b.size());
        std::lock_guard<std::mutex> lk(mu_);
        records_[key] = std::move(v);
    }
    mqtt::string get(const mqtt::string& key) const override {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = records_.find(key);
        if (it == records_.end()) throw mqtt::persistence_exception();
        return it->second;
    }
    void remove(const mqtt::string& key) override {
        std::lock_guard<std::mutex> lk(mu_);
        records_.erase(key);
    }

private:
    mutable std::mutex mu_;
    std::unordered_map<std::string, std::string> records_;
};

std::shared_ptr<mqtt::async_client> paho_connect(const args& a, const std::string& suffix, std::size_t* receive_max) {
    static memory_persistence records;  // one client per process
    const bool persist = a.str("paho-persistence", "none") == "memory";
    // Paho refuses a publish (-12) once more than max_buffered_messages (default 100) wait in its queue.
    auto cli = std::make_shared<mqtt::async_client>(a.str("broker", "tcp://127.0.0.1:1883"), a.str("id", "paho") + suffix,
                                                    mqtt::create_options(MQTTVERSION_5, int(a.num("buffered", 65535))),
                                                    persist ? &records : nullptr);
    auto co = mqtt::connect_options_builder().mqtt_version(MQTTVERSION_5).clean_start(true).max_inflight(65535).finalize();
    if (a.has("receive-max"))
        co.set_properties({{mqtt::property::RECEIVE_MAXIMUM, std::uint16_t(a.num("receive-max"))}});
    auto tok = cli->connect(co);
    tok->wait();
    if (receive_max) {
        *receive_max = 65535;
        const auto props = tok->get_connect_response().get_properties();
        if (props.contains(mqtt::property::RECEIVE_MAXIMUM))
            *receive_max = mqtt::get<uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
    }
    return cli;
}

// With --sync-dir: each message is written to a file there and synced (fdatasync) in the receive callback,
// before Paho acknowledges it. That is the least a durable subscriber on Paho does per message, with
// nothing else: the bound of "fsync events" on Paho's receive path.
class sync_file {
public:
    explicit sync_file(const std::string& dir) {
        std::filesystem::create_directories(dir);
        path_ = dir + "/paho-sync.bin";
        fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd_ < 0) throw std::runtime_error("cannot open " + path_);
        // Written and synced first: each fdatasync then flushes data only, as the store's journal does.
        const std::string block(std::size_t(1) << 20, 'z');
        if (::write(fd_, block.data(), block.size()) != ssize_t(block.size()) || ::fsync(fd_) != 0)
            throw std::runtime_error("cannot prepare " + path_);
    }
    ~sync_file() {
        ::close(fd_);
        std::filesystem::remove(path_);
    }
    void write(const std::string& bytes) {
        const std::size_t n = std::min(bytes.size(), std::size_t(1) << 20);
        if (at_ + n > (std::size_t(1) << 20)) at_ = 0;
        if (::pwrite(fd_, bytes.data(), n, off_t(at_)) < 0 || ::fdatasync(fd_) != 0)
            throw std::runtime_error("write/fdatasync failed");
        at_ += n;
    }

private:
    std::string path_;
    int fd_ = -1;
    std::size_t at_ = 0;
};

int paho_sub(const args& a) {
    const auto topic = a.str("topic", "bench/evt");
    const int qos = int(a.num("qos", 2));
    tally t(std::size_t(a.num("count", 1000)));
    std::unique_ptr<sync_file> sync;
    if (a.has("sync-dir")) sync = std::make_unique<sync_file>(a.str("sync-dir"));
    auto cli = paho_connect(a, "", nullptr);
    cli->set_message_callback([&](mqtt::const_message_ptr m) {
        if (sync) sync->write(m->get_payload_str());
        t.on_message(m->get_payload_str());
    });
    cli->subscribe(topic, qos)->wait();
    say("ready");
    const bool all = t.wait_all(std::chrono::seconds(a.num("timeout", 600)));
    result r;
    r.set("mode", "paho-sub").set("complete", all ? 1 : 0);
    t.report(r);
    r.print();
    cli->disconnect()->wait();
    return all ? 0 : 3;
}

// Publishes with at most the broker's receive maximum in flight, as Paho needs (a full Paho window
// stalls for up to 1 s); this is what the runtime does too.
class window_listener : public mqtt::iaction_listener {
public:
    explicit window_listener(std::size_t max) : max_(max) {}
    void acquire() {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return inflight_ < max_; });
        ++inflight_;
    }
    void wait_idle() {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return inflight_ == 0; });
    }
    long failures() const { return failures_; }
    void on_success(const mqtt::token&) override { release(); }
    void on_failure(const mqtt::token&) override {
        ++failures_;
        release();
    }

private:
    void release() {
        std::lock_guard<std::mutex> lk(mu_);
        --inflight_;
        cv_.notify_all();
    }
    std::size_t max_;
    std::size_t inflight_ = 0;
    std::atomic<long> failures_{0};
    std::mutex mu_;
    std::condition_variable cv_;
};

int paho_pub(const args& a) {
    const auto topic = a.str("topic", "bench/evt");
    const int qos = int(a.num("qos", 2));
    const long count = a.num("count", 1000);
    const auto size = std::size_t(a.num("size", 100));
    std::size_t receive_max = 0;
    auto cli = paho_connect(a, "", &receive_max);
    window_listener w(std::min<std::size_t>(receive_max, std::size_t(a.num("window", 65535))));
    std::cerr << "paho-pub: broker receive maximum " << receive_max << std::endl;
    const auto t0 = mono_ns();
    for (long i = 0; i < count; ++i) {
        w.acquire();
        auto msg = mqtt::make_message(topic, make_payload(size, std::uint64_t(i)), qos, false);
        cli->publish(msg, nullptr, w);
    }
    w.wait_idle();
    const auto t1 = mono_ns();
    result r;
    r.set("mode", "paho-pub").set("qos", double(qos)).set("count", double(count)).set("window", double(receive_max));
    r.set("failures", double(w.failures())).set("drain_s", double(t1 - t0) / 1e9);
    r.set("pub_msgs_per_s", double(count) / (double(t1 - t0) / 1e9));
    r.print();
    cli->disconnect()->wait();
    return 0;
}

}  // namespace

int events_main(const std::string& mode, const args& a) {
    // The raw Paho baseline as xymqtt drives Paho: trace at errors (F19). xymqtt clients set it themselves.
    if (a.has("paho-trace-errors") && a.num("paho-trace-errors") != 0) MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    if (mode == "xy-sub") return xy_sub(a);
    if (mode == "xy-pub") return xy_pub(a);
    if (mode == "paho-sub") return paho_sub(a);
    return paho_pub(a);
}

}  // namespace bench
