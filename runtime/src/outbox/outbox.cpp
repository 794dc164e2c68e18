#include "outbox/outbox.h"

#include <algorithm>

#include "base/hook_calls.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {

namespace {

constexpr std::size_t ready_cap = 8192;  // publishes kept in memory beyond this wait on disk only
constexpr std::size_t batch_max = 64;    // publishes handed to the session under one lock hand-off

// MQTT 5 reason codes that refuse a publish for now, not for good.
bool transient_refusal(int reason_code) {
    return reason_code == 0x89     // server busy
           || reason_code == 0x97;  // quota exceeded
}

}  // namespace

outbox::outbox(outbox_host& host, store& s, committer& c, const client_options& opts)
    : host_(host), store_(s), committer_(c), opts_(opts) {
    s.for_each(table::outgoing, [&](const std::string& id, const std::string&) {
        if (auto n = parse_sequence_id(id)) sendq_.add(*n, nullptr);
        return true;
    });
    pending_.add(sendq_.waiting());
    if (opts_.mqtt_version != 5) max_packet_size_ = opts_.broker_maximum_packet_size_311;  // a 3.1.1 broker says none
    sender_ = std::thread([this] { sender_loop(); });
}

outbox::~outbox() { stop(); }

void outbox::log(log_level level, const std::string& text) const { log_to(opts_.hooks, level, text); }

std::shared_ptr<stored_message> outbox::read(std::uint64_t seq) const {
    const auto v = store_.get(table::outgoing, sequence_id(seq));
    return v ? std::make_shared<stored_message>(decode_record(*v)) : nullptr;
}

// ---------------------------------------------------------------------------------------------------
// publishing

void outbox::check_size(const stored_message& m) const {
    const auto limit = max_packet_size_.load();
    if (!limit) return;
    const auto size = publish_packet_size(m, opts_.mqtt_version == 5);
    if (size > limit)
        throw message_too_large("a message of " + std::to_string(size) + " bytes on " + m.topic +
                                " is larger than the broker takes (" + std::to_string(limit) + " bytes)");
}

void outbox::submit(stored_publish pub, std::shared_ptr<std::promise<void>> prom) {
    pending_.add(pub.seq, prom);  // counted from now, so wait_empty right after a publish waits for it
    std::lock_guard<std::mutex> order(seq_mu_);
    committer_.submit({std::move(pub.op)}, [this, seq = pub.seq, msg = pub.msg, prom](std::exception_ptr e) {
        if (!e) return on_stored(seq, msg, false);
        pending_.done();
        if (prom) {
            // fail_pending may have failed it already (client_closed): a promise is satisfied once.
            if (pending_.take(seq)) prom->set_exception(e);
            return;
        }
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log(log_level::error, std::string("a posted publish could not be stored: ") + ex.what());
            host_.storage_failed(ex.what());
        }
    });
}

void outbox::commit(std::vector<write_op> ops, std::vector<stored_publish> pubs) {
    for (auto& p : pubs) ops.push_back(p.op);
    committer_.commit(std::move(ops));
    pending_.add(pubs.size());
    for (auto& p : pubs) on_stored(p.seq, p.msg, true);
}

void outbox::stored(const std::vector<std::pair<std::uint64_t, std::shared_ptr<stored_message>>>& pubs,
                    bool send_here) {
    pending_.add(pubs.size());
    for (const auto& [seq, msg] : pubs) on_stored(seq, msg, send_here);
}

