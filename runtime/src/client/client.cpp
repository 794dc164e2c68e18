#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "base/clock.h"
#include "client/client_impl.h"
#include "commands/wire.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt {

namespace {

constexpr std::size_t max_payload = 268435455 - 65536;  // MQTT's limit less room for topic and properties

}  // namespace

// ---------------------------------------------------------------------------------------------------
// construction

client::impl::impl(client_options opts) : opts_(std::move(opts)) {
    if (opts_.client_id.empty())
        throw configuration_error("client_id is required: a stable id names the session and the store");
    if (!opts_.hooks.on_log) {
        // Warnings must not be invisible: without a logger of the application's, they go to stderr.
        if (const auto level = log_level_from_env()) opts_.hooks.on_log = stream_logger(std::cerr, *level, opts_.client_id);
    }
    if (opts_.mqtt_version != 5 && opts_.mqtt_version != 4)
        throw configuration_error("mqtt_version must be 5 or 4 (3.1.1), not " + std::to_string(opts_.mqtt_version));
    detail::session::check(opts_);  // server URIs, TLS
    if (opts_.session_expiry.count() <= 0 && opts_.mqtt_version == 5)
        throw configuration_error("session_expiry must be > 0: with 0 the session dies at each disconnect");
    if (opts_.max_inflight == 0) throw configuration_error("max_inflight must be > 0");
    if (opts_.broker_receive_maximum_311 == 0) throw configuration_error("broker_receive_maximum_311 must be > 0");
    if (opts_.resend_unanswered_after && opts_.resend_unanswered_after->count() <= 0)
        throw configuration_error("resend_unanswered_after must be > 0 (or unset: never)");
    // Per-client result topics, if this client can have them: its default, or asked for by a call.
    detail::command_caller::options co;
    co.mqtt_version = opts_.mqtt_version;
    co.client_id = opts_.client_id;
    co.routing = opts_.results;
    co.resend_after = opts_.resend_unanswered_after;
    co.closed = "the client is closed";
    try {
        if (opts_.mqtt_version != 5) throw configuration_error("per-client result topics need MQTT 5 (the invoke's Response Topic)");
        try {
            validate_topic_token("client_id", opts_.client_id);
            validate_topic_name(opts_.results_prefix);
        } catch (const invalid_topic& e) {
            throw configuration_error(std::string("per-client result topics: ") + e.what());
        }
        co.results_root = opts_.results_prefix + "/" + opts_.client_id;
    } catch (const configuration_error& e) {
        if (opts_.results == result_routing::per_client) throw;
        co.no_results_root = e.what();
    }

    if (opts_.store) {
        store_ = opts_.store;
    } else {
        if (opts_.store_dir.empty()) throw configuration_error("store_dir (or store) is required");
        store_options so;
        so.durability = opts_.durability;
        store_ = std::shared_ptr<store>(open_store(opts_.store_type, opts_.store_dir, so));
    }
    committer_ = std::make_unique<detail::committer>(*store_);

    // Recover: the next id, the outbox to send, the inbox to handle.
    std::uint64_t last = 0;
    for (auto t : {table::outgoing, table::incoming, table::dead_letters})
        if (auto id = store_->last_id(t))
            if (auto n = parse_sequence_id(*id)) last = std::max(last, *n);
    next_seq_ = last + 1;
    inbox_ = std::make_unique<detail::inbox>(inbox_link_, opts_);
    inbox_->recover(*store_);

    if (opts_.receive_maximum == 0) {
        const bool one_by_one =
            store_->durability() == durability::fsync && !detail::session::groups_arrivals(opts_, *store_);
        opts_.receive_maximum = one_by_one ? 1 : 8;
    }

    session_ = std::make_unique<detail::session>(session_link_, opts_, *store_);
    command_server_ = std::make_unique<detail::command_server>(command_link_, opts_.hooks);
    command_caller_ = std::make_unique<detail::command_caller>(command_link_, opts_.hooks, std::move(co));

    purge_expired_results();
    outbox_ = std::make_unique<detail::outbox>(outbox_link_, *store_, *committer_, opts_);  // recovers, starts sending
    try {
        command_caller_->resume(stored_calls());
    } catch (const std::exception& e) {
        // The threads run already: a constructor that threw now would leave them to std::terminate.
        log(log_level::error, std::string("unanswered calls not scheduled to be sent again: ") + e.what());
    }
    session_->start();
}

