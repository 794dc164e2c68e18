// The client as the host of each layer: what the session, the outbox and the inbox ask of it, and where
// it takes each request (client_impl.h declares them; the one-line ones are there).
#include "client/client_impl.h"
#include "commands/wire.h"
#include "xymqtt/exception.h"

namespace xymqtt {

void client::impl::session_link::subscription_answered(const std::string& filter, int reason_code) {
    const auto results = c_.command_caller_->results_filter();
    if (!results.empty() && filter == results) c_.command_caller_->results_subscription(reason_code);
}

detail::outbox_host::refusal client::impl::outbox_link::publish(std::vector<item>& batch, via v) {
    std::vector<std::pair<std::uint64_t, const stored_message*>> msgs;
    msgs.reserve(batch.size());
    for (const auto& it : batch) msgs.emplace_back(it.seq, it.msg.get());
    const auto r = c_.session_->publish(msgs, v);
    for (std::size_t i = 0; i < r.taken; ++i) batch[i].sent = true;
    switch (r.why) {
        case detail::session::refusal::none:
            return refusal::none;
        case detail::session::refusal::buffer_full:
            return refusal::buffer_full;
        case detail::session::refusal::disconnected:
            return refusal::disconnected;
        case detail::session::refusal::other:
            break;
    }
    return refusal::other;
}

std::function<void()> client::impl::outbox_link::refused(const stored_message& msg, int reason_code,
                                                         const std::string& why, std::vector<write_op>& ops) {
    std::vector<std::pair<std::string, stored_message>> local;
    if (msg.kind == "call") {
        // A refused invoke: its caller hears of it, as a failed call_async or a reject through the inbox.
        if (auto reject = c_.command_caller_->refused(msg, reason_code, why, ops)) {
            local = c_.inbox_records(std::move(*reject));
            for (const auto& [rid, r] : local) ops.push_back({table::incoming, rid, encode_record(r)});
        }
    }
    return [this, local = std::move(local)]() mutable {
        c_.inbox_->count_dead(1);
        c_.inbox_->take(std::move(local));
    };
}

void client::impl::inbox_link::commit(const std::vector<write_op>& ops, bool soon) {
    // Without syncs there is nothing to share, and no sync to wait for: the committer makes it on this
    // thread when no commit runs (no hand-off), and waits for one that runs, so that batches queued before
    // (a lane's relabelling, say) are not overtaken.
    if (!soon || c_.store_->durability() == durability::process)
        return c_.committer_->commit(ops, detail::urgency::now);
    // A plain removal: the lane goes on while it joins the next commit, at most max_unsynced_removals at a
    // time. Not stored, it costs a redelivery after a restart, never the message.
    {
        std::unique_lock<std::mutex> lk(removals_mu_);
        removals_cv_.wait(lk, [&] { return unsynced_removals_ < detail::inbox_host::max_unsynced_removals; });
        ++unsynced_removals_;
    }
    c_.committer_->submit(ops, [this](std::exception_ptr e) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const client_closed&) {
            } catch (const std::exception& x) {
                c_.log(log_level::error,
                       std::string("cannot store a handled delivery's removal (it is handled again after a restart): ") +
                           x.what());
                storage_failed(x.what());
            } catch (...) {
            }
        }
        {
            std::lock_guard<std::mutex> lk(removals_mu_);
            --unsynced_removals_;
        }
        removals_cv_.notify_all();
    }, detail::urgency::linger);
}

void client::impl::inbox_link::record(std::vector<write_op> ops) { c_.committer_->submit(std::move(ops), nullptr); }

void client::impl::inbox_link::publishes_stored(
    std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs) {
    c_.outbox_->stored(pubs, true);
}

void client::impl::inbox_link::storage_failed(const std::string& what) { c_.fire(c_.opts_.hooks.on_storage_error, what); }

}  // namespace xymqtt
