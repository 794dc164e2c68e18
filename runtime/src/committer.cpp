#include "committer.h"

#include <future>

#include "xymqtt/exception.h"

namespace xymqtt::detail {

committer::committer(store& s) : store_(s), thread_([this] { run(); }) {}

committer::~committer() { stop(); }

void committer::submit(std::vector<write_op> ops, done_fn done, bool urgent) {
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (std::this_thread::get_id() != thread_.get_id())
            room_cv_.wait(lk, [&] { return stopping_ || queue_.size() < max_queued; });
        if (!stopping_) {
            queue_.push_back(job{std::move(ops), std::move(done), urgent});
            if (urgent) ++urgent_queued_;
            cv_.notify_one();
            return;
        }
    }
    if (done) done(std::make_exception_ptr(client_closed("store writer is stopped")));
}

void committer::commit(std::vector<write_op> ops, bool urgent) {
    std::promise<void> p;
    auto f = p.get_future();
    submit(std::move(ops), [&p](std::exception_ptr e) {
        if (e)
            p.set_exception(e);
        else
            p.set_value();
    }, urgent);
    f.get();
}

void committer::stop() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (stopping_ && !thread_.joinable()) return;
        stopping_ = true;
        cv_.notify_one();
        room_cv_.notify_all();
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void committer::run() {
    std::vector<job> jobs;
    std::vector<write_op> all;
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
        cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and nothing left to write
        // Only lingering writes, while urgent ones flow: give the next urgent one a moment to carry them.
        const auto now = std::chrono::steady_clock::now();
        if (urgent_queued_ == 0 && now - last_urgent_ < linger)
            cv_.wait_for(lk, linger, [&] { return stopping_ || urgent_queued_ > 0; });
        if (urgent_queued_ > 0) last_urgent_ = std::chrono::steady_clock::now();
        jobs.swap(queue_);
        urgent_queued_ = 0;
        room_cv_.notify_all();
        lk.unlock();

        all.clear();
        for (auto& j : jobs)
            for (auto& op : j.ops) all.push_back(op);
        std::exception_ptr err;
        try {
            store_.commit(all);
        } catch (...) {
            err = std::current_exception();
        }
        if (err && jobs.size() > 1) {
            // One bad batch must not fail the others: commit them one by one.
            for (auto& j : jobs) {
                std::exception_ptr e;
                try {
                    store_.commit(j.ops);
                } catch (...) {
                    e = std::current_exception();
                }
                if (j.done) j.done(e);
            }
        } else {
            for (auto& j : jobs)
                if (j.done) j.done(err);
        }
        jobs.clear();
        lk.lock();
    }
}

}  // namespace xymqtt::detail