void outbox::on_stored(std::uint64_t seq, std::shared_ptr<stored_message> msg, bool send_here) {
    // Counted as pending by the caller, before the commit.
    std::unique_lock<std::mutex> lk(mu_);
    // Offline or far behind, the message waits on disk, not in memory.
    sendq_.add(seq, connected_ && sendq_.in_memory() < ready_cap ? std::move(msg) : nullptr);
    if (!has_work()) return;
    // A call's invoke or a command's outcome, with nothing ahead of it and room in the window, goes to the
    // session from the thread that stored it: waking the sender would put a hand-off (two context switches)
    // on the path of every call, twice. With more waiting, the sender hands over bursts (docs/benchmarks.md,
    // F17). Never from within a commit's `done` (send_here false): that runs on the committer's thread, or
    // on a caller leading a commit, which Paho's threads may be waiting for while they hold Paho's lock.
    if (send_here && !dispatching_ && sendq_.waiting() == 1 && sendq_.in_memory() == 1 &&
        dispatch(lk, nullptr) == outcome::sent && !has_work())
        return;
    send_cv_.notify_one();
}

void outbox::replay(std::uint64_t seq, stored_message rec) {
    pending_.add(1);
    std::lock_guard<std::mutex> lk(mu_);
    sendq_.again(seq, std::make_shared<stored_message>(std::move(rec)));
    if (has_work()) send_cv_.notify_one();
}

// ---------------------------------------------------------------------------------------------------
// the sender

bool outbox::has_work() const {
    if (!connected_ || send_blocked_ || buffer_full_ || !sendq_.burst_ready()) return false;
    return host_.may_send();
}

void outbox::sender_loop() {
    auto refused_pause = std::chrono::milliseconds(10);  // back-off while the session refuses for other reasons
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
        send_cv_.wait(lk, [&] { return stopping_ || (has_work() && !dispatching_); });
        if (stopping_) return;
        const auto o = dispatch(lk, nullptr);
        if (o == outcome::pause) {
            send_cv_.wait_for(lk, refused_pause, [&] { return stopping_; });
            refused_pause = std::min(refused_pause * 2, std::chrono::milliseconds(1000));
        } else if (o == outcome::sent) {
            refused_pause = std::chrono::milliseconds(10);
        }
    }
}

outbox::outcome outbox::dispatch(std::unique_lock<std::mutex>& lk, outbox_host::via from) {
    const auto gen = gen_;
    const auto freed = freed_;
    dispatching_ = true;
    // What the window allows, in one go: one lock hand-off per batch, not per message.
    std::vector<outbox_host::item> batch;
    for (auto& it : sendq_.take(batch_max)) batch.push_back({it.seq, std::move(it.msg), false});
    lk.unlock();

    std::vector<std::uint64_t> gone;                       // their records are gone: nothing to send
    std::vector<std::pair<std::uint64_t, std::size_t>> too_large;
    std::vector<outbox_host::item> sendable;
    const auto limit = max_packet_size_.load();
    for (auto& it : batch) {
        if (!it.msg) {
            try {
                it.msg = read(it.seq);
            } catch (const std::exception& e) {
                log(log_level::error, "outbox record " + sequence_id(it.seq) + " is unreadable: " + e.what());
                host_.storage_failed(e.what());
            }
            if (!it.msg) {
                gone.push_back(it.seq);
                continue;
            }
        }
        if (const auto size = publish_packet_size(*it.msg, opts_.mqtt_version == 5); limit && size > limit) {
            // Stored before this broker's limit was known (offline, or a call's invoke): the broker would
            // drop the connection at it, and this record would be sent first again, for ever.
            too_large.emplace_back(it.seq, size);
            continue;
        }
        sendable.push_back(std::move(it));
    }
    const auto refused = sendable.empty() ? outbox_host::refusal::none : host_.publish(sendable, from);
    for (const auto& [seq, size] : too_large)
        refuse(seq, 0x95, "the message (" + std::to_string(size) + " bytes) is larger than the broker takes (" +
                              std::to_string(limit) + " bytes)");

    lk.lock();
    dispatching_ = false;
    // Each only if still in flight: it may have completed, or failed and been queued again, meanwhile.
    for (auto seq : gone) sendq_.drop(seq);
    for (auto& it : sendable) {
        if (it.sent)
            sendq_.keep(it.seq, std::move(it.msg));
        else
            sendq_.not_taken(it.seq, std::move(it.msg));
    }
    switch (refused) {
        case outbox_host::refusal::none:
            return outcome::sent;
        case outbox_host::refusal::buffer_full:
        case outbox_host::refusal::disconnected:
            // A refusal by the client of a connection that has been replaced since says nothing about the
            // new one: blocking on it would stall the outbox until the next reconnect.
            if (gen != gen_) return outcome::held;
            // A publish that completed or failed while the lock was let go made room, and its wake-up found
            // this dispatch under way: waiting for the next one could wait for ever.
            if (refused == outbox_host::refusal::buffer_full && freed != freed_) return outcome::held;
            (refused == outbox_host::refusal::buffer_full ? buffer_full_ : send_blocked_) = true;
            return outcome::held;
        case outbox_host::refusal::other:
            break;
    }
    // No connection problem (the session could not store its record on a full disk), and no reconnect
    // would come to end a wait for one: try again after a pause.
    return gen != gen_ ? outcome::held : outcome::pause;
}

