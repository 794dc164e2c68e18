#include "session/session.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>

#include <algorithm>

#include "base/clock.h"
#include "base/hook_calls.h"
#include "session/ack_gate.h"
#include "session/paho_listeners.h"
#include "session/paho_message.h"
#include "session/paho_persistence.h"
#include "session/paho_waker.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {

// ---------------------------------------------------------------------------------------------------
// construction

session::session(session_host& host, const client_options& opts, store& s)
    : host_(host),
      opts_(opts),
      store_(s),
      persistence_(std::make_unique<paho_persistence>(
          store_.session(), opts_.mqtt_version == 4 && opts_.durability == durability::fsync,
          [this](const std::string& e) {
              log(log_level::error, e);
              fire(opts_.hooks.on_storage_error, e);
          })),
      gate_(groups_arrivals(opts, s)
                ? std::make_unique<ack_gate>([this](log_level level, const std::string& text) { log(level, text); })
                : nullptr),
      arrivals_(
          host_, *persistence_, gate_.get(), opts_,
          [this] {
              std::lock_guard<std::mutex> lk(mu_);
              hold_off_ = std::chrono::milliseconds(0);
          },
          [this](const std::string& why) { refuse_arrival(why); }),
      connector_(opts, [this](const std::string& w) { log(log_level::warning, "broker " + server_uri() + ": " + w); }),
      socket_(opts, [this](log_level level, const std::string& text) { log(level, text); }),
      clients_([this](std::size_t kept) {
          log(log_level::debug, "kept " + std::to_string(kept) +
                                    " Paho client(s) undestroyed: a failed publish left them with freed memory");
      }) {
    if (!opts_.paho_trace && !std::getenv("MQTT_C_CLIENT_TRACE") && !std::getenv("MQTT_C_CLIENT_TRACE_LEVEL")) {
        // Paho C, as Debian builds it, records every function it enters and leaves, and formats each
        // packet it logs, into an in-memory trace under global locks; nothing reads it unless tracing
        // is asked for. Errors only: -18 % CPU per message here (docs/benchmarks.md, F19).
        MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    }

    persistence_->on_complete([this](int packet_id) {
        ++completed_;
        host_.resumed_complete(packet_id);
    });
    persistence_->on_stale([this](int packet_id) {
        cut_connection("the broker sent a new message under packet id " + std::to_string(packet_id) +
                       ", whose earlier flow it has forgotten (restarted from an older state?)");
    });

    listener_ = std::make_unique<publish_listener>(
        opts_.mqtt_version == 5, clients_,
        [this](std::uint64_t seq, int reason_code, const void* via) {
            ++completed_;
            host_.delivered(seq, reason_code, via);
        },
        [this](std::uint64_t seq, int rc, int reason_code, const void* via) { host_.send_failed(seq, rc, reason_code, via); });
}

session::~session() {
    stop();
    release();
}

void session::log(log_level level, const std::string& text) const { log_to(opts_.hooks, level, text); }

template <class F, class... A>
void session::fire(const F& hook, A&&... args) const {
    fire_hook(opts_.hooks, hook, std::forward<A>(args)...);
}

void session::start() {
    connect_gate::process().join(&gate_member_);
    paho_waker::process().join(&clients_);
    thread_ = std::thread([this] { connection_loop(); });
}

void session::connect() {
    std::lock_guard<std::mutex> lk(mu_);
    want_connect_ = true;
    conn_cv_.notify_all();
}

bool session::wait_connected(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return state_cv_.wait_for(lk, timeout, [&] { return connected_ || stopping_; }) && connected_;
}

bool session::is_connected() const {
    std::lock_guard<std::mutex> lk(mu_);
    return connected_;
}

std::string session::last_error() const {
    std::lock_guard<std::mutex> lk(mu_);
    return last_error_;
}

bool session::groups_arrivals(const client_options& opts, const store& s) {
    if (!opts.group_arrivals || opts.mqtt_version != 5 || s.durability() != durability::fsync) return false;
    const auto servers = connector::servers_of(opts);
    return std::none_of(servers.begin(), servers.end(), [](const connector::server& v) { return v.tls; });
}

