// The outbox backlog: sequence numbers of stored publishes that wait on disk, in FIFO order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace xymqtt::detail {

/// A FIFO of sequence numbers kept as runs of consecutive numbers. Publishes are numbered in the order they
/// are accepted, so a backlog of a million waiting publishes is a handful of runs: 16 bytes per run instead
/// of 8 per publish. Behaves as a std::deque<std::uint64_t> used through push_back, front, pop_front and
/// erase of one value.
class seq_runs {
public:
    /// Appends `seq` at the back.
    void push_back(std::uint64_t seq) {
        if (!runs_.empty() && runs_.back().last + 1 == seq)
            ++runs_.back().last;
        else
            runs_.push_back(run{seq, seq});
        ++size_;
    }
    /// @return the first number. Undefined when empty.
    std::uint64_t front() const { return runs_.front().first; }
    /// Removes the first number. Undefined when empty.
    void pop_front() {
        if (runs_.front().first == runs_.front().last)
            runs_.pop_front();
        else
            ++runs_.front().first;
        --size_;
    }
    /// Removes the first occurrence of `seq`.
    /// @return whether it was there.
    bool erase(std::uint64_t seq) {
        for (auto it = runs_.begin(); it != runs_.end(); ++it) {
            if (seq < it->first || seq > it->last) continue;
            if (it->first == it->last)
                runs_.erase(it);
            else if (seq == it->first)
                ++it->first;
            else if (seq == it->last)
                --it->last;
            else {
                const run tail{seq + 1, it->last};
                it->last = seq - 1;
                runs_.insert(it + 1, tail);
            }
            --size_;
            return true;
        }
        return false;
    }
    /// @return whether `seq` is in the FIFO.
    bool contains(std::uint64_t seq) const {
        for (const auto& r : runs_)
            if (seq >= r.first && seq <= r.last) return true;
        return false;
    }
    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    /// @return how many runs hold the numbers (the memory it takes is proportional to this).
    std::size_t runs() const { return runs_.size(); }

private:
    struct run {
        std::uint64_t first, last;
    };
    std::deque<run> runs_;
    std::size_t size_ = 0;
};

}  // namespace xymqtt::detail
