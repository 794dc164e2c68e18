// A store that wraps a real one and injects faults on demand: a disk that turns read-only or full under
// a running client (commits throw storage_error / storage_full), or a commit that never returns (to kill
// the process at exactly that moment). Passed to a client as client_options::store.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "xymqtt/exception.h"
#include "xymqtt/store.h"

namespace xymqtt::test {

class faulty_store : public store {
    // Paho's records, whose writes fail while `full` is set (Paho's own persistence on a full disk).
    class faulty_session final : public session_records {
    public:
        explicit faulty_session(session_records& inner) : inner_(inner) {}
        void put(const std::string& key, const std::string& value, bool sync) override {
            if (full) {
                ++failed;
                throw storage_full("injected: no space left on device (ENOSPC) for Paho's record " + key, 28);
            }
            inner_.put(key, value, sync);
        }
        std::optional<std::string> get(const std::string& key) const override { return inner_.get(key); }
        void remove(const std::string& key) override { inner_.remove(key); }
        std::vector<std::string> keys() const override { return inner_.keys(); }
        void clear() override { inner_.clear(); }
        std::atomic<bool> full{false};
        std::atomic<std::uint64_t> failed{0};

    private:
        session_records& inner_;
    };

public:
    enum class fault { none, read_only, full };

    explicit faulty_store(std::unique_ptr<store> inner) : inner_(std::move(inner)), paho_(inner_->session()) {}

    /// From now on every commit that touches `only` (or any table if `all_tables`) fails.
    void set_fault(fault f) { fault_ = f; }
    /// Restricts the fault to commits that write the incoming table (arrivals), if true.
    void fault_arrivals_only(bool v) { arrivals_only_ = v; }
    /// Commits that put into the incoming table call `fn` first (e.g. to block forever).
    void on_arrival_commit(std::function<void()> fn) { on_arrival_ = std::move(fn); }
    std::uint64_t failed_commits() const { return failed_; }
    /// While true, every write of Paho's own records fails with storage_full (the tables still work).
    void set_paho_full(bool v) { paho_.full = v; }
    std::uint64_t failed_paho_writes() const { return paho_.failed; }

    void commit(const std::vector<write_op>& batch) override {
        bool arrival = false;
        for (const auto& op : batch) arrival = arrival || (op.tbl == table::incoming && op.value);
        if (arrival && on_arrival_) on_arrival_();
        const fault f = fault_;
        if (f != fault::none && (!arrivals_only_ || arrival)) {
            ++failed_;
            if (f == fault::full) throw storage_full("injected: no space left on device (ENOSPC)", 28);
            throw storage_error("injected: read-only file system (EROFS)", 30);
        }
        inner_->commit(batch);
    }
    std::optional<std::string> get(table t, const std::string& id) const override { return inner_->get(t, id); }
    void for_each(table t, const std::function<bool(const std::string&, const std::string&)>& fn) const override {
        inner_->for_each(t, fn);
    }
    std::optional<std::string> last_id(table t) const override { return inner_->last_id(t); }
    std::size_t count(table t) const override { return inner_->count(t); }
    session_records& session() override { return paho_; }
    xymqtt::durability durability() const override { return inner_->durability(); }

private:
    std::unique_ptr<store> inner_;
    faulty_session paho_;
    std::atomic<fault> fault_{fault::none};
    std::atomic<bool> arrivals_only_{false};
    std::function<void()> on_arrival_;
    std::atomic<std::uint64_t> failed_{0};
};

}  // namespace xymqtt::test