client::impl::~impl() {
    close();
    inbox_.reset();  // waits for lanes left running by a close() from their own handler: they touch this
    command_server_->wait_ended();  // likewise a command thread that closed or unregistered its own command
}

void client::impl::log(log_level level, const std::string& text) const { detail::log_to(opts_.hooks, level, text); }

void client::impl::require_open() const {
    if (closing_) throw client_closed("client is closed");
}

// ---------------------------------------------------------------------------------------------------
// connection

void client::impl::connect() {
    require_open();
    session_->connect();
}

bool client::impl::wait_connected(std::chrono::milliseconds timeout) { return session_->wait_connected(timeout); }

bool client::impl::is_connected() const { return session_->is_connected(); }

void client::impl::close() {
    // One close at a time: a second caller waits until the first is done, except a handler, whose lane
    // the first may be joining.
    std::unique_lock<std::mutex> once(close_mu_, std::defer_lock);
    if (inbox_->on_handler_thread()) {
        if (!once.try_lock()) return;
    } else {
        once.lock();
    }
    closing_ = true;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) return;
    }
    outbox_->stop();
    inbox_->halt();
    command_caller_->stop();
    session_->stop();
    timers_.stop();
    // Disconnect before stopping the lanes and the writer: a delivery being committed in Paho's
    // callback must finish (or be refused) before the writer goes.
    session_->disconnect();
    inbox_->join();
    command_server_->stop();  // the calls at work are answered (committed); later answers wait for a restart
    committer_->stop();
    {
        std::lock_guard<std::mutex> lk(mu_);
        closed_ = true;
    }
    outbox_->fail_pending();
    command_caller_->close(std::make_exception_ptr(client_closed("client closed before the result arrived")));
    session_->release();  // Paho must stop calling us before the members it uses go
}

// ---------------------------------------------------------------------------------------------------
// outbox

client::impl::stored_publish client::impl::make_publish(const std::string& topic, std::string payload,
                                                         message_properties props, bool retain,
                                                         const std::string& kind) {
    auto m = std::make_shared<stored_message>();
    m->topic = topic;
    m->payload = std::move(payload);
    m->props = std::move(props);
    m->retain = retain;
    m->created_ms = detail::wall_ms();
    m->kind = kind;
    const auto seq = next_seq_++;
    return stored_publish{seq, m, write_op{table::outgoing, sequence_id(seq), encode_record(*m)}};
}

std::future<void> client::impl::publish(const std::string& topic, std::string payload, publish_options opts) {
    auto prom = std::make_shared<std::promise<void>>();
    auto fut = prom->get_future();
    post(topic, std::move(payload), std::move(opts), std::move(prom));
    return fut;
}

void client::impl::post(const std::string& topic, std::string payload, publish_options opts,
                        std::shared_ptr<std::promise<void>> prom) {
    validate_topic_name(topic);
    validate_properties(opts.props);
    if (payload.size() > max_payload)
        throw message_too_large("payload of " + std::to_string(payload.size()) + " bytes is larger than MQTT allows");
    require_open();
    auto pub = make_publish(topic, std::move(payload), std::move(opts.props), opts.retain, "");
    outbox_->check_size(*pub.msg);
    outbox_->submit(std::move(pub), std::move(prom));
}

// ---------------------------------------------------------------------------------------------------
// inbox

std::optional<std::string> client::impl::on_arrived(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                                    const std::function<void()>& stored) {
    // On Paho's receive thread, before the acknowledgement leaves: the commit here is what makes it safe.
    arrival a = take_arrival(std::move(rec), sub_ids);
    const bool early = answers_early(a);
    if (early) hand_on(a);
    if (!commit_arrival(a.ops)) return std::string("the message could not be stored");
    stored();
    if (!early) hand_on(a);
    return std::nullopt;
}

