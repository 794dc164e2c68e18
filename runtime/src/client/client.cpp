// Paho C++ exposes a received message's packet id (needed to recognise QoS 2 redeliveries exactly)
// only through c_struct(), which it compiles in for its unit tests. The accessor is inline and changes
// nothing in the class, so enabling it here is safe.
#define UNIT_TESTS 1
#include <mqtt/message.h>
#undef UNIT_TESTS

#include <MQTTAsync.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>

#include "client/client_impl.h"
#include "commands/wire.h"
#include "session/broker_capabilities.h"
#include "session/ca_bundle.h"
#include "session/tcp_nodelay.h"
#include "xymqtt/exception.h"
#include "xymqtt/topic.h"

namespace xymqtt {

namespace {

constexpr std::size_t max_payload = 268435455 - 65536;  // MQTT's limit less room for topic and properties
constexpr std::size_t ready_cap = 8192;  // publishes kept in memory beyond this wait on disk only


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

}  // namespace

std::chrono::milliseconds retry_policy::delay_after(std::uint32_t attempt) const {
    double d = double(initial.count());
    for (std::uint32_t i = 1; i < attempt && d < double(cap.count()); ++i) d *= multiplier;
    return std::chrono::milliseconds(std::min<std::int64_t>(std::int64_t(d), cap.count()));
}

std::size_t varint_bytes(std::size_t n) { return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4; }

// The size of the QoS 2 PUBLISH packet that carries `m` (MQTT 5 when `v5`), as a broker's Maximum Packet
// Size counts it: fixed header, topic, packet id, properties, payload.
std::size_t publish_packet_size(const stored_message& m, bool v5) {
    std::size_t rest = 2 + m.topic.size() + 2 + m.payload.size();
    if (v5) {
        std::size_t props = 0;
        if (!m.props.content_type.empty()) props += 3 + m.props.content_type.size();
        if (!m.props.correlation_data.empty()) props += 3 + m.props.correlation_data.size();
        if (!m.props.response_topic.empty()) props += 3 + m.props.response_topic.size();
        if (m.props.expiry_seconds) props += 5;
        for (const auto& [k, v] : m.props.user) props += 5 + k.size() + v.size();
        rest += varint_bytes(props) + props;
    }
    return 1 + varint_bytes(rest) + rest;
}

std::string make_message_id() {
    thread_local std::mt19937_64 rng([] {
        std::random_device rd;
        std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd()};
        return std::mt19937_64(seq);
    }());
    const auto hi = rng();
    return detail::format_message_id(hi, rng());
}

// Paho's completion callbacks for publishes and subscriptions.
class client::impl::listener : public mqtt::iaction_listener {
public:
    explicit listener(impl& c) : c_(c) {}
    void on_success(const mqtt::token& tok) override {
        const auto seq = reinterpret_cast<std::uintptr_t>(tok.get_user_context());
        c_.on_delivered(seq, reason_code(tok), tok.get_client());
    }
    void on_failure(const mqtt::token& tok) override {
        const auto seq = reinterpret_cast<std::uintptr_t>(tok.get_user_context());
        const int rc = tok.get_return_code();
        // Paho C 1.3 (MQTTAsync_processCommand): when a QoS 1/2 PUBLISH fails on a socket error (-1) or on
        // persistence (-2), the command's topic and payload are freed although the outbound record it just
        // stored shares them. That Paho client must never be destroyed: MQTTAsync_destroy frees them again.
        if (rc == MQTTASYNC_FAILURE || rc == MQTTASYNC_PERSISTENCE_ERROR) c_.taint_paho(tok.get_client());
        c_.on_send_failed(seq, rc, reason_code(tok), tok.get_client());
    }

private:
    // Reason codes are MQTT 5's; under 3.1.1 Paho leaves the field with no meaning (seen as 255).
    int reason_code(const mqtt::token& tok) const { return c_.opts_.mqtt_version == 5 ? tok.get_reason_code() : 0; }

    impl& c_;
};

