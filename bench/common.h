// Shared helpers of the benchmark programs: flags, clocks, percentiles, RSS, JSON result lines.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace bench {

/// `--name value` flags after the mode word.
class args {
public:
    args(int argc, char** argv) {
        for (int i = 2; i < argc; ++i) {
            std::string k = argv[i];
            if (k.rfind("--", 0) != 0) throw std::runtime_error("unexpected argument " + k);
            k = k.substr(2);
            if (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0)
                kv_[k] = argv[++i];
            else
                kv_[k] = "1";
        }
    }
    std::string str(const std::string& k, const std::string& def = "") const {
        auto it = kv_.find(k);
        return it == kv_.end() ? def : it->second;
    }
    long num(const std::string& k, long def = 0) const {
        auto it = kv_.find(k);
        return it == kv_.end() ? def : std::stol(it->second);
    }
    bool has(const std::string& k) const { return kv_.count(k) != 0; }

private:
    std::map<std::string, std::string> kv_;
};

/// Wall clock in nanoseconds: comparable between processes on one machine.
inline std::int64_t wall_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}
inline std::int64_t mono_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

/// A payload of `size` bytes (at least 16) carrying the message index and its send time.
inline std::string make_payload(std::size_t size, std::uint64_t index) {
    std::string p(std::max<std::size_t>(size, 16), 'x');
    const std::int64_t t = wall_ns();
    std::memcpy(p.data(), &index, 8);
    std::memcpy(p.data() + 8, &t, 8);
    return p;
}
inline void read_payload(const std::string& p, std::uint64_t& index, std::int64_t& sent_ns) {
    index = 0;
    sent_ns = 0;
    if (p.size() < 16) return;
    std::memcpy(&index, p.data(), 8);
    std::memcpy(&sent_ns, p.data() + 8, 8);
}

/// Percentile (0..100) of `v` (sorted in place), in the unit of `v`.
inline double percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const double rank = p / 100.0 * double(v.size() - 1);
    const auto lo = static_cast<std::size_t>(rank);
    const auto hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (rank - double(lo));
}

/// Memory figures of this process from /proc/self/status, in KiB.
struct mem {
    long rss = 0, hwm = 0, anon = 0, file = 0, shmem = 0;
};
inline mem read_mem() {
    mem m;
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        auto val = [&](const char* key, long& out) {
            const auto n = std::strlen(key);
            if (line.compare(0, n, key) == 0) out = std::atol(line.c_str() + n);
        };
        val("VmRSS:", m.rss);
        val("VmHWM:", m.hwm);
        val("RssAnon:", m.anon);
        val("RssFile:", m.file);
        val("RssShmem:", m.shmem);
    }
    return m;
}

/// Samples /proc/self/status every `period` and keeps the peaks.
class mem_sampler {
public:
    explicit mem_sampler(std::chrono::milliseconds period = std::chrono::milliseconds(20))
        : thread_([this, period] {
              while (!stop_) {
                  sample();
                  std::this_thread::sleep_for(period);
              }
          }) {}
    ~mem_sampler() {
        stop_ = true;
        thread_.join();
    }
    void sample() {
        const mem m = read_mem();
        std::lock_guard<std::mutex> lk(mu_);
        peak_.rss = std::max(peak_.rss, m.rss);
        peak_.hwm = std::max(peak_.hwm, m.hwm);
        peak_.anon = std::max(peak_.anon, m.anon);
        peak_.file = std::max(peak_.file, m.file);
        peak_.shmem = std::max(peak_.shmem, m.shmem);
    }
    /// @return the peaks since the last reset, and resets them.
    mem take() {
        sample();
        std::lock_guard<std::mutex> lk(mu_);
        mem out = peak_;
        peak_ = mem{};
        return out;
    }

private:
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    mem peak_;
    std::thread thread_;
};

/// One JSON object printed as a line starting with "RESULT ", read by bench/run.py.
class result {
public:
    result& set(const std::string& k, double v) {
        std::ostringstream o;
        o.precision(10);
        o << v;
        fields_.emplace_back(k, o.str());
        return *this;
    }
    result& set(const std::string& k, const std::string& v) {
        fields_.emplace_back(k, "\"" + v + "\"");
        return *this;
    }
    result& set_mem(const std::string& prefix, const mem& m) {
        set(prefix + "_rss_kib", double(m.rss));
        set(prefix + "_hwm_kib", double(m.hwm));
        set(prefix + "_anon_kib", double(m.anon));
        set(prefix + "_file_kib", double(m.file));
        return *this;
    }
    void print() const {
        std::string s = "RESULT {";
        for (std::size_t i = 0; i < fields_.size(); ++i)
            s += (i ? ", \"" : "\"") + fields_[i].first + "\": " + fields_[i].second;
        s += "}";
        std::cout << s << std::endl;
    }

private:
    std::vector<std::pair<std::string, std::string>> fields_;
};

/// A line the orchestrator waits for ("ready", "queued", ...).
inline void say(const std::string& s) { std::cout << s << std::endl; }

/// Blocks until SIGTERM or SIGINT (those must be blocked in every thread: call block_stop_signals first).
void block_stop_signals();
void wait_stop_signal();

}  // namespace bench
