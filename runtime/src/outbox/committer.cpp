#include "outbox/committer.h"

#include <algorithm>
#include <future>

#include "xymqtt/exception.h"

namespace xymqtt::detail {

committer::committer(store& s, std::chrono::microseconds linger)
    : linger_(linger), store_(s), thread_([this] { run(); }) {}

committer::~committer() { stop(); }

void committer::submit(std::vector<write_op> ops, done_fn done, urgency u) {
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (std::this_thread::get_id() != thread_.get_id())
            room_cv_.wait(lk, [&] {
                return stopping_ || queue_.empty() || (queue_.size() < max_queued && queued_bytes_ < max_queued_bytes);
            });
        if (!stopping_) {
            if (u == urgency::now)
                ++urgent_queued_;
            else if (u == urgency::linger)
                ++lingering_queued_;
            else if (background_queued_++ == 0)
                oldest_background_ = std::chrono::steady_clock::now();
            for (const auto& op : ops) queued_bytes_ += op_overhead + op.id.size() + (op.value ? op.value->size() : 0);
            queue_.push_back(job{std::move(ops), std::move(done)});
            // While a commit runs, whoever runs it looks at the queue when done. Other writes need not wake a
            // writer that waits for a deadline already: it looks again then, unless a lingering write is due
            // before it (now, if urgent writes stopped flowing).
            if (!committing_ &&
                (u == urgency::now || idle_ || (u == urgency::linger && wake_at_ > last_urgent_ + linger_)))
                cv_.notify_one();
            return;
        }
    }
    if (done) done(std::make_exception_ptr(client_closed("store writer is stopped")));
}

void committer::commit(std::vector<write_op> ops, urgency u) {
    std::unique_lock<std::mutex> lk(mu_);
    if (u == urgency::now && !committing_ && !stopping_ && std::this_thread::get_id() != thread_.get_id()) {
        // Lead: this thread would only wait for the writer thread to do this same commit.
        std::vector<job> jobs = take_queue(true);
        std::exception_ptr mine;
        jobs.push_back(job{std::move(ops), [&mine](std::exception_ptr e) { mine = e; }});
        lk.unlock();
        std::vector<write_op> all;
        commit_jobs(jobs, all);
        lk.lock();
        committing_ = false;
        // The writer looks again if it waits for this commit, sleeps untimed with batches queued, or an urgent
        // batch came meanwhile; lingering ones wait for the next urgent write or the deadline it sleeps to.
        if (stopping_ || urgent_queued_ > 0 || lead_waiter_ || (idle_ && !queue_.empty())) cv_.notify_one();
        idle_cv_.notify_all();
        lk.unlock();
        if (mine) std::rethrow_exception(mine);
        return;
    }
    lk.unlock();
    std::promise<void> p;
    auto f = p.get_future();
    submit(std::move(ops), [&p](std::exception_ptr e) {
        if (e)
            p.set_exception(e);
        else
            p.set_value();
    }, u);
    f.get();
}

std::vector<committer::job> committer::take_queue(bool urgent) {
    // mu_ held
    if (urgent || urgent_queued_ > 0) last_urgent_ = std::chrono::steady_clock::now();
    std::vector<job> jobs;
    jobs.swap(queue_);
    queued_bytes_ = 0;
    urgent_queued_ = lingering_queued_ = background_queued_ = 0;
    committing_ = true;
    room_cv_.notify_all();
    return jobs;
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
    std::unique_lock<std::mutex> lk(mu_);
    idle_cv_.wait(lk, [&] { return !committing_; });  // a leading caller still using the store
}

void committer::commit_jobs(std::vector<job>& jobs, std::vector<write_op>& all) {
    all.clear();
    for (auto& j : jobs)
        for (auto& op : j.ops) all.push_back(op);
    std::exception_ptr err;
    try {
        store_.commit(all);
    } catch (...) {
        err = std::current_exception();
    }
    std::vector<std::exception_ptr> errs(jobs.size(), err);
    if (err && jobs.size() > 1) {
        // One bad batch must not fail the others: commit them one by one.
        for (std::size_t i = 0; i < jobs.size(); ++i) {
            errs[i] = nullptr;
            try {
                store_.commit(jobs[i].ops);
            } catch (...) {
                errs[i] = std::current_exception();
            }
        }
    }
    for (std::size_t i = 0; i < jobs.size(); ++i)
        if (jobs[i].done) jobs[i].done(errs[i]);
    jobs.clear();
}

void committer::run() {
    std::vector<job> jobs;
    std::vector<write_op> all;
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
        const auto now = std::chrono::steady_clock::now();
        const auto linger_until = last_urgent_ + linger_;
        const bool flowing = now < linger_until;  // urgent writes came lately
        const auto background_until = oldest_background_ + linger_;
        if (committing_) {  // a leading caller: it wakes this thread when done
            lead_waiter_ = true;
            cv_.wait(lk);
            lead_waiter_ = false;
            continue;
        }
        if (!queue_.empty() && (urgent_queued_ > 0 || stopping_ || (lingering_queued_ > 0 && !flowing) ||
                                (background_queued_ > 0 && now >= background_until))) {
            jobs = take_queue(false);
            lk.unlock();
            commit_jobs(jobs, all);
            lk.lock();
            committing_ = false;
            idle_cv_.notify_all();
            continue;
        }
        if (stopping_ && queue_.empty()) return;
        if (!queue_.empty() || flowing) {
            // Lingering and background writes wait for an urgent one to carry them, and while urgent writes
            // flow more lingering ones come: a submit of one does not wake this thread (that was a wake-up per
            // message), so look again when the first deadline passes.
            auto until = background_queued_ > 0 ? background_until : linger_until;
            if (lingering_queued_ > 0 || flowing) until = std::min(until, linger_until);
            wake_at_ = until;
            cv_.wait_until(lk, until);
            wake_at_ = std::chrono::steady_clock::time_point::max();
        } else {
            idle_ = true;
            cv_.wait(lk);
            idle_ = false;
        }
    }
}

}  // namespace xymqtt::detail