namespace {

// Logs the broker's answer to SUBSCRIBE / UNSUBSCRIBE, hands a failure (not a refusal) to `failed` and
// the broker's answer (its reason code: granted below 0x80, refused from 0x80) to `answered`.
class sub_listener : public mqtt::iaction_listener {
public:
    sub_listener(std::function<void(log_level, const std::string&)> log, std::string what,
                 std::function<void(const mqtt::iasync_client*)> failed = nullptr,
                 std::function<void(int reason_code)> answered = nullptr)
        : log_(std::move(log)), what_(std::move(what)), failed_(std::move(failed)), answered_(std::move(answered)) {}
    void on_success(const mqtt::token& tok) override {
        if (tok.get_reason_code() >= 0x80)
            log_(log_level::error, what_ + " refused by the broker, reason code " + std::to_string(tok.get_reason_code()));
        if (answered_) answered_(tok.get_reason_code());
        delete this;
    }
    void on_failure(const mqtt::token& tok) override {
        // Paho C++ reports an MQTT 5 SUBACK that refuses (reason code from 0x80) as a failure.
        const int reason = tok.get_reason_code();
        if (reason >= 0x80)
            log_(log_level::error, what_ + " refused by the broker, reason code " + std::to_string(reason) +
                                       (failed_ ? " (retrying)" : ""));
        else
            log_(log_level::warning, what_ + " failed: return code " + std::to_string(tok.get_return_code()) +
                                         ", reason code " + std::to_string(reason) + (failed_ ? " (retrying)" : ""));
        if (answered_ && reason >= 0x80) answered_(reason);
        if (failed_) failed_(tok.get_client());
        delete this;
    }

private:
    std::function<void(log_level, const std::string&)> log_;
    std::string what_;
    std::function<void(const mqtt::iasync_client*)> failed_;
    std::function<void(int)> answered_;
};

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
    bool tls_scheme = false;
    for (const auto& uri : opts_.server_uris.empty() ? std::vector<std::string>{opts_.server_uri} : opts_.server_uris) {
        const char* field = opts_.server_uris.empty() ? "server_uri" : "server_uris";
        std::string scheme;
        server srv{uri, {}, 0};
        if (!detail::parse_server_uri(uri, scheme, srv.host, srv.port))
            throw configuration_error(std::string(field) + " \"" + uri + "\" is not of the form tcp://host:port");
        const bool tls = scheme == "ssl" || scheme == "mqtts";
        tls_scheme = tls_scheme || tls;
        if (!tls && scheme != "tcp" && scheme != "mqtt")
            throw configuration_error(std::string(field) + " scheme \"" + scheme + "\" is not supported (tcp, mqtt, ssl, mqtts)");
        // Paho chooses TLS by the scheme alone: TLS settings with tcp:// would connect in plain text,
        // user name and password included.
        if (!tls && opts_.tls)
            throw configuration_error("tls is set but " + std::string(field) + " \"" + uri +
                                      "\" is plain MQTT: use ssl:// or mqtts://");
        servers_.push_back(std::move(srv));
    }
    if (!opts_.paho_trace && !std::getenv("MQTT_C_CLIENT_TRACE") && !std::getenv("MQTT_C_CLIENT_TRACE_LEVEL")) {
        // Paho C, as Debian builds it, records every function it enters and leaves, and formats each
        // packet it logs, into an in-memory trace under global locks; nothing reads it unless tracing
        // is asked for. Errors only: -18 % CPU per message here (docs/benchmarks.md, F19).
        MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    }
    if (opts_.session_expiry.count() <= 0 && opts_.mqtt_version == 5)
        throw configuration_error("session_expiry must be > 0: with 0 the session dies at each disconnect");
    if (opts_.max_inflight == 0) throw configuration_error("max_inflight must be > 0");
    if (opts_.broker_receive_maximum_311 == 0) throw configuration_error("broker_receive_maximum_311 must be > 0");
    if (opts_.resend_unanswered_after && opts_.resend_unanswered_after->count() <= 0)
        throw configuration_error("resend_unanswered_after must be > 0 (or unset: never)");
    // Per-client result topics, if this client can have them: its default, or asked for by a call.
    try {
        if (opts_.mqtt_version != 5) throw configuration_error("per-client result topics need MQTT 5 (the invoke's Response Topic)");
        try {
            validate_topic_token("client_id", opts_.client_id);
            validate_topic_name(opts_.results_prefix);
        } catch (const invalid_topic& e) {
            throw configuration_error(std::string("per-client result topics: ") + e.what());
        }
        results_root_ = opts_.results_prefix + "/" + opts_.client_id;
    } catch (const configuration_error& e) {
        if (opts_.results == result_routing::per_client) throw;
        no_results_root_ = e.what();
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
    store_->for_each(table::outgoing, [&](const std::string& id, const std::string&) {
        if (auto n = parse_sequence_id(id)) sendq_.add(*n, nullptr);
        return true;
    });
    outbox_count_ = sendq_.waiting();
    store_->for_each(table::incoming, [&](const std::string& id, const std::string& value) {
        try {
            routes_.park(id, decode_record(value));
        } catch (const storage_error& e) {
            // A record we cannot read must not block the rest: keep it, as a dead letter.
            log(log_level::error, "inbox record " + id + " is unreadable: " + e.what());
            stored_message m;
            m.error = e.what();
            m.payload = value;
            committer_->commit({{table::incoming, id, std::nullopt}, {table::dead_letters, id, encode_record(m)}});
        }
        return true;
    });
    inbox_count_ = routes_.parked();
    dead_count_ = store_->count(table::dead_letters);

    if (opts_.receive_maximum == 0) opts_.receive_maximum = store_->durability() == durability::fsync ? 1 : 8;
    // Known from the start under MQTT 3.1.1 (configured); an MQTT 5 broker's comes with its CONNACK.
    if (opts_.mqtt_version != 5) max_packet_size_ = opts_.broker_maximum_packet_size_311;

    persistence_ = std::make_unique<detail::paho_persistence>(
        store_->session(), opts_.mqtt_version == 4 && opts_.durability == durability::fsync,
        [this](const std::string& e) {
            log(log_level::error, e);
            fire(opts_.hooks.on_storage_error, e);
        });
    persistence_->on_complete([this](int packet_id) { on_resumed_complete(packet_id); });
    persistence_->on_stale([this](int packet_id) {
        cut_connection("the broker sent a new message under packet id " + std::to_string(packet_id) +
                       ", whose earlier flow it has forgotten (restarted from an older state?)");
    });
    if (opts_.tcp_nodelay && opts_.adaptive_nagle)
        nagle_ = std::make_unique<detail::nagle_governor>(detail::nagle_governor::settings{});

    conn_builder_ = std::make_unique<mqtt::connect_options_builder>();
    auto& b = *conn_builder_;
    if (opts_.mqtt_version == 5) {
        b.mqtt_version(MQTTVERSION_5);
        b.clean_start(false);  // the MQTT 5 properties are made at each connect (connect_properties())
    } else {
        b.mqtt_version(MQTTVERSION_3_1_1);
        b.clean_session(false);
    }
    b.keep_alive_interval(opts_.keep_alive);
    b.connect_timeout(std::chrono::duration_cast<std::chrono::seconds>(opts_.connect_timeout) +
                      std::chrono::seconds(1));
    b.automatic_reconnect(false);  // reconnecting ourselves lets us see "session present" every time
    b.max_inflight(65535);         // a small Paho window stalls (measured); ours is max_inflight
    if (!opts_.username.empty()) b.user_name(opts_.username);
    if (!opts_.password.empty()) b.password(opts_.password);
    if (tls_scheme || opts_.tls) {
        const tls_options t = opts_.tls.value_or(tls_options{});
        auto sb = mqtt::ssl_options_builder();
        if (!t.ca_path.empty()) {
            ca_bundle_ = std::make_unique<detail::ca_bundle>(t.ca_path, t.ca_file);
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

    purge_expired_results();
    detail::connect_gate::process().join(&gate_member_);
    sender_thread_ = std::thread([this] { sender_loop(); });
    timer_thread_ = std::thread([this] { timer_loop(); });
    try {
        resume_resends();
    } catch (const std::exception& e) {
        // The threads run already: a constructor that threw now would leave them to std::terminate.
        log(log_level::error, std::string("unanswered calls not scheduled to be sent again: ") + e.what());
    }
    conn_thread_ = std::thread([this] { connection_loop(); });
}

client::impl::~impl() {
    close();
    {
        // Lanes left running by a close() from their own handler touch this object until they end.
        std::unique_lock<std::mutex> lk(mu_);
        auto running = [&] {
            bool any = false;
            routes_.for_each([&](lane& l) { any = any || (l.detached && !l.finished); });
            return any;
        };
        state_cv_.wait(lk, [&] { return !running(); });
    }
    // Likewise a command thread that closed or unregistered its own command.
    std::vector<std::shared_ptr<detail::worker_pool>> workers;
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        workers = retired_workers_;
        for (auto& [c, e] : commands_)
            if (e.workers) workers.push_back(e.workers);
    }
    for (auto& w : workers) w->wait_ended();
}

void client::impl::log(log_level level, const std::string& text) const {
    if (opts_.hooks.on_log) {
        try {
            opts_.hooks.on_log(level, text);
        } catch (...) {
        }
    }
}

template <class F, class... A>
void client::impl::fire(const F& hook, A&&... args) const {
    if (!hook) return;
    try {
        hook(std::forward<A>(args)...);
    } catch (const std::exception& e) {
        log(log_level::error, std::string("hook threw: ") + e.what());
    } catch (...) {
        log(log_level::error, "hook threw");
    }
}

std::int64_t client::impl::now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void client::impl::require_open() const {
    if (closing_) throw client_closed("client is closed");
}

// ---------------------------------------------------------------------------------------------------
// connection

void client::impl::connect() {
    require_open();
    std::lock_guard<std::mutex> lk(mu_);
    want_connect_ = true;
    conn_cv_.notify_all();
}

bool client::impl::wait_connected(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return state_cv_.wait_for(lk, timeout, [&] { return connected_ || closing_; }) && connected_;
}

bool client::impl::is_connected() const {
    std::lock_guard<std::mutex> lk(mu_);
    return connected_;
}

std::shared_ptr<mqtt::async_client> client::impl::paho() const {
    std::lock_guard<std::mutex> lk(cli_mu_);
    return cli_;
}

void client::impl::fresh_paho() {
    // A new Paho client for every connection. Paho C 1.3 resends in-flight publishes from its own memory
    // after a reconnect, and a publish whose write failed half-way is resent from freed memory (seen
    // here as garbage payloads and a broker that drops the connection each time). The outbox holds every
    // unfinished publish, so a fresh client plus a resend from the outbox is both simpler and safe.
    {
        // The old client is disconnected; it is kept, not destroyed, until close(): destroying a Paho
        // client while Paho's shared threads still hold work of it crashed here under reconnect storms.
        std::lock_guard<std::mutex> lk(cli_mu_);
        current_paho_ = nullptr;
        if (cli_) retired_paho_.push_back(std::move(cli_));
    }
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own_socket_ = detail::peer_socket();
    }
    detail::paho_persistence::purge_commands(store_->session());
    persistence_->new_connection();
    mqtt::create_options co(opts_.mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
    co.set_send_while_disconnected(false);  // the outbox holds what waits, on disk
    // Paho refuses publishes (-12) once this many wait in its command queue, connected or not.
    co.set_max_buffered_messages(static_cast<int>(std::min<std::size_t>(opts_.max_inflight, 65000)) + 64);
    auto cli = std::make_shared<mqtt::async_client>(current_server().uri, opts_.client_id, co, persistence_.get());
    cli->set_message_callback([this](mqtt::const_message_ptr m) { on_arrived(std::move(m)); });
    // A loss reported by a client of an earlier connection says nothing about the current one.
    const mqtt::iasync_client* self = cli.get();
    cli->set_connection_lost_handler([this, self](const std::string& cause) {
        if (current_paho_.load() == self) on_connection_lost(cause);
    });
    cli->set_disconnected_handler([this, self](const mqtt::properties&, mqtt::ReasonCode rc) {
        if (current_paho_.load() == self) on_connection_lost("broker sent DISCONNECT, reason code " + std::to_string(int(rc)));
    });
    {
        std::lock_guard<std::mutex> lk(cli_mu_);
        current_paho_ = cli.get();
        cli_ = std::move(cli);
    }
    // The new client resumes the flows it restored; everything else in flight is sent again.
    const auto resumable = persistence_->resumable();
    std::lock_guard<std::mutex> lk(mu_);
    removed_while_connecting_.clear();  // ids of the previous client's connect: they mean nothing here
    sendq_.new_client(resumable, [this](int packet_id, std::uint64_t seq, std::shared_ptr<stored_message> msg) {
        return resumes(packet_id, seq, std::move(msg));
    });
    log(log_level::debug, "new Paho client: " + std::to_string(sendq_.resumed()) + " flows resumed by Paho, " +
                              std::to_string(sendq_.to_send_again()) + " publishes to send again");
}

std::shared_ptr<stored_message> client::impl::read_outgoing(std::uint64_t seq) const {
    const auto v = store_->get(table::outgoing, sequence_id(seq));
    return v ? std::make_shared<stored_message>(decode_record(*v)) : nullptr;
}

bool client::impl::resumes(int packet_id, std::uint64_t seq, std::shared_ptr<stored_message> msg) const {
    // Only a flow whose record is this very publish: its completion is then this record's delivery.
    try {
        if (!msg) msg = read_outgoing(seq);
        return msg && persistence_->carries(packet_id, msg->topic, msg->payload);
    } catch (const std::exception& e) {
        log(log_level::warning, "publish " + std::to_string(seq) + " is sent again: its flow under packet id " +
                                    std::to_string(packet_id) + " cannot be checked (" + e.what() + ")");
        return false;
    }
}

bool client::impl::gate_member::drained() const {
    std::lock_guard<std::mutex> lk(c_.mu_);
    return !c_.connected_ || c_.sendq_.drained();
}

void client::impl::gate_member::resume() {
    std::lock_guard<std::mutex> lk(c_.mu_);
    if (c_.sender_has_work()) c_.send_cv_.notify_one();
}

void client::impl::notify_gate() {
    auto& gate = detail::connect_gate::process();
    if (gate.closed_to(&gate_member_)) gate.notify();
}

void client::impl::on_resumed_complete(int packet_id) {
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

void client::impl::connection_loop() {
    auto backoff = opts_.reconnect_min;
    std::size_t failed_in_round = 0;  // connect attempts failed since the last success or backoff
    std::unique_lock<std::mutex> lk(mu_);
    while (!closing_) {
        conn_cv_.wait(lk, [&] { return closing_ || (want_connect_ && !connected_); });
        if (closing_) break;
        if (hold_off_.count() > 0) {
            // The last connection was cut because an arrival could not be stored: give storage time.
            conn_cv_.wait_for(lk, hold_off_, [&] { return closing_.load(); });
            if (closing_) break;
        }
        lk.unlock();
        bool ok = false;
        bool session_present = false;
        // MQTT 5: 65535 unless the CONNACK says less. MQTT 3.1.1 brokers say nothing: the configured figure.
        std::size_t receive_max = opts_.mqtt_version == 5 ? 65535 : opts_.broker_receive_maximum_311;
        try {
            fresh_paho();
            {
                std::lock_guard<std::mutex> g(tls_error_mu_);
                tls_error_.clear();
            }
            {
                std::lock_guard<std::mutex> g(mu_);
                connecting_ = true;
            }
            // A fresh copy from the builder each time, alive until Paho has copied it: a connect_options
            // copied from one that is gone keeps pointing at the old MQTT 5 properties (Paho C++ 1.2),
            // silently dropping the session expiry, and with it the session at every disconnect. The
            // properties are made here, with a Paho client alive, not once at construction: Paho C's heap
            // tracker starts afresh when a client is created after the last one was destroyed (each
            // reconnect), forgets what was allocated before, and then never frees it (471 bytes per
            // client and reconnect under LeakSanitizer).
            auto co = conn_builder_->finalize();
            if (opts_.mqtt_version == 5) co.set_properties(connect_properties());
            // With flows to resume, Paho re-sends every connected client's in-flight packets at the CONNACK:
            // the other clients of the process drain first (connect_gate.h).
            struct gate_guard {
                gate_member* m = nullptr;
                ~gate_guard() {
                    if (m) detail::connect_gate::process().open(m);
                }
            } gate;
            if (persistence_->has_outbound()) {
                gate.m = &gate_member_;
                if (const auto left = detail::connect_gate::process().close(gate.m, std::chrono::seconds(5)))
                    log(log_level::warning, std::to_string(left) + " other client(s) of this process still have publishes "
                                            "in flight: Paho will re-send them when this client connects");
            }
            auto tok = paho()->connect(co);
            if (!tok->wait_for(opts_.connect_timeout + std::chrono::seconds(2)))
                throw mqtt::exception(MQTTASYNC_FAILURE, "connect timed out");
            const auto rsp = tok->get_connect_response();
            session_present = rsp.is_session_present();
            std::vector<int> finished;
            {
                std::lock_guard<std::mutex> g(mu_);
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
            if (rsp.get_properties().contains(mqtt::property::RECEIVE_MAXIMUM))
                receive_max = mqtt::get<uint16_t>(rsp.get_properties(), mqtt::property::RECEIVE_MAXIMUM);
            // MQTT 3.1.1 brokers announce no limit: the configured one stays (set at construction).
            if (opts_.mqtt_version == 5)
                max_packet_size_ = rsp.get_properties().contains(mqtt::property::MAXIMUM_PACKET_SIZE)
                                       ? mqtt::get<uint32_t>(rsp.get_properties(), mqtt::property::MAXIMUM_PACKET_SIZE)
                                       : 0;
            subscription_ids_ = opts_.mqtt_version == 5 &&
                                (!rsp.get_properties().contains(mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) ||
                                 mqtt::get<uint8_t>(rsp.get_properties(), mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0);
            if (opts_.mqtt_version == 5) check_broker(rsp.get_properties());
            ok = true;
        } catch (const broker_lacks& e) {
            {
                std::lock_guard<std::mutex> g(mu_);
                connecting_ = false;
            }
            if (auto cli = paho()) {
                try {
                    cli->disconnect()->wait_for(std::chrono::seconds(2));
                } catch (const mqtt::exception&) {
                    // Gone already: nothing to close.
                }
            }
            note_connect_failure("connect to " + current_server().uri + " refused: the broker lacks " + e.what(),
                                 log_level::error);
        } catch (const mqtt::exception& e) {
            {
                std::lock_guard<std::mutex> g(mu_);
                connecting_ = false;
            }
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
            note_connect_failure("connect to " + current_server().uri + " failed: " + why, log_level::warning);
        }
        if (ok) {
            {
                // Paho stalls (1 s waits) once the broker's receive maximum is reached, and a client that lost
                // its in-flight state (power loss) leaves up to a window of half-open flows at the broker until
                // their packet ids are reused: half the receive maximum keeps both cases below the limit.
                std::lock_guard<std::mutex> g(mu_);
                sendq_.set_window(std::max<std::size_t>(1, std::min(opts_.max_inflight, receive_max / 2)));
            }
            fire(opts_.hooks.on_server, current_server().uri);
            on_connected(session_present);
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
        conn_cv_.wait_for(lk, backoff, [&] { return closing_.load(); });
        backoff = std::min(backoff * 2, opts_.reconnect_max);
    }
}

void client::impl::note_connect_failure(const std::string& line, log_level level) {
    bool repeated;
    {
        std::lock_guard<std::mutex> g(mu_);
        repeated = line == last_error_;
        last_error_ = line;
    }
    // A missing broker or a refused login must be visible; the same failure again only in debug.
    log(repeated ? log_level::debug : level, line + " (retrying)");
}

void client::impl::check_broker(const mqtt::properties& connack) {
    detail::connack_capabilities granted;
    if (connack.contains(mqtt::property::MAXIMUM_QOS))
        granted.maximum_qos = mqtt::get<uint8_t>(connack, mqtt::property::MAXIMUM_QOS);
    if (connack.contains(mqtt::property::RECEIVE_MAXIMUM))
        granted.receive_maximum = mqtt::get<uint16_t>(connack, mqtt::property::RECEIVE_MAXIMUM);
    if (connack.contains(mqtt::property::SHARED_SUBSCRIPTION_AVAILABLE))
        granted.shared_subscriptions = mqtt::get<uint8_t>(connack, mqtt::property::SHARED_SUBSCRIPTION_AVAILABLE);
    if (connack.contains(mqtt::property::SESSION_EXPIRY_INTERVAL))
        granted.session_expiry = mqtt::get<uint32_t>(connack, mqtt::property::SESSION_EXPIRY_INTERVAL);
    detail::capability_needs needs;
    needs.session_expiry = static_cast<std::uint32_t>(std::min<std::int64_t>(opts_.session_expiry.count(), INT32_MAX));
    {
        std::lock_guard<std::mutex> lk(mu_);
        for (const auto& filter : routes_.live_filters())
            if (filter.rfind("$share/", 0) == 0) needs.shared_subscriptions = true;
    }
    std::string fatal;
    for (const auto& f : detail::check_capabilities(granted, needs)) {
        if (f.fatal) fatal += (fatal.empty() ? "" : "; ") + f.text;
        else log(log_level::warning, "broker " + current_server().uri + ": " + f.text);
    }
    if (!fatal.empty()) throw broker_lacks(fatal);
}

mqtt::properties client::impl::connect_properties() const {
    return {{mqtt::property::SESSION_EXPIRY_INTERVAL,
             static_cast<int32_t>(std::min<std::int64_t>(opts_.session_expiry.count(), INT32_MAX))},
            {mqtt::property::RECEIVE_MAXIMUM, static_cast<int16_t>(opts_.receive_maximum)}};
}

void client::impl::on_connected(bool session_present) {
    // This connection's own socket, to cut it alone if an arrival cannot be stored (cut_connection).
    // Claimed under own_mu_: a cut meanwhile must not find the socket claimed but not yet recorded.
    detail::peer_socket own;
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own = detail::peer_socket::claim(current_server().host, current_server().port);
        own_socket_ = own.share();
    }
    if (opts_.tcp_nodelay) {
        if (own) {
            if (nagle_) nagle_->attach(std::move(own));  // sets TCP_NODELAY
            else own.set_nodelay(true);
        } else {
            // This connection's socket cannot be told from another of this process to the same broker:
            // TCP_NODELAY on all of them (what they all want outside a stream) and no Nagle in streams.
            if (detail::set_tcp_nodelay_to_peer(current_server().host, current_server().port) == 0)
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
        filters = routes_.live_filters();
        for (const auto& f : filters) pending_unsubscribes_.erase(f);
        stale.assign(pending_unsubscribes_.begin(), pending_unsubscribes_.end());
        pending_unsubscribes_.clear();
    }
    log(log_level::info, "connected to " + current_server().uri + (session_present ? " (session present)" : " (new session)"));
    // Every filter is subscribed again on every connection: cheap, and right when the broker has
    // forgotten the session or when a filter was added while offline. Subscriptions go out before any
    // publish (Paho sends in order), so results of calls sent now find their subscription at the broker.
    for (const auto& f : filters) subscribe_at_broker(f);
    for (const auto& f : stale) unsubscribe_at_broker(f);
    std::vector<std::string> late;
    {
        std::lock_guard<std::mutex> lk(mu_);
        connected_ = true;
        send_blocked_ = false;
        buffer_full_ = false;
        ++connection_gen_;
        for (const auto& f : routes_.live_filters())  // added while the ones above were being sent
            if (std::find(filters.begin(), filters.end(), f) == filters.end()) late.push_back(f);
    }
    for (const auto& f : late) subscribe_at_broker(f);
    fire(opts_.hooks.on_connect, session_present);
    if (reconnect) fire(opts_.hooks.on_reconnect);
    if (!session_present) fire(opts_.hooks.on_init);
    {
        std::lock_guard<std::mutex> lk(mu_);
        send_cv_.notify_all();
        state_cv_.notify_all();
    }
    // A loss Paho reported between the CONNACK and `connected_ = true` found connected_ false and was
    // ignored, leaving a dead connection that was never replaced. Paho marks itself disconnected before it
    // calls the handler, so ask it now; a loss reported after `connected_ = true` reaches the handler.
    if (auto cli = paho(); !cli || !cli->is_connected()) on_connection_lost("lost while connecting");
}

void client::impl::on_connection_lost(const std::string& cause) {
    if (nagle_) nagle_->detach();
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        own_socket_ = detail::peer_socket();
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!connected_) return;
        connected_ = false;
        last_error_ = "connection lost: " + cause;
        conn_cv_.notify_all();
        state_cv_.notify_all();
    }
    notify_gate();  // not connected: drained
    log(log_level::warning, "connection lost: " + cause);
    fire(opts_.hooks.on_connection_lost, cause);
}

void client::impl::subscribe_at_broker(const std::string& filter, std::chrono::milliseconds retry_in) {
    auto cli = paho();
    if (!cli) return;  // subscribed on the next connection
    if (retry_in.count() <= 0) retry_in = opts_.reconnect_min;
    try {
        std::function<void(int)> answered;
        if (!results_root_.empty() && filter == results_root_ + "/#")
            answered = [this](int reason_code) { on_results_subscription(reason_code); };
        auto* l = new sub_listener([this](log_level lv, const std::string& s) { log(lv, s); },
                                   "subscription to " + filter,
                                   [this, filter, retry_in](const mqtt::iasync_client* c) {
                                       on_subscribe_failed(filter, c, retry_in);
                                   },
                                   std::move(answered));
        if (opts_.mqtt_version == 5) {
            // Retained messages only for a new subscription, not again at each reconnect.
            mqtt::subscribe_options so;
            so.set_retain_handling(mqtt::subscribe_options::SEND_RETAINED_ON_NEW);
            // A broker sends one copy of a message per matching subscription (Mosquitto does); the
            // identifier tells which lane each copy is for, so overlapping filters handle it once each.
            mqtt::properties props;
            if (subscription_ids_)
                props.add({mqtt::property::SUBSCRIPTION_IDENTIFIER, static_cast<int32_t>(detail::subscription_identifier(filter))});
            cli->subscribe(filter, 2, nullptr, *l, so, props);
        } else {
            cli->subscribe(filter, 2, nullptr, *l);
        }
    } catch (const mqtt::exception& e) {
        // Not connected: it is subscribed again on the next connection.
        log(log_level::debug, "subscribe " + filter + " deferred: " + e.what());
    }
}

void client::impl::on_subscribe_failed(const std::string& filter, const mqtt::iasync_client* cli,
                                       std::chrono::milliseconds retry_in) {
    // Runs on Paho's threads. A SUBSCRIBE interrupted with its connection is made again on the next one
    // (on_connected subscribes every filter); on a connection that is still up it is retried here.
    if (closing_ || !cli || current_paho_.load() != cli) return;
    schedule(std::chrono::steady_clock::now() + retry_in, [this, filter, cli, retry_in] {
        if (closing_ || current_paho_.load() != cli) return;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (!routes_.find(filter) || !connected_) return;  // gone, or subscribed at the next connection
        }
        if (auto c = paho(); !c || !c->is_connected()) {
            // Paho knows the connection is gone but has not told us (or told us too early): reconnect.
            on_connection_lost("connection lost while subscribing to " + filter);
            return;
        }
        subscribe_at_broker(filter, std::min(retry_in * 2, opts_.reconnect_max));
    });
}

void client::impl::unsubscribe_at_broker(const std::string& filter) {
    auto cli = paho();
    try {
        if (!cli || !cli->is_connected()) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
        auto* l = new sub_listener([this](log_level lv, const std::string& s) { log(lv, s); },
                                   "unsubscription from " + filter);
        cli->unsubscribe(filter, nullptr, *l);
    } catch (const mqtt::exception&) {
        // Offline: the broker keeps the subscription in the session, so unsubscribe at the next connection.
        std::lock_guard<std::mutex> lk(mu_);
        pending_unsubscribes_.insert(filter);
    }
}

namespace {

// The client whose lane runs on this thread, if any: close() from a handler must not wait for a close()
// that is joining this very thread.
thread_local const void* lane_of = nullptr;

}  // namespace

void client::impl::mark_handler_thread() { lane_of = this; }

void client::impl::close() {
    // One close at a time: a second caller waits until the first is done, except a handler, whose lane
    // the first may be joining.
    std::unique_lock<std::mutex> once(close_mu_, std::defer_lock);
    if (lane_of == this) {
        if (!once.try_lock()) return;
    } else {
        once.lock();
    }
    closing_ = true;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        conn_cv_.notify_all();
        send_cv_.notify_all();
        state_cv_.notify_all();
        routes_.for_each([](lane& l) { l.cv.notify_all(); });
    }
    {
        std::lock_guard<std::mutex> lk(timer_mu_);
        timer_cv_.notify_all();
    }
    if (conn_thread_.joinable()) conn_thread_.join();
    detail::connect_gate::process().leave(&gate_member_);
    if (sender_thread_.joinable()) sender_thread_.join();
    if (timer_thread_.joinable()) timer_thread_.join();
    if (nagle_) nagle_->detach();
    // Disconnect before stopping the lanes and the writer: a delivery being committed in Paho's
    // callback must finish (or be refused) before the writer goes.
    if (auto cli = paho()) {
        try {
            if (cli->is_connected()) cli->disconnect(std::chrono::milliseconds(500))->wait_for(std::chrono::seconds(2));
        } catch (const mqtt::exception&) {
        }
    }
    std::vector<lane*> ls;
    {
        std::lock_guard<std::mutex> lk(mu_);
        connected_ = false;
        routes_.for_each([&](lane& l) { ls.push_back(&l); });
    }
    for (auto* l : ls) {
        if (!l->thread.joinable()) continue;
        if (l->thread.get_id() == std::this_thread::get_id()) {
            // close() from a handler: this lane ends when the handler returns; the destructor waits for it.
            std::lock_guard<std::mutex> lk(mu_);
            l->thread.detach();
            l->detached = true;
        } else {
            l->thread.join();
        }
    }
    // A command's own threads finish the calls they run (their outcomes are committed), then end.
    std::vector<std::shared_ptr<detail::worker_pool>> workers;
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        for (auto& [c, e] : commands_)
            if (e.workers) workers.push_back(e.workers);
    }
    for (auto& w : workers) w->stop();
    answer_gate_->close();  // deferred answers under way are committed; later ones wait for a restart
    committer_->stop();
    *alive_ = false;
    std::map<std::uint64_t, std::shared_ptr<std::promise<void>>> promises;
    std::map<std::string, call_completion> awaiting;
    {
        std::lock_guard<std::mutex> lk(mu_);
        promises.swap(promises_);
        awaiting.swap(awaiting_);
        closed_ = true;
    }
    for (auto& [s, p] : promises) p->set_exception(std::make_exception_ptr(client_closed("client closed before the publish completed (it stays in the outbox)")));
    for (auto& [s, done] : awaiting) done(std::make_exception_ptr(client_closed("client closed before the result arrived")), {});
    std::lock_guard<std::mutex> lk(cli_mu_);
    current_paho_ = nullptr;
    keep_tainted_paho();
    cli_.reset();  // Paho must stop calling us before the members it uses go
    retired_paho_.clear();
}

void client::impl::taint_paho(const mqtt::iasync_client* cli) {
    std::lock_guard<std::mutex> lk(taint_mu_);
    tainted_paho_.insert(cli);
}

void client::impl::keep_tainted_paho() {
    // A Paho client holding a freed publish (see listener::on_failure) is disconnected and inert, but
    // destroying it frees that topic and payload a second time: Paho's heap tracker lets the free through
    // when the address has been reused by another Paho allocation, which corrupts the heap of the whole
    // process (crashes in Paho's receive thread, in free(), in LMDB's malloc). So it is kept for the life
    // of the process, with callbacks that no longer reach this client. Called with cli_mu_ held.
    static std::mutex kept_mu;
    static auto* kept = new std::vector<std::shared_ptr<mqtt::async_client>>;  // never destroyed
    std::set<const mqtt::iasync_client*> tainted;
    {
        // Not held across Paho calls: Paho's send thread takes taint_mu_ with Paho's own mutex held.
        std::lock_guard<std::mutex> t(taint_mu_);
        tainted.swap(tainted_paho_);
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
    for (auto& c : retired_paho_) keep(c);
    if (!tainted.empty())
        log(log_level::debug, "kept " + std::to_string(tainted.size()) +
                                  " Paho client(s) undestroyed: a failed publish left them with freed memory");
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
    m->created_ms = now_ms();
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
    if (const auto limit = max_packet_size_.load(); limit && publish_packet_size(*pub.msg, opts_.mqtt_version == 5) > limit)
        throw message_too_large("a message of " + std::to_string(publish_packet_size(*pub.msg, opts_.mqtt_version == 5)) +
                                " bytes on " + topic + " is larger than the broker takes (" + std::to_string(limit) + " bytes)");
    submit_publish(std::move(pub), std::move(prom));
}

void client::impl::submit_publish(stored_publish pub, std::shared_ptr<std::promise<void>> prom) {
    {
        // Counted from now, so wait_outbox_empty right after publish waits for it.
        std::lock_guard<std::mutex> lk(mu_);
        if (prom) promises_[pub.seq] = prom;
        ++outbox_count_;
    }
    std::lock_guard<std::mutex> order(seq_mu_);
    committer_->submit({std::move(pub.op)}, [this, seq = pub.seq, msg = pub.msg, prom](std::exception_ptr e) {
        if (e) {
            {
                std::lock_guard<std::mutex> lk(mu_);
                --outbox_count_;
                state_cv_.notify_all();
            }
            if (prom) {
                bool ours;
                {
                    // close() may have failed it already (client_closed): a promise is satisfied once.
                    std::lock_guard<std::mutex> lk(mu_);
                    ours = promises_.erase(seq) > 0;
                }
                if (ours) prom->set_exception(e);
            } else {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    log(log_level::error, std::string("a posted publish could not be stored: ") + ex.what());
                    fire(opts_.hooks.on_storage_error, std::string(ex.what()));
                }
            }
            return;
        }
        on_stored(seq, msg);
    });
}

void client::impl::commit_publishes(std::vector<write_op> ops, std::vector<stored_publish> pubs) {
    for (auto& p : pubs) ops.push_back(p.op);
    committer_->commit(std::move(ops));
    {
        std::lock_guard<std::mutex> lk(mu_);
        outbox_count_ += pubs.size();
    }
    for (auto& p : pubs) on_stored(p.seq, p.msg, true);
}

void client::impl::on_stored(std::uint64_t seq, std::shared_ptr<stored_message> msg, bool send_here) {
    // Counted as pending by the caller, before the commit.
    std::unique_lock<std::mutex> lk(mu_);
    // Offline or far behind, the message waits on disk, not in memory.
    sendq_.add(seq, connected_ && sendq_.in_memory() < ready_cap ? std::move(msg) : nullptr);
    if (!sender_has_work()) return;
    // A call's invoke or a command's outcome, with nothing ahead of it and room in the window, goes to Paho
    // from the thread that stored it: waking the sender would put a hand-off (two context switches) on the
    // path of every call, twice. With more waiting, the sender hands Paho bursts (docs/benchmarks.md, F17).
    // Never from within a commit's `done` (send_here false): that runs on the committer's thread, or on a
    // caller leading a commit, which Paho's threads may be waiting for while they hold Paho's lock.
    if (send_here && !dispatching_ && sendq_.waiting() == 1 && sendq_.in_memory() == 1 &&
        dispatch(lk, nullptr) == send_outcome::sent && !sender_has_work())
        return;
    send_cv_.notify_one();
}

std::shared_ptr<mqtt::message> client::impl::to_paho(const stored_message& m) const {
    auto msg = std::make_shared<mqtt::message>(m.topic, m.payload, 2, m.retain);
    if (opts_.mqtt_version == 5) {
        mqtt::properties props;
        if (!m.props.content_type.empty()) props.add({mqtt::property::CONTENT_TYPE, m.props.content_type});
        if (!m.props.correlation_data.empty())
            props.add({mqtt::property::CORRELATION_DATA, mqtt::binary(m.props.correlation_data)});
        if (!m.props.response_topic.empty()) props.add({mqtt::property::RESPONSE_TOPIC, m.props.response_topic});
        if (m.props.expiry_seconds) {
            // The expiry counts from when the message was accepted, not from when it is sent.
            const auto elapsed_s = std::max<std::int64_t>(0, (now_ms() - m.created_ms) / 1000);
            const auto left = std::max<std::int64_t>(1, std::int64_t(*m.props.expiry_seconds) - elapsed_s);
            props.add({mqtt::property::MESSAGE_EXPIRY_INTERVAL, static_cast<int32_t>(std::min<std::int64_t>(left, INT32_MAX))});
        }
        for (const auto& [k, v] : m.props.user) props.add({mqtt::property::USER_PROPERTY, k, v});
        msg->set_properties(props);
    }
    return msg;
}

bool client::impl::sender_has_work() const {
    if (!connected_ || send_blocked_ || buffer_full_ || !sendq_.burst_ready()) return false;
    // Measured against a burst of a quarter of the window: +6 % process events (F17).
    return !detail::connect_gate::process().closed_to(&gate_member_);  // another client connects
}

void client::impl::sender_loop() {
    auto refused_pause = std::chrono::milliseconds(10);  // back-off while Paho refuses for other reasons
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
        send_cv_.wait(lk, [&] { return closing_ || (sender_has_work() && !dispatching_); });
        if (closing_) return;
        const auto outcome = dispatch(lk, nullptr);
        if (outcome == send_outcome::pause) {
            send_cv_.wait_for(lk, refused_pause, [&] { return closing_.load(); });
            refused_pause = std::min(refused_pause * 2, std::chrono::milliseconds(1000));
        } else if (outcome == send_outcome::sent) {
            refused_pause = std::chrono::milliseconds(10);
        }
    }
}