std::size_t session::nagle_streams() const { return socket_.nagle_streams(); }

void session::stop() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (stopping_ && !thread_.joinable()) return;
        stopping_ = true;
        conn_cv_.notify_all();
        state_cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    connect_gate::process().leave(&gate_member_);
}

void session::disconnect() {
    socket_.detach_nagle();
    // Before the inbox's lanes and the store's writer stop: a delivery being committed in Paho's callback
    // must finish (or be refused) first.
    if (auto cli = clients_.current()) {
        try {
            if (cli->is_connected()) cli->disconnect(std::chrono::milliseconds(500))->wait_for(std::chrono::seconds(2));
        } catch (const mqtt::exception&) {
        }
    }
    std::lock_guard<std::mutex> lk(mu_);
    connected_ = false;
}

void session::release() {
    paho_waker::process().leave(&clients_);
    clients_.release();
}

// ---------------------------------------------------------------------------------------------------
// connecting

void session::fresh_paho() {
    // A new Paho client for every connection. Paho C 1.3 resends in-flight publishes from its own memory
    // after a reconnect, and a publish whose write failed half-way is resent from freed memory (seen
    // here as garbage payloads and a broker that drops the connection each time). The outbox holds every
    // unfinished publish, so a fresh client plus a resend from the outbox is both simpler and safe.
    clients_.retire();  // disconnected; kept until release() (paho_clients.h)
    socket_.release();
    paho_persistence::purge_commands(store_.session());
    persistence_->new_connection();
    give_up_stuck_flow();
    {
        auto flows = persistence_->outbound_publishes();
        std::lock_guard<std::mutex> lk(mu_);
        resuming_ = std::move(flows);
    }
    mqtt::create_options co(opts_.mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
    co.set_send_while_disconnected(false);  // the outbox holds what waits, on disk
    // Paho refuses publishes (-12) once this many wait in its command queue, connected or not.
    co.set_max_buffered_messages(static_cast<int>(std::min<std::size_t>(opts_.max_inflight, 65000)) + 64);
    const std::string uri = gate_ ? gate_->uri() : connector_.servers()[server_].uri;
    auto cli = std::make_shared<mqtt::async_client>(uri, opts_.client_id, co, persistence_.get());
    cli->set_message_callback([this](mqtt::const_message_ptr m) {
        // Paho's receive thread, with Paho's process-wide lock held (arrivals.h).
        socket_.on_message();
        arrivals_.take(*m);
    });
    // A loss reported by a client of an earlier connection says nothing about the current one.
    const void* self = cli.get();
    cli->set_connection_lost_handler([this, self](const std::string& cause) {
        if (clients_.is_current(self)) on_connection_lost(cause);
    });
    cli->set_disconnected_handler([this, self](const mqtt::properties&, mqtt::ReasonCode rc) {
        if (clients_.is_current(self)) on_connection_lost("broker sent DISCONNECT, reason code " + std::to_string(int(rc)));
    });
    clients_.install(std::move(cli));
    // The new client resumes the flows it restored; everything else in flight is sent again.
    host_.new_client(persistence_->resumable(), [this](int packet_id, const stored_message& m) {
        return persistence_->carries(packet_id, m.topic, m.payload);
    });
}

void session::connection_loop() {
    auto backoff = opts_.reconnect_min;
    std::size_t failed_in_round = 0;  // connect attempts failed since the last success or backoff
    std::unique_lock<std::mutex> lk(mu_);
    while (!stopping_) {
        conn_cv_.wait(lk, [&] { return stopping_ || (want_connect_ && !connected_); });
        if (stopping_) break;
        if (hold_off_.count() > 0) {
            // The last connection was cut because an arrival could not be stored: give storage time.
            conn_cv_.wait_for(lk, hold_off_, [&] { return stopping_.load(); });
            if (stopping_) break;
        }
        lk.unlock();
        if (connect_once()) {
            backoff = opts_.reconnect_min;
            failed_in_round = 0;
            lk.lock();
            continue;
        }
        // The failure was logged where it was caught. The next server at once, until each has failed in
        // turn; then the backoff.
        server_ = (server_.load() + 1) % connector_.servers().size();
        lk.lock();
        if (++failed_in_round < connector_.servers().size()) continue;
        failed_in_round = 0;
        conn_cv_.wait_for(lk, backoff, [&] { return stopping_.load(); });
        backoff = std::min(backoff * 2, opts_.reconnect_max);
    }
}

bool session::connect_once() {
    // A message of the last connection whose commit is still running: its flow's record must be in place
    // before the next connection brings the broker's resend of it, or that resend passes for a new message.
    const auto since = std::chrono::steady_clock::now();
    for (bool told = false; !arrivals_.wait_decided(std::chrono::milliseconds(100));) {
        if (stopping_) return false;
        if (!told && std::chrono::steady_clock::now() - since > std::chrono::seconds(5)) {
            log(log_level::warning, "reconnecting waits for the commit of messages that arrived before the loss");
            told = true;
        }
    }
    connector::connack granted;
    // With flows to resume, Paho re-sends every connected client's in-flight packets at the CONNACK: the
    // other clients of the process drain first (connect_gate.h). On success on_connected() opens the gate,
    // once it has shown the outbox its connection: before that the flows Paho resumes for this client are
    // in flight, but the outbox, not connected yet, would call itself drained to the next client.
    struct gate_guard {
        gate_member* m = nullptr;
        ~gate_guard() {
            if (m) connect_gate::process().open(m);
        }
    } gate;
    try {
        fresh_paho();
        host_.connecting();
        if (persistence_->has_outbound()) {
            gate.m = &gate_member_;
            constexpr auto drain_limit = std::chrono::seconds(5);  // for both waits below together
            const auto deadline = std::chrono::steady_clock::now() + drain_limit;
            if (const auto left = connect_gate::process().close(gate.m, drain_limit))
                log(log_level::warning, std::to_string(left) + " other client(s) of this process still have publishes "
                                        "in flight: Paho will re-send them when this client connects");
            // A client whose publish failed holds it freed until Paho has disconnected it (paho_clients.h).
            auto& tainted = tainted_clients::process();
            if (tainted.await_disconnected(std::chrono::steady_clock::now()) > 0) {
                log(log_level::info, "waiting until Paho has disconnected its client(s) with a failed publish");
                if (const auto left = tainted.await_disconnected(deadline))
                    log(log_level::warning, std::to_string(left) + " Paho client(s) of this process with a failed publish "
                                            "are still connected: Paho may re-send that publish from freed memory");
            }
        }
        const auto filters = host_.filters();
        const bool shared = std::any_of(filters.begin(), filters.end(), [](const std::string& f) { return f.rfind("$share/", 0) == 0; });
        const auto cli = clients_.current();
        if (!cli) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
        // Another client of the process keeps Paho's receive thread from sleeping through this connect.
        struct waking {
            session& s;
            explicit waking(session& s) : s(s) {
                s.waking_ = true;
                s.wake_paho_soon();
            }
            ~waking() { s.waking_ = false; }
        } wake(*this);
        if (gate_) {
            const auto& srv = connector_.servers()[server_.load()];
            try {
                gate_->prepare(srv.host, srv.port, opts_.connect_timeout);
            } catch (const std::exception& e) {
                host_.connect_failed();
                note_connect_failure("connect to " + server_uri() + " failed: " + e.what(), log_level::warning);
                return false;
            }
        }
        granted = connector_.connect(*cli, shared);
        host_.connect_returned(granted.session_present);
        subscription_ids_ = granted.subscription_ids;
    } catch (const mqtt::exception& e) {
        host_.connect_failed();
        note_connect_failure("connect to " + server_uri() + " failed: " + connector_.why_failed(e), log_level::warning);
        return false;
    }
    if (!granted.lacks.empty()) {
        host_.connect_failed();
        if (auto cli = clients_.current()) {
            try {
                cli->disconnect()->wait_for(std::chrono::seconds(2));
            } catch (const mqtt::exception&) {
                // Gone already: nothing to close.
            }
        }
        note_connect_failure("connect to " + server_uri() + " refused: the broker lacks " + granted.lacks, log_level::error);
        return false;
    }
    fire(opts_.hooks.on_server, server_uri());
    // Paho stalls (1 s waits) once the broker's receive maximum is reached, and a client that lost its
    // in-flight state (power loss) leaves up to a window of half-open flows at the broker until their packet
    // ids are reused: half the receive maximum keeps both cases below the limit.
    on_connected(granted.session_present,
                 std::max<std::size_t>(1, std::min(opts_.max_inflight, granted.receive_maximum / 2)),
                 granted.max_packet_size);
    return true;
}

void session::wake_paho_soon() {
    host_.schedule(std::chrono::steady_clock::now() + std::chrono::milliseconds(10), [this] {
        if (!waking_ || stopping_) return;
        paho_waker::process().wake(&clients_);  // with none connected now, one that connects may at the next tick
        wake_paho_soon();
    });
}

void session::note_connect_failure(const std::string& line, log_level level) {
    bool repeated;
    {
        std::lock_guard<std::mutex> g(mu_);
        repeated = line == last_error_;
        last_error_ = line;
    }
    // A missing broker or a refused login must be visible; the same failure again only in debug.
    log(repeated ? log_level::debug : level, line + " (retrying)");
}

void session::on_connected(bool session_present, std::size_t window, std::uint32_t max_packet_size) {
    const auto& srv = connector_.servers()[server_.load()];
    // To cut this connection alone if an arrival cannot be stored (with a gate, Paho's peer is the gate).
    if (gate_) socket_.claim("127.0.0.1", gate_->port(), false);
    else socket_.claim(srv.host, srv.port);
    std::vector<std::string> filters, stale;
    bool reconnect;
    {
        std::lock_guard<std::mutex> lk(mu_);
        stuck_.connected(resuming_, completed_, std::chrono::steady_clock::now());
        reconnect = ever_connected_;
        ever_connected_ = true;
        last_error_.clear();
        filters = host_.filters();
        for (const auto& f : filters) pending_unsubscribes_.erase(f);
        stale.assign(pending_unsubscribes_.begin(), pending_unsubscribes_.end());
        pending_unsubscribes_.clear();
    }
    log(log_level::info, "connected to " + srv.uri + (session_present ? " (session present)" : " (new session)"));
    // Every filter is subscribed again on every connection: cheap, and right when the broker has
    // forgotten the session or when a filter was added while offline. Subscriptions go out before any
    // publish (Paho sends in order), so results of calls sent now find their subscription at the broker.
    for (const auto& f : filters) subscribe_now(f);
    for (const auto& f : stale) unsubscribe(f);
    std::vector<std::string> late;
    {
        std::lock_guard<std::mutex> lk(mu_);
        connected_ = true;
        host_.connected(window, max_packet_size);
        for (const auto& f : host_.filters())  // added while the ones above were being sent
            if (std::find(filters.begin(), filters.end(), f) == filters.end()) late.push_back(f);
    }
    connect_gate::process().open(&gate_member_);  // if held (connect_once): the outbox now counts its flows
    for (const auto& f : late) subscribe_now(f);
    fire(opts_.hooks.on_connect, session_present);
    if (reconnect) fire(opts_.hooks.on_reconnect);
    if (!session_present) fire(opts_.hooks.on_init);
    {
        std::lock_guard<std::mutex> lk(mu_);
        state_cv_.notify_all();
    }
    // A loss Paho reported between the CONNACK and `connected_ = true` found connected_ false and was
    // ignored, leaving a dead connection that was never replaced. Paho marks itself disconnected before it
    // calls the handler, so ask it now; a loss reported after `connected_ = true` reaches the handler.
    if (auto cli = clients_.current(); !cli || !cli->is_connected()) on_connection_lost("lost while connecting");
}

void session::on_connection_lost(const std::string& cause) {
    socket_.detach_nagle();
    socket_.release();
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!connected_) return;
        connected_ = false;
        stuck_.lost(completed_, std::chrono::steady_clock::now());
        last_error_ = "connection lost: " + cause;
        host_.lost();
        conn_cv_.notify_all();
        state_cv_.notify_all();
    }
    maybe_drained();  // not connected: drained
    log(log_level::warning, "connection lost: " + cause);
    fire(opts_.hooks.on_connection_lost, cause);
}