void client::impl::on_arrived_later(stored_message rec, const std::vector<std::uint32_t>& sub_ids,
                                    std::function<void(const std::optional<std::string>&)> done) {
    // The acknowledgement waits in the session's gate until the commit is durable; the commit joins the
    // others queued meanwhile.
    auto a = std::make_shared<arrival>(take_arrival(std::move(rec), sub_ids));
    // A delivery for a lane waits for the sync, so that its handler runs once however often the commit fails.
    const bool early = answers_early(*a);
    auto ops = std::move(a->ops);  // the records, payloads included: the commit needs them, nothing after it
    committer_->submit(std::move(ops), [this, a, early, done = std::move(done)](std::exception_ptr e) {
        if (!e) {
            if (!early) hand_on(*a);
            return done(std::nullopt);
        }
        std::string why = "the message could not be stored";
        try {
            std::rethrow_exception(e);
        } catch (const client_closed&) {
        } catch (const std::exception& x) {
            log(log_level::error, std::string("cannot store an arriving message: ") + x.what());
            fire(opts_.hooks.on_storage_error, std::string(x.what()));
            why += std::string(": ") + x.what();
        } catch (...) {
        }
        done(why);
    });
    if (early) hand_on(*a);
}

bool client::impl::answers_early(const arrival& a) const {
    // With fsync, an awaited result completes its call before its commit (the call record's removal) has
    // synced: until the acknowledgement leaves, a crash or a failed commit only has the broker send it
    // again, and a call completes once. That keeps the sync off the call's round trip.
    return a.result && store_->durability() == durability::fsync;
}

client::impl::arrival client::impl::take_arrival(stored_message rec, const std::vector<std::uint32_t>& sub_ids) {
    arrival a;
    a.recs = inbox_records(std::move(rec), sub_ids);
    if (a.recs.size() == 1) a.result = command_caller_->awaited_result(a.recs.front().second);
    if (a.result)
        a.ops.push_back({table::calls, a.result->message_id, std::nullopt});  // the call is answered
    else
        for (const auto& [id, r] : a.recs) a.ops.push_back({table::incoming, id, encode_record(r)});
    return a;
}

void client::impl::hand_on(arrival& a) {
    // Stored: from here on a failure costs at most a delay, never the message.
    if (a.result) {
        try {
            // What the result lane does, without the inbox record, the hand-off to the lane and a second
            // synced commit: the round trip of a call is shorter by all three.
            fire(opts_.hooks.on_message, detail::message_of(a.recs.front().first, a.recs.front().second, 1));
            command_caller_->answer(*a.result);
            inbox_->handled_elsewhere();
        } catch (const std::exception& e) {
            log(log_level::error, std::string("the completion of call ") + a.result->message_id + " failed: " + e.what());
        } catch (...) {
            log(log_level::error, "the completion of call " + a.result->message_id + " failed");
        }
        return;
    }
    try {
        inbox_->take(std::move(a.recs));
    } catch (const std::exception& e) {
        log(log_level::error, std::string("a stored message could not be queued (it is handled after a restart): ") + e.what());
    }
}

bool client::impl::commit_arrival(const std::vector<write_op>& ops) {
    // Paho's lock is held: every client of the process waits meanwhile. A few quick tries cover a passing
    // failure; past them the arrival is refused and the broker's resend tries again after a reconnect.
    auto delay = std::chrono::milliseconds(2);
    for (int attempt = 1;; ++attempt) {
        try {
            committer_->commit(ops, detail::urgency::now);
            return true;
        } catch (const client_closed&) {
            return false;
        } catch (const std::exception& e) {
            log(log_level::error, std::string("cannot store an arriving message: ") + e.what());
            fire(opts_.hooks.on_storage_error, std::string(e.what()));
        }
        if (closing_ || attempt == 4) return false;
        std::this_thread::sleep_for(delay);  // storage back-off: nothing to await but the disk
        delay *= 4;
    }
}

std::vector<std::pair<std::string, stored_message>> client::impl::inbox_records(
    stored_message rec, const std::vector<std::uint32_t>& sub_ids) {
    const auto filters = inbox_->lanes_for(rec.topic, sub_ids);
    std::vector<std::pair<std::string, stored_message>> out;
    for (const auto& f : filters) {
        rec.lane = f;
        out.emplace_back(sequence_id(next_seq_++), rec);
    }
    return out;
}

subscription_id client::impl::add_handler(const std::string& filter, lane_handler handler, unsigned concurrency,
                                          bool batch) {
    validate_topic_filter(filter);
    require_open();
    const subscription_id id = next_sub_++;
    session_->subscribe(filter,
                        [&] { return inbox_->add_handler(id, filter, std::move(handler), concurrency, batch); });
    return id;
}