client::impl::send_outcome client::impl::dispatch(std::unique_lock<std::mutex>& lk, mqtt::iasync_client* from) {
    // mu_ held, released while Paho is called
    const auto gen = connection_gen_;
    dispatching_ = true;
    auto batch = take_batch();
    lk.unlock();
    int refused_rc;
    {
        std::shared_ptr<mqtt::async_client> current;
        if (!from) {
            // This may be the last reference to a Paho client replaced meanwhile; destroying it fails its
            // tokens, whose callbacks take mu_: it goes before mu_ is taken again.
            current = paho();
            from = current.get();
        }
        refused_rc = publish_batch(batch, from);
    }
    lk.lock();
    dispatching_ = false;
    return settle_batch(batch, refused_rc, gen);
}

std::vector<client::impl::send_item> client::impl::take_batch() {
    // mu_ held. Takes what the window allows in one go: one lock hand-off per batch, not per message.
    std::vector<send_item> batch;
    for (auto& it : sendq_.take(64)) {
        send_item item;
        item.seq = it.seq;
        item.msg = std::move(it.msg);
        batch.push_back(std::move(item));
    }
    return batch;
}

int client::impl::publish_batch(std::vector<send_item>& batch, mqtt::iasync_client* cli) {
    // mu_ not held
    int refused_rc = 0;
    for (auto& it : batch) {
        if (refused_rc) break;  // Paho refused one: the rest of the batch waits too
        if (!it.msg) {
            try {
                it.msg = read_outgoing(it.seq);
            } catch (const std::exception& e) {
                log(log_level::error, "outbox record " + sequence_id(it.seq) + " is unreadable: " + e.what());
                fire(opts_.hooks.on_storage_error, std::string(e.what()));
            }
            if (!it.msg) {
                it.gone = true;
                continue;
            }
        }
        if (const auto limit = max_packet_size_.load();
            limit && publish_packet_size(*it.msg, opts_.mqtt_version == 5) > limit) {
            // Stored before this broker's limit was known (offline, or a call's invoke): the broker would
            // drop the connection at it, and this record would be sent first again, for ever.
            it.too_large = true;
            continue;
        }
        try {
            if (!cli) throw mqtt::exception(MQTTASYNC_DISCONNECTED);
            auto tok = cli->publish(to_paho(*it.msg), reinterpret_cast<void*>(static_cast<std::uintptr_t>(it.seq)),
                                    *listener_);
            it.sent = true;
            persistence_->map_packet(tok->get_message_id(), it.seq);
        } catch (const mqtt::exception& e) {
            refused_rc = e.get_return_code() ? e.get_return_code() : MQTTASYNC_FAILURE;
            log(log_level::debug, std::string("publish deferred: ") + e.what());
        } catch (const std::exception& e) {
            // The packet mapping could not be stored: the publish is out; a crash now costs a duplicate.
            log(log_level::error, std::string("storing the packet id of a publish failed: ") + e.what());
        }
        if (it.sent) fire(opts_.hooks.on_packet_send, it.msg->topic, it.msg->payload);
    }
    for (auto& it : batch)
        if (it.too_large)
            refuse(it.seq, 0x95, "the message (" + std::to_string(publish_packet_size(*it.msg, opts_.mqtt_version == 5)) +
                                     " bytes) is larger than the broker takes (" +
                                     std::to_string(max_packet_size_.load()) + " bytes)");
    return refused_rc;
}

