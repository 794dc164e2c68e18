// Paho C++ exposes a received message's packet id (needed to recognise QoS 2 redeliveries exactly) only
// through c_struct(), which it compiles in for its unit tests. The accessor is inline and changes nothing
// in the class, so enabling it here is safe.
#define UNIT_TESTS 1
#include <mqtt/message.h>
#undef UNIT_TESTS

#include "session/session.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>

#include <algorithm>
#include <cctype>

#include "base/hook_calls.h"
#include "session/broker_capabilities.h"
#include "session/ca_bundle.h"
#include "session/nagle_governor.h"
#include "session/paho_persistence.h"
#include "session/tcp_nodelay.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {

namespace {

message_properties from_paho(const mqtt::properties& p) {
    message_properties out;
    if (p.contains(mqtt::property::CONTENT_TYPE))
        out.content_type = mqtt::get<std::string>(p, mqtt::property::CONTENT_TYPE);
    if (p.contains(mqtt::property::CORRELATION_DATA))
        out.correlation_data = mqtt::get<mqtt::binary>(p, mqtt::property::CORRELATION_DATA);
    if (p.contains(mqtt::property::RESPONSE_TOPIC))
        out.response_topic = mqtt::get<std::string>(p, mqtt::property::RESPONSE_TOPIC);
    if (p.contains(mqtt::property::MESSAGE_EXPIRY_INTERVAL))
        out.expiry_seconds = mqtt::get<uint32_t>(p, mqtt::property::MESSAGE_EXPIRY_INTERVAL);
    const auto n = p.count(mqtt::property::USER_PROPERTY);
    for (size_t i = 0; i < n; ++i) {
        auto kv = mqtt::get<mqtt::string_pair>(p, mqtt::property::USER_PROPERTY, i);
        out.user.emplace_back(std::get<0>(kv), std::get<1>(kv));
    }
    return out;
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

// Paho's completion callbacks for publishes.
class session::listener : public mqtt::iaction_listener {
public:
    explicit listener(session& s) : s_(s) {}
    void on_success(const mqtt::token& tok) override {
        s_.host_.delivered(seq(tok), reason_code(tok), tok.get_client());
    }
    void on_failure(const mqtt::token& tok) override {
        const int rc = tok.get_return_code();
        // Paho C 1.3 (MQTTAsync_processCommand): when a QoS 1/2 PUBLISH fails on a socket error (-1) or on
        // persistence (-2), the command's topic and payload are freed although the outbound record it just
        // stored shares them. That Paho client must never be destroyed: MQTTAsync_destroy frees them again.
        if (rc == MQTTASYNC_FAILURE || rc == MQTTASYNC_PERSISTENCE_ERROR) s_.taint(tok.get_client());
        s_.host_.send_failed(seq(tok), rc, reason_code(tok), tok.get_client());
    }

private:
    static std::uint64_t seq(const mqtt::token& tok) { return reinterpret_cast<std::uintptr_t>(tok.get_user_context()); }
    // Reason codes are MQTT 5's; under 3.1.1 Paho leaves the field with no meaning (seen as 255).
    int reason_code(const mqtt::token& tok) const { return s_.opts_.mqtt_version == 5 ? tok.get_reason_code() : 0; }

    session& s_;
};

// Logs the broker's answer to SUBSCRIBE / UNSUBSCRIBE, hands a failure (not a refusal) to `failed` and
// the broker's answer (its reason code: granted below 0x80, refused from 0x80) to `answered`.
class session::sub_listener : public mqtt::iaction_listener {
public:
    sub_listener(session& s, std::string what, std::function<void(const void*)> failed = nullptr,
                 std::function<void(int reason_code)> answered = nullptr)
        : s_(s), what_(std::move(what)), failed_(std::move(failed)), answered_(std::move(answered)) {}
    void on_success(const mqtt::token& tok) override {
        if (tok.get_reason_code() >= 0x80)
            s_.log(log_level::error, what_ + " refused by the broker, reason code " + std::to_string(tok.get_reason_code()));
        if (answered_) answered_(tok.get_reason_code());
        delete this;
    }
    void on_failure(const mqtt::token& tok) override {
        // Paho C++ reports an MQTT 5 SUBACK that refuses (reason code from 0x80) as a failure.
        const int reason = tok.get_reason_code();
        if (reason >= 0x80)
            s_.log(log_level::error, what_ + " refused by the broker, reason code " + std::to_string(reason) +
                                         (failed_ ? " (retrying)" : ""));
        else
            s_.log(log_level::warning, what_ + " failed: return code " + std::to_string(tok.get_return_code()) +
                                           ", reason code " + std::to_string(reason) + (failed_ ? " (retrying)" : ""));
        if (answered_ && reason >= 0x80) answered_(reason);
        if (failed_) failed_(tok.get_client());
        delete this;
    }

private:
    session& s_;
    std::string what_;
    std::function<void(const void*)> failed_;
    std::function<void(int)> answered_;
};

// ---------------------------------------------------------------------------------------------------
// construction

std::vector<session::server> session::servers_of(const client_options& opts) {
    std::vector<server> out;
    for (const auto& uri : opts.server_uris.empty() ? std::vector<std::string>{opts.server_uri} : opts.server_uris) {
        const char* field = opts.server_uris.empty() ? "server_uri" : "server_uris";
        std::string scheme;
        server srv{uri, {}, 0, false};
        if (!parse_server_uri(uri, scheme, srv.host, srv.port))
            throw configuration_error(std::string(field) + " \"" + uri + "\" is not of the form tcp://host:port");
        srv.tls = scheme == "ssl" || scheme == "mqtts";
        if (!srv.tls && scheme != "tcp" && scheme != "mqtt")
            throw configuration_error(std::string(field) + " scheme \"" + scheme + "\" is not supported (tcp, mqtt, ssl, mqtts)");
        // Paho chooses TLS by the scheme alone: TLS settings with tcp:// would connect in plain text,
        // user name and password included.
        if (!srv.tls && opts.tls)
            throw configuration_error("tls is set but " + std::string(field) + " \"" + uri +
                                      "\" is plain MQTT: use ssl:// or mqtts://");
        out.push_back(std::move(srv));
    }
    return out;
}

session::session(session_host& host, const client_options& opts, store& s)
    : host_(host), opts_(opts), store_(s), servers_(servers_of(opts)) {
    const bool tls_scheme = std::any_of(servers_.begin(), servers_.end(), [](const server& v) { return v.tls; });
    if (!opts_.paho_trace && !std::getenv("MQTT_C_CLIENT_TRACE") && !std::getenv("MQTT_C_CLIENT_TRACE_LEVEL")) {
        // Paho C, as Debian builds it, records every function it enters and leaves, and formats each
        // packet it logs, into an in-memory trace under global locks; nothing reads it unless tracing
        // is asked for. Errors only: -18 % CPU per message here (docs/benchmarks.md, F19).
        MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    }

    persistence_ = std::make_unique<paho_persistence>(
        store_.session(), opts_.mqtt_version == 4 && opts_.durability == durability::fsync,
        [this](const std::string& e) {
            log(log_level::error, e);
            fire(opts_.hooks.on_storage_error, e);
        });
    persistence_->on_complete([this](int packet_id) { host_.resumed_complete(packet_id); });
    persistence_->on_stale([this](int packet_id) {
        cut_connection("the broker sent a new message under packet id " + std::to_string(packet_id) +
                       ", whose earlier flow it has forgotten (restarted from an older state?)");
    });
    if (opts_.tcp_nodelay && opts_.adaptive_nagle) nagle_ = std::make_unique<nagle_governor>(nagle_governor::settings{});

    conn_builder_ = std::make_unique<mqtt::connect_options_builder>();
    auto& b = *conn_builder_;
    if (opts_.mqtt_version == 5) {
        b.mqtt_version(MQTTVERSION_5);
        b.clean_start(false);  // the MQTT 5 properties are made at each connect (connection_loop)
    } else {
        b.mqtt_version(MQTTVERSION_3_1_1);
        b.clean_session(false);
    }
    b.keep_alive_interval(opts_.keep_alive);
    b.connect_timeout(std::chrono::duration_cast<std::chrono::seconds>(opts_.connect_timeout) + std::chrono::seconds(1));
    b.automatic_reconnect(false);  // reconnecting ourselves lets us see "session present" every time
    b.max_inflight(65535);         // a small Paho window stalls (measured); the outbox's is max_inflight
    if (!opts_.username.empty()) b.user_name(opts_.username);
    if (!opts_.password.empty()) b.password(opts_.password);
    if (tls_scheme || opts_.tls) {
        const tls_options t = opts_.tls.value_or(tls_options{});
        auto sb = mqtt::ssl_options_builder();
        if (!t.ca_path.empty()) {
            ca_bundle_ = std::make_unique<ca_bundle>(t.ca_path, t.ca_file);
            sb.trust_store(ca_bundle_->path());
        } else if (!t.ca_file.empty()) {
            sb.trust_store(t.ca_file);
        }
        if (!t.cert_file.empty()) sb.key_store(t.cert_file);
        if (!t.key_file.empty()) sb.private_key(t.key_file);
        if (!t.key_password.empty()) sb.private_keypassword(t.key_password);
        sb.enable_server_cert_auth(t.verify_server);
        sb.verify(t.verify_host);
        // Paho reports a refused handshake only as "Failure"; OpenSSL's reason comes through this handler.
        sb.error_handler([this](const std::string& e) {
            std::lock_guard<std::mutex> g(tls_error_mu_);
            tls_error_ = e;
        });
        b.ssl(sb.finalize());
    }
    listener_ = std::make_unique<listener>(*this);
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

std::size_t session::nagle_streams() const { return nagle_ ? nagle_->streams() : 0; }

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
    if (nagle_) nagle_->detach();
    // Before the inbox's lanes and the store's writer stop: a delivery being committed in Paho's callback
    // must finish (or be refused) first.
    if (auto cli = paho()) {
        try {
            if (cli->is_connected()) cli->disconnect(std::chrono::milliseconds(500))->wait_for(std::chrono::seconds(2));
        } catch (const mqtt::exception&) {
        }
    }
    std::lock_guard<std::mutex> lk(mu_);
    connected_ = false;
}

void session::release() {
    std::lock_guard<std::mutex> lk(cli_mu_);
    current_ = nullptr;
    keep_tainted();
    cli_.reset();  // Paho must stop calling us before the members it uses go
    retired_.clear();
}

// ---------------------------------------------------------------------------------------------------
// connecting

std::shared_ptr<mqtt::async_client> session::paho() const {
    std::lock_guard<std::mutex> lk(cli_mu_);
    return cli_;
}

void session::fresh_paho() {
    // A new Paho client for every connection. Paho C 1.3 resends in-flight publishes from its own memory
    // after a reconnect, and a publish whose write failed half-way is resent from freed memory (seen
    // here as garbage payloads and a broker that drops the connection each time). The outbox holds every
    // unfinished publish, so a fresh client plus a resend from the outbox is both simpler and safe.
    {
        // The old client is disconnected; it is kept, not destroyed, until release(): destroying a Paho
        // client while Paho's shared threads still hold work of it crashed here under reconnect storms.
        std::lock_guard<std::mutex> lk(cli_mu_);
        current_ = nullptr;
        if (cli_) retired_.push_back(std::move(cli_));
    }
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own_socket_ = peer_socket();
    }
    paho_persistence::purge_commands(store_.session());
    persistence_->new_connection();
    mqtt::create_options co(opts_.mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
    co.set_send_while_disconnected(false);  // the outbox holds what waits, on disk
    // Paho refuses publishes (-12) once this many wait in its command queue, connected or not.
    co.set_max_buffered_messages(static_cast<int>(std::min<std::size_t>(opts_.max_inflight, 65000)) + 64);
    auto cli = std::make_shared<mqtt::async_client>(servers_[server_].uri, opts_.client_id, co, persistence_.get());
    cli->set_message_callback([this](mqtt::const_message_ptr m) { on_arrived(*m); });
    // A loss reported by a client of an earlier connection says nothing about the current one.
    const void* self = cli.get();
    cli->set_connection_lost_handler([this, self](const std::string& cause) {
        if (current_.load() == self) on_connection_lost(cause);
    });
    cli->set_disconnected_handler([this, self](const mqtt::properties&, mqtt::ReasonCode rc) {
        if (current_.load() == self) on_connection_lost("broker sent DISCONNECT, reason code " + std::to_string(int(rc)));
    });
    {
        std::lock_guard<std::mutex> lk(cli_mu_);
        current_ = self;
        cli_ = std::move(cli);
    }
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
        bool ok = false;
        bool session_present = false;
        std::uint32_t max_packet_size = opts_.mqtt_version == 5 ? 0 : opts_.broker_maximum_packet_size_311;
        // MQTT 5: 65535 unless the CONNACK says less. MQTT 3.1.1 brokers say nothing: the configured figure.
        std::size_t receive_max = opts_.mqtt_version == 5 ? 65535 : opts_.broker_receive_maximum_311;
        try {
            fresh_paho();
            {
                std::lock_guard<std::mutex> g(tls_error_mu_);
                tls_error_.clear();
            }
            host_.connecting();
            // A fresh copy from the builder each time, alive until Paho has copied it: a connect_options
            // copied from one that is gone keeps pointing at the old MQTT 5 properties (Paho C++ 1.2),
            // silently dropping the session expiry, and with it the session at every disconnect. The
            // properties are made here, with a Paho client alive, not once at construction: Paho C's heap
            // tracker starts afresh when a client is created after the last one was destroyed (each
            // reconnect), forgets what was allocated before, and then never frees it (471 bytes per
            // client and reconnect under LeakSanitizer).
            auto co = conn_builder_->finalize();
            if (opts_.mqtt_version == 5)
                co.set_properties({{mqtt::property::SESSION_EXPIRY_INTERVAL,
                                    static_cast<int32_t>(std::min<std::int64_t>(opts_.session_expiry.count(), INT32_MAX))},
                                   {mqtt::property::RECEIVE_MAXIMUM, static_cast<int16_t>(opts_.receive_maximum)}});
            // With flows to resume, Paho re-sends every connected client's in-flight packets at the CONNACK:
            // the other clients of the process drain first (connect_gate.h).
            struct gate_guard {
                gate_member* m = nullptr;
                ~gate_guard() {
                    if (m) connect_gate::process().open(m);
                }
            } gate;
            if (persistence_->has_outbound()) {
                gate.m = &gate_member_;
                if (const auto left = connect_gate::process().close(gate.m, std::chrono::seconds(5)))
                    log(log_level::warning, std::to_string(left) + " other client(s) of this process still have publishes "
                                            "in flight: Paho will re-send them when this client connects");
            }
            auto tok = paho()->connect(co);
            if (!tok->wait_for(opts_.connect_timeout + std::chrono::seconds(2)))
                throw mqtt::exception(MQTTASYNC_FAILURE, "connect timed out");
            const auto rsp = tok->get_connect_response();
            session_present = rsp.is_session_present();
            host_.connect_returned(session_present);
            const auto& props = rsp.get_properties();
            if (props.contains(mqtt::property::RECEIVE_MAXIMUM))
                receive_max = mqtt::get<uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
            if (opts_.mqtt_version == 5 && props.contains(mqtt::property::MAXIMUM_PACKET_SIZE))
                max_packet_size = mqtt::get<uint32_t>(props, mqtt::property::MAXIMUM_PACKET_SIZE);
            subscription_ids_ = opts_.mqtt_version == 5 && (!props.contains(mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) ||
                                                            mqtt::get<uint8_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0);
            if (opts_.mqtt_version == 5) check_broker(&props);
            ok = true;
        } catch (const lacks& e) {
            host_.connect_failed();
            if (auto cli = paho()) {
                try {
                    cli->disconnect()->wait_for(std::chrono::seconds(2));
                } catch (const mqtt::exception&) {
                    // Gone already: nothing to close.
                }
            }
            note_connect_failure("connect to " + server_uri() + " refused: the broker lacks " + e.what(), log_level::error);
        } catch (const mqtt::exception& e) {
            host_.connect_failed();
            std::string why = e.get_error_str();
            // Paho's own text says which stage failed (e.g. "TCP/TLS connect failure" for a refused
            // certificate, "CONNACK return code"); the return code alone only says "Failure".
            if (const auto detail = e.get_message(); !detail.empty() && detail != why) why += " (" + detail + ")";
            const int reason = e.get_reason_code(), rc = e.get_return_code();
            // MQTT 5 reason codes 0x86/0x87, MQTT 3.1.1 return codes 4/5 (Paho reports either field).
            if (reason == 0x86 || reason == 0x87 || rc == 0x86 || rc == 0x87 || rc == 4 || rc == 5)
                why = "not authorized: bad user name or password (" + why + ")";
            else if (why.empty())
                why = e.what();
            {
                std::lock_guard<std::mutex> g(tls_error_mu_);
                while (!tls_error_.empty() && std::isspace(static_cast<unsigned char>(tls_error_.back()))) tls_error_.pop_back();
                if (!tls_error_.empty()) why += " (TLS: " + tls_error_ + ")";
            }
            note_connect_failure("connect to " + server_uri() + " failed: " + why, log_level::warning);
        }
        if (ok) {
            fire(opts_.hooks.on_server, server_uri());
            // Paho stalls (1 s waits) once the broker's receive maximum is reached, and a client that lost
            // its in-flight state (power loss) leaves up to a window of half-open flows at the broker until
            // their packet ids are reused: half the receive maximum keeps both cases below the limit.
            on_connected(session_present, std::max<std::size_t>(1, std::min(opts_.max_inflight, receive_max / 2)),
                         max_packet_size);
            backoff = opts_.reconnect_min;
            failed_in_round = 0;
            lk.lock();
            continue;
        }
        // The failure was logged where it was caught. The next server at once, until each has failed in
        // turn; then the backoff.
        server_ = (server_.load() + 1) % servers_.size();
        lk.lock();
        if (++failed_in_round < servers_.size()) continue;
        failed_in_round = 0;
        conn_cv_.wait_for(lk, backoff, [&] { return stopping_.load(); });
        backoff = std::min(backoff * 2, opts_.reconnect_max);
    }
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

void session::check_broker(const void* connack_properties) {
    const auto& connack = *static_cast<const mqtt::properties*>(connack_properties);
    connack_capabilities granted;
    if (connack.contains(mqtt::property::MAXIMUM_QOS))
        granted.maximum_qos = mqtt::get<uint8_t>(connack, mqtt::property::MAXIMUM_QOS);
    if (connack.contains(mqtt::property::RECEIVE_MAXIMUM))
        granted.receive_maximum = mqtt::get<uint16_t>(connack, mqtt::property::RECEIVE_MAXIMUM);
    if (connack.contains(mqtt::property::SHARED_SUBSCRIPTION_AVAILABLE))
        granted.shared_subscriptions = mqtt::get<uint8_t>(connack, mqtt::property::SHARED_SUBSCRIPTION_AVAILABLE);
    if (connack.contains(mqtt::property::SESSION_EXPIRY_INTERVAL))
        granted.session_expiry = mqtt::get<uint32_t>(connack, mqtt::property::SESSION_EXPIRY_INTERVAL);
    capability_needs needs;
    needs.session_expiry = static_cast<std::uint32_t>(std::min<std::int64_t>(opts_.session_expiry.count(), INT32_MAX));
    for (const auto& filter : host_.filters())
        if (filter.rfind("$share/", 0) == 0) needs.shared_subscriptions = true;
    std::string fatal;
    for (const auto& f : check_capabilities(granted, needs)) {
        if (f.fatal) fatal += (fatal.empty() ? "" : "; ") + f.text;
        else log(log_level::warning, "broker " + server_uri() + ": " + f.text);
    }
    if (!fatal.empty()) throw lacks(fatal);
}

void session::on_connected(bool session_present, std::size_t window, std::uint32_t max_packet_size) {
    const auto& srv = servers_[server_.load()];
    // This connection's own socket, to cut it alone if an arrival cannot be stored (cut_connection).
    // Claimed under own_mu_: a cut meanwhile must not find the socket claimed but not yet recorded.
    peer_socket own;
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own = peer_socket::claim(srv.host, srv.port);
        own_socket_ = own.share();
    }
    if (opts_.tcp_nodelay) {
        if (own) {
            if (nagle_) nagle_->attach(std::move(own));  // sets TCP_NODELAY
            else own.set_nodelay(true);
        } else {
            // This connection's socket cannot be told from another of this process to the same broker:
            // TCP_NODELAY on all of them (what they all want outside a stream) and no Nagle in streams.
            if (set_tcp_nodelay_to_peer(srv.host, srv.port) == 0)
                log(log_level::warning, "could not set TCP_NODELAY on the broker connection");
            else if (nagle_)
                log(log_level::debug, "adaptive Nagle off for this connection: its socket is not the only new one to the broker");
        }
    }
    std::vector<std::string> filters, stale;
    bool reconnect;
    {
        std::lock_guard<std::mutex> lk(mu_);
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
    if (auto cli = paho(); !cli || !cli->is_connected()) on_connection_lost("lost while connecting");
}

void session::on_connection_lost(const std::string& cause) {
    if (nagle_) nagle_->detach();
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own_socket_ = peer_socket();
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!connected_) return;
        connected_ = false;
        last_error_ = "connection lost: " + cause;
        host_.lost();
        conn_cv_.notify_all();
        state_cv_.notify_all();
    }
    maybe_drained();  // not connected: drained
    log(log_level::warning, "connection lost: " + cause);
    fire(opts_.hooks.on_connection_lost, cause);
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
    auto cli = paho();
    if (!cli) return;  // subscribed on the next connection
    if (retry_in.count() <= 0) retry_in = opts_.reconnect_min;
    try {
        auto* l = new sub_listener(
            *this, "subscription to " + filter,
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
    if (stopping_ || !via || current_.load() != via) return;
    host_.schedule(std::chrono::steady_clock::now() + retry_in, [this, filter, via, retry_in] {
        if (stopping_ || current_.load() != via) return;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (!connected_ || !host_.wants(filter)) return;  // subscribed at the next connection, or gone
        }
        if (auto c = paho(); !c || !c->is_connected()) {
            // Paho knows the connection is gone but has not told us (or told us too early): reconnect.
            on_connection_lost("connection lost while subscribing to " + filter);
            return;
        }
        subscribe_now(filter, std::min(retry_in * 2, opts_.reconnect_max));
    });
}

void session::unsubscribe(const std::string& filter) {
    auto cli = paho();
    try {
        if (!cli || !cli->is_connected()) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
        auto* l = new sub_listener(*this, "unsubscription from " + filter);
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
        current = paho();
        cli = current.get();
    }
    publish_result out;
    int refused_rc = 0;
    for (const auto& [seq, m] : msgs) {
        bool sent = false;
        try {
            if (!cli) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
            auto msg = std::make_shared<mqtt::message>(m->topic, m->payload, 2, m->retain);
            if (opts_.mqtt_version == 5) {
                mqtt::properties props;
                if (!m->props.content_type.empty()) props.add({mqtt::property::CONTENT_TYPE, m->props.content_type});
                if (!m->props.correlation_data.empty())
                    props.add({mqtt::property::CORRELATION_DATA, mqtt::binary(m->props.correlation_data)});
                if (!m->props.response_topic.empty()) props.add({mqtt::property::RESPONSE_TOPIC, m->props.response_topic});
                if (m->props.expiry_seconds) {
                    // The expiry counts from when the message was accepted, not from when it is sent.
                    const auto elapsed_s = std::max<std::int64_t>(0, (now_ms() - m->created_ms) / 1000);
                    const auto left = std::max<std::int64_t>(1, std::int64_t(*m->props.expiry_seconds) - elapsed_s);
                    props.add({mqtt::property::MESSAGE_EXPIRY_INTERVAL, static_cast<int32_t>(std::min<std::int64_t>(left, INT32_MAX))});
                }
                for (const auto& [k, v] : m->props.user) props.add({mqtt::property::USER_PROPERTY, k, v});
                msg->set_properties(props);
            }
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

void session::taint(const void* via) {
    std::lock_guard<std::mutex> lk(taint_mu_);
    tainted_.insert(via);
}

void session::keep_tainted() {
    // A Paho client holding a freed publish (see listener::on_failure) is disconnected and inert, but
    // destroying it frees that topic and payload a second time: Paho's heap tracker lets the free through
    // when the address has been reused by another Paho allocation, which corrupts the heap of the whole
    // process (crashes in Paho's receive thread, in free(), in LMDB's malloc). So it is kept for the life
    // of the process, with callbacks that no longer reach this client. Called with cli_mu_ held.
    static std::mutex kept_mu;
    static auto* kept = new std::vector<std::shared_ptr<mqtt::async_client>>;  // never destroyed
    std::set<const void*> tainted;
    {
        // Not held across Paho calls: Paho's send thread takes taint_mu_ with Paho's own mutex held.
        std::lock_guard<std::mutex> t(taint_mu_);
        tainted.swap(tainted_);
    }
    auto keep = [&](std::shared_ptr<mqtt::async_client>& c) {
        if (!c || !tainted.count(c.get())) return;
        // The handlers are replaced before Paho is told (which it refuses while a connect is in progress).
        try { c->set_message_callback([](mqtt::const_message_ptr) {}); } catch (const mqtt::exception&) {}
        try { c->set_connection_lost_handler([](const std::string&) {}); } catch (const mqtt::exception&) {}
        try { c->set_disconnected_handler([](const mqtt::properties&, mqtt::ReasonCode) {}); } catch (const mqtt::exception&) {}
        std::lock_guard<std::mutex> k(kept_mu);
        kept->push_back(std::move(c));
    };
    keep(cli_);
    for (auto& c : retired_) keep(c);
    if (!tainted.empty())
        log(log_level::debug, "kept " + std::to_string(tainted.size()) +
                                  " Paho client(s) undestroyed: a failed publish left them with freed memory");
}

// ---------------------------------------------------------------------------------------------------
// arrivals

void session::on_arrived(const mqtt::message& msg) {
    // Runs on Paho's receive thread, with Paho's process-wide lock held, before the acknowledgement leaves
    // (MQTT 5: PUBREC, at PUBLISH; 3.1.1: PUBCOMP, at PUBREL): the host's commit is what makes the
    // acknowledgement safe. Paho sends it whatever happens here, so a message that is not stored has its
    // connection cut instead (refuse_arrival), and the broker sends it again on the next one. Nothing may
    // escape into Paho (it does not catch).
    if (nagle_) nagle_->on_message();
    int packet_id = 0, qos = 0;
    std::optional<std::string> refused;
    try {
        packet_id = msg.c_struct().msgid;
        qos = msg.get_qos();
        const std::string& topic = msg.get_topic();
        const std::string& payload = msg.get_payload_str();
        std::vector<std::uint32_t> sub_ids;
        const auto& props = msg.get_properties();
        for (std::size_t i = 0, n = props.count(mqtt::property::SUBSCRIPTION_IDENTIFIER); i < n; ++i)
            sub_ids.push_back(mqtt::get<uint32_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIER, i));
        // The broker's resend of a message committed in an earlier connection (paho_persistence.h): Paho
        // acknowledges it when this returns.
        if (qos == 2 && opts_.mqtt_version == 5 && persistence_->take_resend(packet_id, topic, payload, sub_ids))
            return;
        fire(opts_.hooks.on_packet_receive, topic, payload);
        stored_message rec;
        rec.topic = topic;
        rec.payload = payload;
        rec.props = from_paho(props);
        rec.retain = msg.is_retained();
        rec.created_ms = now_ms();
        refused = host_.arrived(std::move(rec), sub_ids, [this, packet_id, qos] {
            // Stored: from here on a failure costs at most a delay, never the message.
            ++delivered_;
            try {
                if (qos == 2) persistence_->release_inbound(packet_id);
            } catch (const std::exception&) {
                // Reported by the persistence; without the record a crash only costs a redelivery.
            }
            std::lock_guard<std::mutex> lk(mu_);
            hold_off_ = std::chrono::milliseconds(0);
        });
    } catch (const std::exception& e) {
        refused = std::string("the message could not be taken in: ") + e.what();
    } catch (...) {
        refused = "the message could not be taken in";
    }
    if (refused) refuse_arrival(packet_id, qos, *refused);
}

void session::refuse_arrival(int packet_id, int qos, const std::string& why) {
    try {
        if (qos == 2) persistence_->refuse_inbound(packet_id);
    } catch (const std::exception&) {
        // Reported by the persistence. The cut below still keeps the acknowledgement from leaving.
    }
    cut_connection(why);
    if (stopping_) return;
    std::lock_guard<std::mutex> lk(mu_);
    hold_off_ = std::min(std::max(hold_off_ * 2, opts_.reconnect_min), opts_.reconnect_max);
}

void session::cut_connection(const std::string& why) {
    const auto& srv = servers_[server_.load()];
    bool cut = false;
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        cut = own_socket_.shutdown();
        // Not claimed (a message that came with the CONNACK, or a socket that could not be told apart):
        // the sockets no other client has claimed.
        if (!cut) cut = shutdown_unclaimed_sockets_to_peer(srv.host, srv.port) > 0;
    }
    log(stopping_ ? log_level::debug : log_level::warning,
        "connection cut so that no acknowledgement leaves: " + why + (cut ? "" : " (no socket found)"));
}

}  // namespace xymqtt::detail