void client::impl::remove_handler(subscription_id id) {
    if (command_caller_->remove_result_handler(id)) return;
    // The last handler of its lane: the lane stops, and the subscription goes.
    if (const auto filter = inbox_->remove_handler(id)) session_->unsubscribe(*filter);
}

void client::impl::remove_filter(const std::string& filter) {
    for (auto id : inbox_->handlers_of(filter)) remove_handler(id);
}

// ---------------------------------------------------------------------------------------------------
// commands

void client::impl::command_register(const std::string& command, command_handler handler, command_options opts) {
    command_server_->add(command, std::move(handler), opts);
}

void client::impl::command_register(const std::string& command, deferred_command_handler handler,
                                    command_options opts) {
    command_server_->add(command, std::move(handler), opts);
}

void client::impl::command_unregister(const std::string& command) { command_server_->remove(command); }

subscription_id client::impl::subscribe_results(const std::string& command, result_handler handler,
                                                std::optional<result_routing> routing) {
    return command_caller_->subscribe_results(command, std::move(handler), routing);
}

call_handle client::impl::call(const std::string& command, std::string body, call_options opts) {
    require_open();
    return command_caller_->call(command, std::move(body), opts);
}

call_handle client::impl::call_async(const std::string& command, std::string body, call_options opts,
                                     std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    require_open();
    return command_caller_->call_async(command, std::move(body), opts, timeout, std::move(done));
}

std::vector<std::string> client::impl::stored_calls() const {
    std::vector<std::string> ids;
    store_->for_each(table::calls, [&](const std::string& id, const std::string&) {
        ids.push_back(id);
        return true;
    });
    return ids;
}

void client::impl::purge_expired_results() {
    const auto cutoff = detail::wall_ms() - std::int64_t(opts_.result_retention.count()) * 1000;
    std::vector<write_op> ops;
    try {
        for (auto t : {table::results, table::calls}) {
            store_->for_each(t, [&](const std::string& id, const std::string& v) {
                try {
                    if (decode_record(v).created_ms < cutoff) ops.push_back({t, id, std::nullopt});
                } catch (const storage_error&) {
                    ops.push_back({t, id, std::nullopt});
                }
                return true;
            });
        }
        if (!ops.empty()) committer_->commit(std::move(ops));
    } catch (const std::exception& e) {
        log(log_level::error, std::string("purging old command results failed: ") + e.what());
    }
    schedule(std::chrono::steady_clock::now() + std::chrono::hours(1), [this] { purge_expired_results(); });
}

// ---------------------------------------------------------------------------------------------------
// inspection

std::vector<dead_letter> client::impl::dead_letters() const { return detail::inbox::dead_letters(*store_); }

bool client::impl::replay_dead_letter(const std::string& id) {
    auto v = store_->get(table::dead_letters, id);
    if (!v) return false;
    stored_message rec = decode_record(*v);
    rec.error.clear();
    rec.attempts = 0;
    rec.next_attempt_ms = 0;
    if (rec.outgoing) {
        // Refused by the broker on its way out: back to the outbox, sent again under its own id.
        rec.outgoing = false;
        const auto seq = parse_sequence_id(id);
        if (!seq) return false;
        committer_->commit({{table::dead_letters, id, std::nullopt}, {table::outgoing, id, encode_record(rec)}});
        inbox_->count_dead(-1);
        outbox_->replay(*seq, std::move(rec));
        return true;
    }
    inbox_->replay(id, std::move(rec));
    return true;
}

bool client::impl::purge_dead_letter(const std::string& id) {
    if (!store_->get(table::dead_letters, id)) return false;
    committer_->commit({{table::dead_letters, id, std::nullopt}});
    inbox_->count_dead(-1);
    return true;
}

bool client::impl::wait_outbox_empty(std::chrono::milliseconds timeout) { return outbox_->wait_empty(timeout); }

bool client::impl::wait_inbox_empty(std::chrono::milliseconds timeout) { return inbox_->wait_empty(timeout); }

client_stats client::impl::stats() const {
    client_stats s;
    s.inbox = inbox_->size();
    s.dead_letters = inbox_->dead();
    s.handled = inbox_->handled();
    s.retries = inbox_->retries();
    s.outbox = outbox_->size();
    s.published = outbox_->published();
    s.delivered = session_->delivered();
    s.connected = session_->is_connected();
    s.last_error = session_->last_error();
    s.server_uri = session_->server_uri();
    s.nagle_streams = session_->nagle_streams();
    return s;
}