void session::give_up_stuck_flow() {
    std::optional<int> id;
    unsigned strikes = 0;
    std::size_t size = 0;
    {
        std::lock_guard<std::mutex> lk(mu_);
        strikes = stuck_.strikes();
        id = stuck_.take();
        if (id) size = resuming_[*id];
    }
    if (!id) return;
    // The broker has no other way to refuse it (stuck_flows.h); kept as a dead letter, nothing is lost, and
    // what waits behind it goes.
    const std::string why =
        "the broker ended " + std::to_string(strikes) + " connections in a row soon after their CONNACK while this " +
        "message (" + std::to_string(size) + " bytes) was being sent again, and nothing else completed: it is " +
        "likely over a maximum packet size the broker did not announce (MQTT 3.1.1: set " +
        "client_options::broker_maximum_packet_size_311), or refused by a broker that cannot say so";
    if (!host_.give_up_resumed(*id, why))
        log(log_level::error, "giving up the flow of packet id " + std::to_string(*id) + ", which has no outbox record: " + why);
    // After the outbox's dead letter: a crash in between leaves the flow to be found and given up again.
    try {
        persistence_->drop_outbound(*id);
    } catch (const std::exception&) {
        // Reported by the persistence (on_error); the next connection resumes it, and it is found again.
    }
}