// ---------------------------------------------------------------------------------------------------
// outcomes

void outbox::on_delivered(std::uint64_t seq, int reason_code, outbox_host::via from) {
    // Paho reports success even when an MQTT 5 PUBREC carries a failure reason code.
    if (reason_code >= 0x80) return refuse(seq, reason_code);
    std::shared_ptr<std::promise<void>> prom;
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (!sendq_.finish(seq)) return;  // completed already
        made_room();
        prom = pending_.take(seq);
        if (has_work() && !dispatching_) {
            if (from && host_.is_current(from)) {
                // The window has room: hand the session the next batch from here, on its receive thread,
                // which holds Paho's lock already. Woken for it, the sender thread would wait for that lock
                // against Paho's threads and cost two more context switches (docs/benchmarks.md, F17). The
                // session is inside a callback of `from`, so it cannot be destroyed meanwhile. Pauses after
                // other refusals are the sender thread's: a callback must not sleep.
                if (dispatch(lk, from) == outcome::pause || has_work()) send_cv_.notify_one();
            } else {
                send_cv_.notify_one();
            }
        }
    }
    ++published_;
    host_.maybe_drained();
    if (prom) prom->set_value();
    // Only costs a duplicate after a crash if lost: no sync of its own, it joins the next commit.
    committer_.submit({{table::outgoing, sequence_id(seq), std::nullopt}}, [this](std::exception_ptr e) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                // Only costs a duplicate after a restart; still, say so.
                log(log_level::error, std::string("removing a completed publish failed: ") + ex.what());
                host_.storage_failed(ex.what());
            }
        }
        pending_.done();
    }, urgency::background);
}

void outbox::on_send_failed(std::uint64_t seq, int rc, int reason_code, outbox_host::via from) {
    if (reason_code >= 0x80) return refuse(seq, reason_code);
    // A publish of an earlier connection's client that fails now (its queued command, once Paho notices
    // the loss) was taken back into the outbox when the connection was replaced, and may be in flight on the
    // current one already: sent again here, it reached the broker twice (finding H8).
    if (from && !host_.is_current(from)) return;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto msg = sendq_.take_back(seq);
        if (!msg) return;
        // Lost with the connection or the session: it is sent again, as the outbox promises.
        sendq_.again(seq, std::move(*msg));
        made_room();
        send_cv_.notify_one();
    }
    log(log_level::debug, "publish " + sequence_id(seq) + " interrupted (rc " + std::to_string(rc) + "), will resend");
    host_.maybe_drained();
}