std::vector<metric> client::impl::metrics() const {
    const auto s = stats();
    const std::size_t calls_at_work = command_server_->at_work();
    using k = metric::kind;
    return {
        {"xymqtt_published_total", k::counter, double(s.published), "publishes completed (QoS 2 flow done)"},
        {"xymqtt_delivered_total", k::counter, double(s.delivered), "deliveries committed to the inbox"},
        {"xymqtt_handled_total", k::counter, double(s.handled), "deliveries handled"},
        {"xymqtt_retries_total", k::counter, double(s.retries), "handler runs that threw and were retried"},
        {"xymqtt_nagle_streams_total", k::counter, double(s.nagle_streams), "arrival streams coalesced by Nagle"},
        {"xymqtt_outbox_messages", k::gauge, double(s.outbox), "publishes stored and not yet completed"},
        {"xymqtt_inbox_messages", k::gauge, double(s.inbox), "deliveries stored and not yet handled"},
        {"xymqtt_dead_letters", k::gauge, double(s.dead_letters), "messages in the dead-letter table"},
        {"xymqtt_calls_at_work", k::gauge, double(calls_at_work), "command calls this server is running"},
        {"xymqtt_connected", k::gauge, s.connected ? 1.0 : 0.0, "1 while connected to the broker"},
    };
}

// ---------------------------------------------------------------------------------------------------
// client: the public face

client::client(client_options opts) : impl_(std::make_unique<impl>(std::move(opts))) {}
client::~client() { impl_->close(); }
void client::connect() { impl_->connect(); }
bool client::wait_connected(std::chrono::milliseconds timeout) { return impl_->wait_connected(timeout); }
bool client::is_connected() const { return impl_->is_connected(); }
void client::close() { impl_->close(); }
std::vector<metric> client::metrics() const { return impl_->metrics(); }
std::future<void> client::publish(const std::string& topic, std::string payload, publish_options opts) {
    return impl_->publish(topic, std::move(payload), std::move(opts));
}
void client::post(const std::string& topic, std::string payload, publish_options opts) {
    impl_->post(topic, std::move(payload), std::move(opts), nullptr);
}
subscription_id client::subscribe(const std::string& filter, message_handler handler) {
    if (!handler) throw error("subscribe needs a handler");
    return impl_->add_handler(filter, [h = std::move(handler)](const message& m, effects&) { h(m); }, 1, true);
}
void client::unsubscribe(subscription_id id) { impl_->remove_handler(id); }
void client::unsubscribe(const std::string& filter) { impl_->remove_filter(filter); }
void client::command_register(const std::string& command, command_handler handler, command_options opts) {
    impl_->command_register(command, std::move(handler), std::move(opts));
}

void client::command_register(const std::string& command, deferred_command_handler handler, command_options opts) {
    impl_->command_register(command, std::move(handler), std::move(opts));
}
void client::command_unregister(const std::string& command) { impl_->command_unregister(command); }
subscription_id client::subscribe_results(const std::string& command, result_handler handler) {
    return impl_->subscribe_results(command, std::move(handler), std::nullopt);
}

subscription_id client::subscribe_results(const std::string& command, result_handler handler,
                                          std::optional<result_routing> routing) {
    return impl_->subscribe_results(command, std::move(handler), routing);
}
call_handle client::call(const std::string& command, std::string body, call_options opts) {
    return impl_->call(command, std::move(body), opts);
}
call_handle client::call_async(const std::string& command, std::string body, call_options opts,
                               std::optional<std::chrono::milliseconds> timeout, call_completion done) {
    return impl_->call_async(command, std::move(body), opts, timeout, std::move(done));
}
std::vector<dead_letter> client::dead_letters() const { return impl_->dead_letters(); }
bool client::replay_dead_letter(const std::string& id) { return impl_->replay_dead_letter(id); }
bool client::purge_dead_letter(const std::string& id) { return impl_->purge_dead_letter(id); }
bool client::wait_outbox_empty(std::chrono::milliseconds timeout) { return impl_->wait_outbox_empty(timeout); }
bool client::wait_inbox_empty(std::chrono::milliseconds timeout) { return impl_->wait_inbox_empty(timeout); }
client_stats client::stats() const { return impl_->stats(); }
const client_options& client::options() const { return impl_->opts_; }

}  // namespace xymqtt