void session::maybe_drained() {
    auto& gate = connect_gate::process();
    if (gate.closed_to(&gate_member_)) gate.notify();
}

// ---------------------------------------------------------------------------------------------------
// subscriptions

void session::subscribe(const std::string& filter, const std::function<bool()>& open) {
    bool now;
    {
        std::lock_guard<std::mutex> lk(mu_);
        now = open() && connected_;
    }
    if (now) subscribe_now(filter);
}

void session::subscribe_now(const std::string& filter, std::chrono::milliseconds retry_in) {
    auto cli = clients_.current();
    if (!cli) return;  // subscribed on the next connection
    if (retry_in.count() <= 0) retry_in = opts_.reconnect_min;
    try {
        auto* l = new sub_listener(
            opts_.hooks, "subscription to " + filter,
            [this, filter, retry_in](const void* via) { on_subscribe_failed(filter, via, retry_in); },
            [this, filter](int reason_code) { host_.subscription_answered(filter, reason_code); });
        if (opts_.mqtt_version == 5) {
            // Retained messages only for a new subscription, not again at each reconnect.
            mqtt::subscribe_options so;
            so.set_retain_handling(mqtt::subscribe_options::SEND_RETAINED_ON_NEW);
            // A broker sends one copy of a message per matching subscription (Mosquitto does); the
            // identifier tells which lane each copy is for, so overlapping filters handle it once each.
            mqtt::properties props;
            if (subscription_ids_)
                props.add({mqtt::property::SUBSCRIPTION_IDENTIFIER, static_cast<int32_t>(host_.subscription_identifier(filter))});
            cli->subscribe(filter, 2, nullptr, *l, so, props);
        } else {
            cli->subscribe(filter, 2, nullptr, *l);
        }
    } catch (const mqtt::exception& e) {
        // Not connected: it is subscribed again on the next connection.
        log(log_level::debug, "subscribe " + filter + " deferred: " + e.what());
    }
}