client::impl::send_outcome client::impl::settle_batch(std::vector<send_item>& batch, int refused_rc,
                                                      std::uint64_t gen) {
    // mu_ held
    // Each only if still in flight: it may have completed, or failed and been queued again, meanwhile.
    for (auto& it : batch) {
        if (it.gone)
            sendq_.drop(it.seq);  // the record is gone from the store: nothing to send
        else if (!it.sent)
            sendq_.not_taken(it.seq, it.msg);
        else
            sendq_.keep(it.seq, it.msg);
    }
    if (!refused_rc) return send_outcome::sent;
    // A refusal by the client of a connection that has been replaced since says nothing about the new
    // one: blocking on it would stall the outbox until the next reconnect.
    if (gen != connection_gen_) return send_outcome::held;
    // Paho's queue is full: wait for a completion. Not connected: wait for the next connection.
    if (refused_rc == MQTTASYNC_MAX_BUFFERED_MESSAGES) {
        buffer_full_ = true;
        return send_outcome::held;
    }
    if (refused_rc == MQTTASYNC_DISCONNECTED) {
        send_blocked_ = true;
        return send_outcome::held;
    }
    // Anything else (Paho could not store its record on a full disk: -2) is no connection problem, and
    // no reconnect would come to end a wait for one: try again after a pause.
    return send_outcome::pause;
}

