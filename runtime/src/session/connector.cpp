#include "session/connector.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>

#include <algorithm>
#include <cctype>
#include <climits>

#include "session/broker_capabilities.h"
#include "session/ca_bundle.h"
#include "session/tcp_nodelay.h"
#include "xymqtt/exception.h"

namespace xymqtt::detail {

std::vector<connector::server> connector::servers_of(const client_options& opts) {
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

connector::connector(const client_options& opts, std::function<void(const std::string&)> warn)
    : opts_(opts), warn_(std::move(warn)), servers_(servers_of(opts)) {
    builder_ = std::make_unique<mqtt::connect_options_builder>();
    auto& b = *builder_;
    if (opts_.mqtt_version == 5) {
        b.mqtt_version(MQTTVERSION_5);
        b.clean_start(false);  // the MQTT 5 properties are made at each connect
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
    const bool tls_scheme = std::any_of(servers_.begin(), servers_.end(), [](const server& v) { return v.tls; });
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
}

connector::~connector() = default;

connector::connack connector::connect(mqtt::async_client& cli, bool shared) {
    {
        std::lock_guard<std::mutex> g(tls_error_mu_);
        tls_error_.clear();
    }
    // A fresh copy from the builder each time, alive until Paho has copied it: a connect_options copied
    // from one that is gone keeps pointing at the old MQTT 5 properties (Paho C++ 1.2), silently dropping
    // the session expiry, and with it the session at every disconnect. The properties are made here, with
    // a Paho client alive, not once at construction: Paho C's heap tracker starts afresh when a client is
    // created after the last one was destroyed (each reconnect), forgets what was allocated before, and
    // then never frees it (471 bytes per client and reconnect under LeakSanitizer).
    auto co = builder_->finalize();
    if (opts_.mqtt_version == 5)
        co.set_properties({{mqtt::property::SESSION_EXPIRY_INTERVAL,
                            static_cast<int32_t>(std::min<std::int64_t>(opts_.session_expiry.count(), INT32_MAX))},
                           {mqtt::property::RECEIVE_MAXIMUM, static_cast<int16_t>(opts_.receive_maximum)}});
    auto tok = cli.connect(co);
    if (!tok->wait_for(opts_.connect_timeout + std::chrono::seconds(2)))
        throw mqtt::exception(MQTTASYNC_FAILURE, "connect timed out");
    const auto rsp = tok->get_connect_response();
    connack out;
    out.session_present = rsp.is_session_present();
    // MQTT 3.1.1 brokers say nothing: the configured figures.
    out.receive_maximum = opts_.mqtt_version == 5 ? 65535 : opts_.broker_receive_maximum_311;
    out.max_packet_size = opts_.mqtt_version == 5 ? 0 : opts_.broker_maximum_packet_size_311;
    const auto& props = rsp.get_properties();
    if (props.contains(mqtt::property::RECEIVE_MAXIMUM))
        out.receive_maximum = mqtt::get<uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
    if (opts_.mqtt_version == 5 && props.contains(mqtt::property::MAXIMUM_PACKET_SIZE))
        out.max_packet_size = mqtt::get<uint32_t>(props, mqtt::property::MAXIMUM_PACKET_SIZE);
    out.subscription_ids = opts_.mqtt_version == 5 && (!props.contains(mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) ||
                                                       mqtt::get<uint8_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0);
    if (opts_.mqtt_version == 5) out.lacks = check_broker(&props, shared);
    return out;
}

std::string connector::check_broker(const void* connack_properties, bool shared) const {
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
    needs.shared_subscriptions = shared;
    std::string fatal;
    for (const auto& f : check_capabilities(granted, needs)) {
        if (f.fatal) fatal += (fatal.empty() ? "" : "; ") + f.text;
        else if (warn_) warn_(f.text);
    }
    return fatal;
}

std::string connector::why_failed(const mqtt::exception& e) {
    std::string why = e.get_error_str();
    // Paho's own text says which stage failed (e.g. "TCP/TLS connect failure" for a refused certificate,
    // "CONNACK return code"); the return code alone only says "Failure".
    if (const auto detail = e.get_message(); !detail.empty() && detail != why) why += " (" + detail + ")";
    const int reason = e.get_reason_code(), rc = e.get_return_code();
    // MQTT 5 reason codes 0x86/0x87, MQTT 3.1.1 return codes 4/5 (Paho reports either field).
    if (reason == 0x86 || reason == 0x87 || rc == 0x86 || rc == 0x87 || rc == 4 || rc == 5)
        why = "not authorized: bad user name or password (" + why + ")";
    else if (why.empty())
        why = e.what();
    std::lock_guard<std::mutex> g(tls_error_mu_);
    std::string tls = tls_error_;
    while (!tls.empty() && std::isspace(static_cast<unsigned char>(tls.back()))) tls.pop_back();
    if (!tls.empty()) why += " (TLS: " + tls + ")";
    return why;
}

}  // namespace xymqtt::detail