void session::on_subscribe_failed(const std::string& filter, const void* via, std::chrono::milliseconds retry_in) {
    // Runs on Paho's threads. A SUBSCRIBE interrupted with its connection is made again on the next one
    // (on_connected subscribes every filter); on a connection that is still up it is retried here.
    if (stopping_ || !clients_.is_current(via)) return;
    host_.schedule(std::chrono::steady_clock::now() + retry_in, [this, filter, via, retry_in] {
        if (stopping_ || !clients_.is_current(via)) return;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (!connected_ || !host_.wants(filter)) return;  // subscribed at the next connection, or gone
        }
        if (auto c = clients_.current(); !c || !c->is_connected()) {
            // Paho knows the connection is gone but has not told us (or told us too early): reconnect.
            on_connection_lost("connection lost while subscribing to " + filter);
            return;
        }
        subscribe_now(filter, std::min(retry_in * 2, opts_.reconnect_max));
    });
}

void session::unsubscribe(const std::string& filter) {
    auto cli = clients_.current();
    try {
        if (!cli || !cli->is_connected()) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
        auto* l = new sub_listener(opts_.hooks, "unsubscription from " + filter);
        cli->unsubscribe(filter, nullptr, *l);
    } catch (const mqtt::exception&) {
        // Offline: the broker keeps the subscription in the session, so unsubscribe at the next connection.
        std::lock_guard<std::mutex> lk(mu_);
        pending_unsubscribes_.insert(filter);
    }
}