void client::impl::on_delivered(std::uint64_t seq, int reason_code, mqtt::iasync_client* from) {
    // Paho reports success even when an MQTT 5 PUBREC carries a failure reason code.
    if (reason_code >= 0x80) return refuse(seq, reason_code);
    std::shared_ptr<std::promise<void>> prom;
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (!sendq_.finish(seq)) return;  // completed already
        buffer_full_ = false;
        auto it = promises_.find(seq);
        if (it != promises_.end()) {
            prom = it->second;
            promises_.erase(it);
        }
        if (sender_has_work() && !dispatching_) {
            if (from && from == current_paho_.load()) {
                // The window has room: hand Paho the next batch from here, on Paho's receive thread, which
                // holds Paho's lock already. Woken for it, the sender thread would wait for that lock
                // against Paho's threads and cost two more context switches (docs/benchmarks.md, F17).
                // Paho is inside a callback of `from`, so it cannot be destroyed meanwhile.
                // Pauses after other refusals are the sender thread's: a callback must not sleep.
                if (dispatch(lk, from) == send_outcome::pause || sender_has_work()) send_cv_.notify_one();
            } else {
                send_cv_.notify_one();
            }
        }
    }
    ++published_;
    notify_gate();
    if (prom) prom->set_value();
    // Only costs a duplicate after a crash if lost: no sync of its own, it joins the next commit.
    committer_->submit({{table::outgoing, sequence_id(seq), std::nullopt}}, [this](std::exception_ptr e) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                // Only costs a duplicate after a restart; still, say so.
                log(log_level::error, std::string("removing a completed publish failed: ") + ex.what());
                fire(opts_.hooks.on_storage_error, std::string(ex.what()));
            }
        }
        std::lock_guard<std::mutex> lk(mu_);
        --outbox_count_;
        state_cv_.notify_all();
    }, detail::urgency::background);
}