void outbox::refuse(std::uint64_t seq, int reason_code, const std::string& reason) {
    if (transient_refusal(reason_code)) return refuse_for_now(seq, reason_code);
    std::shared_ptr<stored_message> msg;
    std::shared_ptr<std::promise<void>> prom;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto m = sendq_.take_back(seq);
        if (m) prom = pending_.take(seq);
        sendq_.forget_refusals(seq);
        if (m) made_room();
        send_cv_.notify_one();
        if (!m) return;  // completed or refused already
        msg = std::move(*m);
    }
    host_.maybe_drained();
    const std::string why = !reason.empty() ? reason
                                            : "broker refused the publish with reason code " + std::to_string(reason_code) +
                                                  (reason_code == 0x87 ? " (not authorized)" : "");
    if (!msg) {
        // Sent from disk (a resumed or backlogged publish): the dead letter needs the record.
        try {
            msg = read(seq);
        } catch (const std::exception& e) {
            log(log_level::error, "outbox record " + sequence_id(seq) + " is unreadable: " + e.what());
        }
    }
    log(log_level::error, why + (msg ? " on " + msg->topic : ""));
    // Sending it again would be refused again; keep it as a dead letter so nothing vanishes silently.
    std::vector<write_op> ops{{table::outgoing, sequence_id(seq), std::nullopt}};
    std::function<void()> then;
    if (msg) {
        stored_message dl = *msg;
        dl.error = why;
        dl.outgoing = true;
        ops.push_back({table::dead_letters, sequence_id(seq), encode_record(dl)});
        then = host_.refused(*msg, reason_code, why, ops);
    }
    try {
        committer_.commit(std::move(ops));
    } catch (const std::exception& e) {
        // Still in the outbox: sent again (and refused again) after a restart.
        log(log_level::error, std::string("storing the dead letter of a refused publish failed: ") + e.what());
        host_.storage_failed(e.what());
        if (prom) prom->set_exception(std::make_exception_ptr(broker_error(why, reason_code)));
        return;
    }
    pending_.done();
    if (then) then();
    if (msg) {
        message m;
        m.topic = msg->topic;
        m.payload = msg->payload;
        m.props = msg->props;
        m.id = sequence_id(seq);
        fire_hook(opts_.hooks, opts_.hooks.on_dead_letter, m, why);
    }
    if (prom) prom->set_exception(std::make_exception_ptr(broker_error(why, reason_code)));
}

void outbox::refuse_for_now(std::uint64_t seq, int reason_code) {
    std::shared_ptr<stored_message> msg;
    std::chrono::milliseconds delay;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto m = sendq_.take_back(seq);
        if (!m) return;
        msg = std::move(*m);
        made_room();
        const auto n = std::min<std::uint32_t>(sendq_.count_refusal(seq), 16);
        delay = std::min(opts_.reconnect_min * (1 << n), opts_.reconnect_max);
        send_cv_.notify_one();
    }
    host_.maybe_drained();
    log(log_level::warning, "broker refused publish " + sequence_id(seq) + " for now (reason code " +
                                std::to_string(reason_code) + "): sent again in " + std::to_string(delay.count()) + " ms");
    host_.schedule(std::chrono::steady_clock::now() + delay, [this, seq, msg] {
        std::lock_guard<std::mutex> lk(mu_);
        sendq_.again(seq, msg);
        if (has_work()) send_cv_.notify_one();
    });
}

void outbox::on_resumed_complete(int packet_id) {
    std::uint64_t seq;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!sendq_.resumes(packet_id)) return;  // a flow of this client: its token reports it
        if (connecting_) {
            // Paho also removes records while it handles CONNACK when the broker has no session: decided
            // once the connect returns (session present: delivered; no session: sent again).
            removed_while_connecting_.push_back(packet_id);
            return;
        }
        seq = *sendq_.end_resumed(packet_id);  // in flight now
        if (opts_.mqtt_version == 5) {
            // Paho removes a resumed flow's record at PUBCOMP and also at a PUBREC that refuses it (an ACL
            // denial whose answer a cut had kept from the first attempt), and it reports neither for a
            // flow it restored: taken for a delivery, a refusal would pass for success. Sent again under a
            // new packet id instead, where the outcome is reported: a duplicate at worst. (MQTT 3.1.1 has
            // no refusing PUBREC.)
            sendq_.take_back(seq);
            sendq_.again(seq, nullptr);
            send_cv_.notify_one();
            return;
        }
    }
    on_delivered(seq, 0);
}