// ---------------------------------------------------------------------------------------------------
// publishing

session::publish_result session::publish(const std::vector<std::pair<std::uint64_t, const stored_message*>>& msgs,
                                         const void* via) {
    // This may be the last reference to a Paho client replaced meanwhile; destroying it fails its tokens,
    // whose callbacks take the outbox's lock: it goes before this returns, and the outbox takes its lock.
    std::shared_ptr<mqtt::async_client> current;
    auto* cli = static_cast<mqtt::iasync_client*>(const_cast<void*>(via));
    if (!cli) {
        current = clients_.current();
        cli = current.get();
    }
    publish_result out;
    int refused_rc = 0;
    for (const auto& [seq, m] : msgs) {
        bool sent = false;
        try {
            if (!cli) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
            const auto msg = to_paho(*m, opts_.mqtt_version == 5, wall_ms());
            auto tok = cli->publish(msg, reinterpret_cast<void*>(static_cast<std::uintptr_t>(seq)), *listener_);
            sent = true;
            ++out.taken;
            persistence_->map_packet(tok->get_message_id(), seq);
        } catch (const mqtt::exception& e) {
            refused_rc = e.get_return_code() ? e.get_return_code() : MQTTASYNC_FAILURE;
            log(log_level::debug, std::string("publish deferred: ") + e.what());
        } catch (const std::exception& e) {
            if (sent) {
                // The packet mapping could not be stored: the publish is out; a crash now costs a duplicate.
                log(log_level::error, std::string("storing the packet id of a publish failed: ") + e.what());
            } else {
                // Not handed to Paho (out of memory, say): it and the rest wait, in order, for a later try.
                refused_rc = MQTTASYNC_FAILURE;
                log(log_level::error, std::string("a publish could not be handed to Paho: ") + e.what());
            }
        }
        if (sent) fire(opts_.hooks.on_packet_send, m->topic, m->payload);
        if (refused_rc) break;  // Paho refused one: the rest waits too
    }
    out.why = refused_rc == 0                                  ? refusal::none
              : refused_rc == MQTTASYNC_MAX_BUFFERED_MESSAGES ? refusal::buffer_full
              : refused_rc == MQTTASYNC_DISCONNECTED           ? refusal::disconnected
                                                               : refusal::other;
    return out;
}

// ---------------------------------------------------------------------------------------------------
// arrivals

void session::refuse_arrival(const std::string& why) {
    cut_connection(why);
    if (stopping_) return;
    std::lock_guard<std::mutex> lk(mu_);
    hold_off_ = std::min(std::max(hold_off_ * 2, opts_.reconnect_min), opts_.reconnect_max);
}

void session::cut_connection(const std::string& why) {
    const auto& srv = connector_.servers()[server_.load()];
    bool cut = true;
    if (gate_) {
        gate_->cut();  // what it holds never leaves
        socket_.cut("127.0.0.1", gate_->port());  // Paho sees the loss at once
    } else {
        cut = socket_.cut(srv.host, srv.port);
    }
    log(stopping_ ? log_level::debug : log_level::warning,
        "connection cut so that no acknowledgement leaves: " + why + (cut ? "" : " (no socket found)"));
}

}  // namespace xymqtt::detail
