// Client options of the xymqtt benchmark modes.
#pragma once

#include "common.h"
#include "xymqtt/client.h"

namespace bench {

inline xymqtt::client_options xy_options(const args& a) {
    xymqtt::client_options o;
    o.server_uri = a.str("broker", "tcp://127.0.0.1:1883");
    o.client_id = a.str("id", "xybench");
    o.store_dir = a.str("dir");
    if (o.store_dir.empty()) throw std::runtime_error("--dir (store directory) is required");
    o.store_type = a.str("store", "lmdb") == "sqlite" ? xymqtt::store_kind::sqlite : xymqtt::store_kind::lmdb;
    o.durability = a.str("durability", "fsync") == "process" ? xymqtt::durability::process : xymqtt::durability::fsync;
    o.reconnect_min = std::chrono::milliseconds(20);
    o.reconnect_max = std::chrono::milliseconds(100);
    if (a.has("max-inflight")) o.max_inflight = std::size_t(a.num("max-inflight"));
    if (a.has("nodelay")) o.tcp_nodelay = a.num("nodelay") != 0;
    if (a.has("adaptive-nagle")) o.adaptive_nagle = a.num("adaptive-nagle") != 0;
    if (a.has("receive-max")) o.receive_maximum = std::uint16_t(a.num("receive-max"));
    if (a.has("group-arrivals")) o.group_arrivals = a.num("group-arrivals") != 0;
    if (a.str("results", "shared") == "per-client") o.results = xymqtt::result_routing::per_client;
    if (a.has("journal-bytes") && o.store_type == xymqtt::store_kind::lmdb) {
        // A/B of the LMDB store's write-ahead journal (0: every commit straight to LMDB).
        xymqtt::store_options so;
        so.durability = o.durability;
        so.journal_bytes = std::size_t(a.num("journal-bytes"));
        o.store = xymqtt::open_lmdb_store(o.store_dir, so);
    }
    o.hooks.on_log = [](xymqtt::log_level lv, const std::string& s) {
        if (lv >= xymqtt::log_level::warning) std::cerr << "xymqtt: " << s << std::endl;
    };
    return o;
}

inline constexpr std::uint64_t probe_index = ~std::uint64_t(0);

}  // namespace bench