bool outbox::give_up_resumed(int packet_id, const std::string& why) {
    std::optional<std::uint64_t> seq;
    {
        std::lock_guard<std::mutex> lk(mu_);
        seq = sendq_.end_resumed(packet_id);  // in flight now, where refuse() takes it from
    }
    if (!seq) return false;
    refuse(*seq, 0x80, why);
    return true;
}

// ---------------------------------------------------------------------------------------------------
// connections

void outbox::new_client(const std::map<int, std::uint64_t>& resumable,
                        const std::function<bool(int, const stored_message&)>& carries) {
    // Only a flow whose record is this very publish: its completion is then this record's delivery.
    auto resumes = [&](int packet_id, std::uint64_t seq, std::shared_ptr<stored_message> msg) {
        try {
            if (!msg) msg = read(seq);
            return msg && carries(packet_id, *msg);
        } catch (const std::exception& e) {
            log(log_level::warning, "publish " + std::to_string(seq) + " is sent again: its flow under packet id " +
                                        std::to_string(packet_id) + " cannot be checked (" + e.what() + ")");
            return false;
        }
    };
    std::lock_guard<std::mutex> lk(mu_);
    removed_while_connecting_.clear();  // ids of the previous client's connect: they mean nothing here
    sendq_.new_client(resumable, resumes);
    log(log_level::debug, "new Paho client: " + std::to_string(sendq_.resumed()) + " flows resumed by Paho, " +
                              std::to_string(sendq_.to_send_again()) + " publishes to send again");
}

void outbox::connecting() {
    std::lock_guard<std::mutex> lk(mu_);
    connecting_ = true;
}

void outbox::connect_returned(bool session_present) {
    std::vector<int> finished;
    {
        std::lock_guard<std::mutex> lk(mu_);
        connecting_ = false;
        if (!session_present) {
            // The broker forgot the session, and Paho dropped the flows it was resuming: send again.
            sendq_.session_lost();
        } else {
            finished.swap(removed_while_connecting_);
        }
        removed_while_connecting_.clear();
    }
    for (int packet_id : finished) on_resumed_complete(packet_id);
}

void outbox::connect_failed() {
    std::lock_guard<std::mutex> lk(mu_);
    connecting_ = false;
}

void outbox::up(std::size_t window) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;  // a connect that completes while the client closes sends nothing more
    sendq_.set_window(window);
    connected_ = true;
    send_blocked_ = false;
    buffer_full_ = false;
    ++gen_;
    send_cv_.notify_all();
}

void outbox::down() {
    std::lock_guard<std::mutex> lk(mu_);
    connected_ = false;
}

// ---------------------------------------------------------------------------------------------------
// state

std::size_t outbox::size() const { return pending_.size(); }

bool outbox::wait_empty(std::chrono::milliseconds timeout) { return pending_.wait_empty(timeout); }

bool outbox::drained() const {
    std::lock_guard<std::mutex> lk(mu_);
    return !connected_ || sendq_.drained();
}

void outbox::wake() {
    std::lock_guard<std::mutex> lk(mu_);
    if (has_work()) send_cv_.notify_one();
}

void outbox::stop() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stopping_ = true;
        connected_ = false;
        send_cv_.notify_all();
    }
    if (sender_.joinable() && sender_.get_id() != std::this_thread::get_id()) sender_.join();
}

void outbox::fail_pending() {
    for (auto& [s, p] : pending_.take_all())
        p->set_exception(std::make_exception_ptr(client_closed("client closed before the publish completed (it stays in the outbox)")));
}

}  // namespace xymqtt::detail