void client::impl::on_send_failed(std::uint64_t seq, int rc, int reason_code, const mqtt::iasync_client* from) {
    if (reason_code >= 0x80) return refuse(seq, reason_code);
    // A publish of an earlier connection's Paho client that fails now (its queued command, once Paho
    // notices the loss) was taken back into the outbox when the connection was replaced, and may be in
    // flight on the current one already: sent again here, it reached the broker twice (finding H8).
    if (from && from != current_paho_.load()) return;
    std::unique_lock<std::mutex> lk(mu_);
    auto msg = sendq_.take_back(seq);
    if (!msg) return;
    // Lost with the connection or the session: it is sent again, as the outbox promises.
    log(log_level::debug, "publish " + sequence_id(seq) + " interrupted (rc " + std::to_string(rc) + "), will resend");
    sendq_.again(seq, std::move(*msg));
    buffer_full_ = false;
    send_cv_.notify_one();
    lk.unlock();
    notify_gate();
}

namespace {

// MQTT 5 reason codes that refuse a publish for now, not for good.
bool transient_refusal(int reason_code) {
    return reason_code == 0x89     // server busy
           || reason_code == 0x97;  // quota exceeded
}

}  // namespace

void client::impl::refuse(std::uint64_t seq, int reason_code, const std::string& reason) {
    if (transient_refusal(reason_code)) return refuse_for_now(seq, reason_code);
    std::shared_ptr<stored_message> msg;
    std::shared_ptr<std::promise<void>> prom;
    bool known = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (auto m = sendq_.take_back(seq)) {
            known = true;
            msg = std::move(*m);
        }
        auto p = promises_.find(seq);
        if (p != promises_.end()) {
            prom = p->second;
            promises_.erase(p);
        }
        sendq_.forget_refusals(seq);
        send_cv_.notify_one();
    }
    if (!known) return;  // completed or refused already
    notify_gate();
    const std::string why = !reason.empty() ? reason
                                            : "broker refused the publish with reason code " + std::to_string(reason_code) +
                                                  (reason_code == 0x87 ? " (not authorized)" : "");
    if (!msg) {
        // Sent from disk (a resumed or backlogged publish): the dead letter needs the record.
        try {
            msg = read_outgoing(seq);
        } catch (const std::exception& e) {
            log(log_level::error, "outbox record " + sequence_id(seq) + " is unreadable: " + e.what());
        }
    }
    log(log_level::error, why + (msg ? " on " + msg->topic : ""));
    // Sending it again would be refused again; keep it as a dead letter so nothing vanishes silently.
    std::vector<write_op> ops{{table::outgoing, sequence_id(seq), std::nullopt}};
    std::vector<std::pair<std::string, stored_message>> local;
    if (msg) {
        stored_message dl = *msg;
        dl.error = why;
        dl.outgoing = true;
        ops.push_back({table::dead_letters, sequence_id(seq), encode_record(dl)});
        std::optional<std::string> call_id;
        if (msg->kind == "call") call_id = wire::decode_message_id(msg->payload, msg->props);
        if (call_id) {
            if (auto p = take_awaiting(*call_id)) {
                // call_async: its future fails with the broker's reason.
                ops.push_back({table::calls, *call_id, std::nullopt});
                p(std::make_exception_ptr(broker_error(why, reason_code)), {});
                call_id.reset();
            }
        }
        if (call_id) {
            // call(): a refused invoke never reaches a server, so its result handlers get a reject from
            // here, through the inbox like any result.
            const auto command = msg->topic.substr(0, msg->topic.size() - std::string("/invoke").size());
            if (auto id = call_id) {
                const int status = reason_code == 0x87 ? 403 : 502;
                auto out = wire::encode_reject(wire::detect_format(msg->props), *id, status, why, "");
                stored_message rec;
                rec.topic = wire::reject_topic(command);
                rec.payload = std::move(out.payload);
                rec.props = std::move(out.props);
                rec.created_ms = now_ms();
                local = inbox_records(std::move(rec));
                for (const auto& [rid, r] : local) ops.push_back({table::incoming, rid, encode_record(r)});
            }
        }
    }
    try {
        committer_->commit(std::move(ops));
    } catch (const std::exception& e) {
        // Still in the outbox: sent again (and refused again) after a restart.
        log(log_level::error, std::string("storing the dead letter of a refused publish failed: ") + e.what());
        fire(opts_.hooks.on_storage_error, std::string(e.what()));
        if (prom) prom->set_exception(std::make_exception_ptr(broker_error(why, reason_code)));
        return;
    }
    std::vector<std::shared_ptr<lane>> wake;
    {
        std::lock_guard<std::mutex> lk(mu_);
        --outbox_count_;
        if (msg) ++dead_count_;
        inbox_count_ += local.size();
        for (auto& [rid, r] : local)
            if (auto l = routes_.route(rid, std::move(r))) wake.push_back(std::move(l));
        state_cv_.notify_all();
    }
    for (auto& l : wake) l->cv.notify_one();
    if (msg) {
        message m;
        m.topic = msg->topic;
        m.payload = msg->payload;
        m.props = msg->props;
        m.id = sequence_id(seq);
        fire(opts_.hooks.on_dead_letter, m, why);
    }
    if (prom) prom->set_exception(std::make_exception_ptr(broker_error(why, reason_code)));
}

void client::impl::refuse_for_now(std::uint64_t seq, int reason_code) {
    std::shared_ptr<stored_message> msg;
    std::chrono::milliseconds delay;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto m = sendq_.take_back(seq);
        if (!m) return;
        msg = std::move(*m);
        const auto n = std::min<std::uint32_t>(sendq_.count_refusal(seq), 16);
        delay = std::min(opts_.reconnect_min * (1 << n), opts_.reconnect_max);
        send_cv_.notify_one();
    }
    notify_gate();
    log(log_level::warning, "broker refused publish " + sequence_id(seq) + " for now (reason code " +
                                std::to_string(reason_code) + "): sent again in " + std::to_string(delay.count()) + " ms");
    schedule(std::chrono::steady_clock::now() + delay, [this, seq, msg] {
        std::lock_guard<std::mutex> lk(mu_);
        sendq_.again(seq, msg);
        if (sender_has_work()) send_cv_.notify_one();
    });
}

// ---------------------------------------------------------------------------------------------------
// inbox

void client::impl::commit_until_stored(const std::vector<write_op>& ops, detail::urgency u) {
    // Without syncs there is nothing to share: never wait for a later commit to carry this one. With no
    // commit running the committer makes it on this thread (no hand-off); with one running it waits, so
    // batches queued before (a lane's relabelling, say) are not overtaken.
    if (store_->durability() == durability::process) u = detail::urgency::now;
    auto delay = std::chrono::milliseconds(10);
    while (true) {
        try {
            committer_->commit(ops, u);
            return;
        } catch (const client_closed&) {
            throw;
        } catch (const std::exception& e) {
            log(log_level::error, std::string("cannot store an arriving message, holding its acknowledgement: ") + e.what());
            fire(opts_.hooks.on_storage_error, std::string(e.what()));
        }
        if (closing_) throw client_closed("closing");
        std::this_thread::sleep_for(delay);  // storage back-off: nothing to await but free space
        delay = std::min(delay * 2, std::chrono::milliseconds(1000));
    }
}

void client::impl::on_arrived(mqtt::const_message_ptr msg) {
    // Runs on Paho's receive thread, with Paho's process-wide lock held, before the acknowledgement leaves
    // (MQTT 5: PUBREC, at PUBLISH; 3.1.1: PUBCOMP, at PUBREL): the commit here is what makes the
    // acknowledgement safe. Paho sends it whatever happens here, so a message that is not stored has its
    // connection cut instead (refuse_arrival), and the broker sends it again on the next one. Nothing may
    // escape into Paho (it does not catch).
    if (nagle_) nagle_->on_message();
    int packet_id = 0, qos = 0;
    std::vector<std::pair<std::string, stored_message>> recs;
    std::optional<command_result> result;  // an awaited result: answered here, not through the inbox
    try {
        packet_id = msg->c_struct().msgid;
        qos = msg->get_qos();
        // The broker's resend of a message committed in an earlier connection (paho_persistence.h): Paho
        // acknowledges it when this returns.
        const std::string& topic = msg->get_topic();
        const std::string& payload = msg->get_payload_str();
        std::vector<std::uint32_t> sub_ids;
        const auto& props = msg->get_properties();
        for (std::size_t i = 0, n = props.count(mqtt::property::SUBSCRIPTION_IDENTIFIER); i < n; ++i)
            sub_ids.push_back(mqtt::get<uint32_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIER, i));
        if (qos == 2 && opts_.mqtt_version == 5 && persistence_->take_resend(packet_id, topic, payload, sub_ids))
            return;
        fire(opts_.hooks.on_packet_receive, topic, payload);
        stored_message rec;
        rec.topic = topic;
        rec.payload = payload;
        rec.props = from_paho(props);
        rec.retain = msg->is_retained();
        rec.created_ms = now_ms();
        recs = inbox_records(std::move(rec), sub_ids);
        if (recs.size() == 1) result = awaited_result(recs.front().second);
        std::vector<write_op> ops;
        if (result)
            ops.push_back({table::calls, result->message_id, std::nullopt});  // the call is answered
        else
            for (const auto& [id, r] : recs) ops.push_back({table::incoming, id, encode_record(r)});
        if (!commit_arrival(ops)) return refuse_arrival(packet_id, qos, "the message could not be stored");
    } catch (const std::exception& e) {
        return refuse_arrival(packet_id, qos, std::string("the message could not be taken in: ") + e.what());
    } catch (...) {
        return refuse_arrival(packet_id, qos, "the message could not be taken in");
    }
    // Stored: from here on a failure costs at most a delay, never the message.
    try {
        ++delivered_;
        if (qos == 2) persistence_->release_inbound(packet_id);
    } catch (const std::exception&) {
        // Reported by the persistence; without the record a crash only costs a redelivery.
    }
    if (result) {
        try {
            on_arrived_result(recs.front().first, recs.front().second, *result);
        } catch (const std::exception& e) {
            log(log_level::error, std::string("the completion of call ") + result->message_id + " failed: " + e.what());
        } catch (...) {
            log(log_level::error, "the completion of call " + result->message_id + " failed");
        }
        return;
    }
    try {
        std::vector<std::shared_ptr<lane>> wake;
        {
            std::lock_guard<std::mutex> lk(mu_);
            hold_off_ = std::chrono::milliseconds(0);
            inbox_count_ += recs.size();
            for (auto& [id, r] : recs)
                if (auto l = routes_.route(id, std::move(r))) wake.push_back(std::move(l));
        }
        // Woken with mu_ released: a lane woken under it preempted this thread only to block on mu_, two
        // more context switches per message (docs/benchmarks.md, F16).
        for (auto& l : wake) l->cv.notify_one();
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

void client::impl::refuse_arrival(int packet_id, int qos, const std::string& why) {
    try {
        if (qos == 2) persistence_->refuse_inbound(packet_id);
    } catch (const std::exception&) {
        // Reported by the persistence. The cut below still keeps the acknowledgement from leaving.
    }
    cut_connection(why);
    if (closing_) return;
    std::lock_guard<std::mutex> lk(mu_);
    hold_off_ = std::min(std::max(hold_off_ * 2, opts_.reconnect_min), opts_.reconnect_max);
}

void client::impl::cut_connection(const std::string& why) {
    bool cut = false;
    {
        std::lock_guard<std::mutex> lk(own_mu_);
        cut = own_socket_.shutdown();
        // Not claimed (a message that came with the CONNACK, or a socket that could not be told apart):
        // the sockets no other client has claimed.
        if (!cut) cut = detail::shutdown_unclaimed_sockets_to_peer(current_server().host, current_server().port) > 0;
    }
    log(closing_ ? log_level::debug : log_level::warning,
        "connection cut so that no acknowledgement leaves: " + why + (cut ? "" : " (no socket found)"));
}

std::vector<std::pair<std::string, stored_message>> client::impl::inbox_records(
    stored_message rec, const std::vector<std::uint32_t>& sub_ids) {
    std::vector<std::string> filters;
    {
        std::lock_guard<std::mutex> lk(mu_);
        filters = routes_.lanes_for(rec.topic, sub_ids);
    }
    std::vector<std::pair<std::string, stored_message>> out;
    for (const auto& f : filters) {
        rec.lane = f;
        out.emplace_back(sequence_id(next_seq_++), rec);
    }
    return out;
}

subscription_id client::impl::add_handler(const std::string& filter, lane_handler handler, unsigned concurrency) {
    validate_topic_filter(filter);
    require_open();
    bool fresh = false;
    subscription_id id;
    std::vector<write_op> relabel;
    {
        std::lock_guard<std::mutex> lk(mu_);
        id = next_sub_++;
        // Lanes stopped by unsubscribe have finished (or will soon): reap the ones that have.
        routes_.reap_retired();
        lane* l = routes_.find(filter);
        if (!l) {
            auto opened = routes_.open(filter, concurrency);
            l = opened.first.get();
            relabel = std::move(opened.second);
            l->thread = std::thread([this, l] { lane_loop(l); });
            fresh = true;
        }
        routes_.add_handler(id, *l, std::move(handler));
        fresh = fresh && connected_;
    }
    // Recording the lane is bookkeeping: if it is lost the record is parked again and re-adopted.
    if (!relabel.empty()) committer_->submit(std::move(relabel), nullptr);
    if (fresh) subscribe_at_broker(filter);
    return id;
}

void client::impl::remove_handler(subscription_id id) {
    if (remove_result_handler(id)) return;
    std::string filter;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto r = routes_.remove_handler(id);
        // Not the last handler of its lane: the subscription stays. The last: the lane stops, and its
        // deliveries wait (parked) for a new subscription.
        if (!r || !r->stopped) return;
        filter = r->filter;
        r->stopped->cv.notify_all();
    }
    unsubscribe_at_broker(filter);
}

void client::impl::remove_filter(const std::string& filter) {
    std::vector<subscription_id> ids;
    {
        std::lock_guard<std::mutex> lk(mu_);
        ids = routes_.handlers_of(filter);
    }
    for (auto id : ids) remove_handler(id);
}

void client::impl::lane_loop(lane* l) {
    lane_of = this;
    std::unique_lock<std::mutex> lk(mu_);
    while (!closing_ && !l->stopping) {
        // The first delivery whose handlers are not at work already (effects::later), while the lane's
        // concurrency allows one more.
        auto it = l->queue.begin();
        while (it != l->queue.end() && l->working.count(it->first)) ++it;
        if (it == l->queue.end() || l->working.size() >= l->concurrency) {
            l->cv.wait(lk);
            continue;
        }
        auto wait = it->second.next_attempt_ms - now_ms();
        if (wait > opts_.retry.cap.count()) {
            // next_attempt_ms is wall-clock time, so that the backoff holds across restarts, and no delay
            // is longer than the cap: the clock was set back. Wait one cap from now.
            it->second.next_attempt_ms = now_ms() + opts_.retry.cap.count();
            wait = opts_.retry.cap.count();
        }
        if (wait > 0) {
            l->cv.wait_for(lk, std::chrono::milliseconds(wait));
            continue;
        }
        const std::string id = it->first;
        stored_message rec = it->second;
        std::vector<std::pair<subscription_id, lane_handler>> handlers(l->handlers.begin(), l->handlers.end());
        if (l->head_id != id) {
            l->head_id = id;
            l->head_done.clear();
        }
        for (auto done : l->head_done)
            handlers.erase(std::remove_if(handlers.begin(), handlers.end(), [&](auto& h) { return h.first == done; }),
                           handlers.end());
        lk.unlock();
        process(l, id, std::move(rec), std::move(handlers));
        lk.lock();
    }
    l->finished = true;
    state_cv_.notify_all();  // the destructor may be waiting for a lane that close() left running
}

void client::impl::process(lane* l, const std::string& id, stored_message rec,
                           std::vector<std::pair<subscription_id, lane_handler>> handlers) {
    const message m = message_of(id, rec, rec.attempts + 1);
    fire(opts_.hooks.on_message, m);

    effects fx;
    std::string err;
    bool ok = true, poison = false;
    for (auto& [sid, h] : handlers) {
        try {
            h(m, fx);
            std::lock_guard<std::mutex> lk(mu_);
            if (l->head_id == id) l->head_done.insert(sid);
        } catch (const parse_error& e) {
            poison = true;
            err = e.what();
            break;
        } catch (const std::exception& e) {
            ok = false;
            err = e.what();
            break;
        } catch (...) {
            ok = false;
            err = "handler threw a non-standard exception";
            break;
        }
    }
    if (poison) return dead_letter_record(id, std::move(rec), err, true);
    if (ok && fx.later) {
        // The work goes on elsewhere; the delivery stays in the inbox, at work, until it finishes.
        auto later = std::move(fx.later);
        fx.later = nullptr;
        {
            std::lock_guard<std::mutex> lk(mu_);
            l->working.insert(id);
        }
        auto done = std::make_shared<effects>(std::move(fx));
        later([this, keep = l->shared_from_this(), id, done](effects rest) {
            auto& fx = *done;
            fx.ops.insert(fx.ops.end(), rest.ops.begin(), rest.ops.end());
            fx.publishes.insert(fx.publishes.end(), rest.publishes.begin(), rest.publishes.end());
            fx.after_commit.insert(fx.after_commit.end(), rest.after_commit.begin(), rest.after_commit.end());
            complete(keep.get(), id, std::move(fx));
        });
        return;
    }
    if (ok) return complete(l, id, std::move(fx));
    rec.attempts += 1;
    ++retries_;
    if (opts_.retry.max_attempts && rec.attempts >= opts_.retry.max_attempts)
        return dead_letter_record(id, std::move(rec),
                                  "gave up after " + std::to_string(rec.attempts) + " attempts: " + err, false);
    const auto delay = opts_.retry.delay_after(rec.attempts);
    rec.next_attempt_ms = now_ms() + delay.count();
    try {
        // The attempt count is kept so that backoff and max_attempts hold across restarts.
        commit_until_stored({{table::incoming, id, encode_record(rec)}});
    } catch (const client_closed&) {
        return;
    }
    fire(opts_.hooks.on_message_retry, m, err, delay);
    std::lock_guard<std::mutex> lk(mu_);
    auto it = l->queue.find(id);
    if (it != l->queue.end()) it->second = std::move(rec);
}

message client::impl::message_of(const std::string& id, const stored_message& rec, std::uint32_t attempt) {
    message m;
    m.topic = rec.topic;
    m.payload = rec.payload;
    m.props = rec.props;
    m.id = id;
    m.attempt = attempt;
    m.received_at_ms = rec.created_ms;
    return m;
}

void client::impl::complete(lane* l, const std::string& id, effects fx) {
    // A plain removal does not need a sync of its own: it rides with the next arriving message's
    // commit (or goes alone when the inbox is idle). Outcomes of commands do, they are sent next.
    // The lane waits for it either way, so a crash hands over again at most the deliveries at work.
    const auto urgency = fx.ops.empty() && fx.publishes.empty() ? detail::urgency::linger : detail::urgency::now;
    fx.ops.push_back({table::incoming, id, std::nullopt});
    try {
        for (auto& [seq, msg] : fx.publishes) fx.ops.push_back({table::outgoing, sequence_id(seq), encode_record(*msg)});
        commit_until_stored(fx.ops, urgency);
    } catch (const client_closed&) {
        std::lock_guard<std::mutex> lk(mu_);
        l->working.erase(id);  // stays in the inbox; handled again after restart
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        outbox_count_ += fx.publishes.size();
    }
    for (auto& [seq, msg] : fx.publishes) on_stored(seq, msg, true);
    for (auto& f : fx.after_commit) f();
    ++handled_;
    std::lock_guard<std::mutex> lk(mu_);
    routes_.done(*l, id);  // parked, if the lane was unsubscribed meanwhile
    --inbox_count_;
    if (l->working.erase(id)) l->cv.notify_all();
    state_cv_.notify_all();
}

void client::impl::dead_letter_record(const std::string& id, stored_message rec, const std::string& reason,
                                      bool parse) {
    message m;
    m.topic = rec.topic;
    m.payload = rec.payload;
    m.props = rec.props;
    m.id = id;
    m.attempt = parse ? rec.attempts + 1 : rec.attempts;  // the attempt that failed
    rec.error = reason;
    try {
        commit_until_stored({{table::incoming, id, std::nullopt}, {table::dead_letters, id, encode_record(rec)}});
    } catch (const client_closed&) {
        return;
    }
    log(log_level::warning, "dead letter " + id + " on " + rec.topic + ": " + reason);
    if (parse) fire(opts_.hooks.on_parse_error, m, reason);
    fire(opts_.hooks.on_dead_letter, m, reason);
    std::lock_guard<std::mutex> lk(mu_);
    routes_.erase(id);
    --inbox_count_;
    ++dead_count_;
    state_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------------
// inspection

std::vector<dead_letter> client::impl::dead_letters() const {
    std::vector<dead_letter> out;
    store_->for_each(table::dead_letters, [&](const std::string& id, const std::string& v) {
        dead_letter d;
        d.id = id;
        try {
            d.record = decode_record(v);
        } catch (const storage_error& e) {
            d.record.error = e.what();
        }
        out.push_back(std::move(d));
        return true;
    });
    return out;
}

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
        std::lock_guard<std::mutex> lk(mu_);
        --dead_count_;
        ++outbox_count_;
        sendq_.again(*seq, std::make_shared<stored_message>(std::move(rec)));
        if (sender_has_work()) send_cv_.notify_one();
        return true;
    }
    committer_->commit({{table::dead_letters, id, std::nullopt}, {table::incoming, id, encode_record(rec)}});
    std::shared_ptr<lane> wake;
    {
        std::lock_guard<std::mutex> lk(mu_);
        --dead_count_;
        ++inbox_count_;
        wake = routes_.route(id, std::move(rec));
    }
    if (wake) wake->cv.notify_one();
    return true;
}

bool client::impl::purge_dead_letter(const std::string& id) {
    if (!store_->get(table::dead_letters, id)) return false;
    committer_->commit({{table::dead_letters, id, std::nullopt}});
    std::lock_guard<std::mutex> lk(mu_);
    --dead_count_;
    return true;
}

bool client::impl::wait_outbox_empty(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return state_cv_.wait_for(lk, timeout, [&] { return outbox_count_ == 0; });
}

bool client::impl::wait_inbox_empty(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return state_cv_.wait_for(lk, timeout, [&] { return inbox_count_ == 0; });
}

client_stats client::impl::stats() const {
    client_stats s;
    std::lock_guard<std::mutex> lk(mu_);
    s.outbox = outbox_count_;
    s.inbox = inbox_count_;
    s.dead_letters = dead_count_;
    s.published = published_;
    s.delivered = delivered_;
    s.handled = handled_;
    s.retries = retries_;
    s.connected = connected_;
    s.last_error = last_error_;
    s.server_uri = current_server().uri;
    s.nagle_streams = nagle_ ? nagle_->streams() : 0;
    return s;
}

std::vector<metric> client::impl::metrics() const {
    const auto s = stats();
    std::size_t calls_at_work = 0;
    {
        std::lock_guard<std::mutex> lk(results_mu_);
        calls_at_work = running_.size();
    }
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
    return impl_->add_handler(filter, [h = std::move(handler)](const message& m, effects&) { h(m); });
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
