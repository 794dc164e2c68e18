#!/usr/bin/env bash
# xymqtt against a second broker that clusters: ejabberd's mod_mqtt, two nodes on 127.0.0.1 started by
# scripts/cluster. One check per CTest test, cluster.<CHECK>; each runs a cluster of its own:
#
#   script                  scripts/cluster: start (idempotent), status, kill, restart, stop; the nodes
#                           listen on 127.0.0.1 only and leave nothing behind
#   connack_capabilities    what each node's CONNACK announces (MQTT 5 and 3.1.1), a connection without
#                           credentials, and the runtime's capability check accepting the broker
#   qos2_exactly_once       QoS 2's exactly-once state (packet ids) kept across a reconnect to the other
#                           node, for a publisher (PUBLISH resent with DUP) and a subscriber (PUBREL
#                           resent, no second PUBLISH)
#   shared_subscriptions_not_supported
#                           $share/ filters: the broker disconnects (0x9E), and the runtime refuses to
#                           serve a command of a share group there
#   session_across_nodes    a persistent session left on node 1 and resumed on node 2 (raw MQTT): what
#                           was published meanwhile on either node arrives, once; and a live connection
#                           taken over from the other node
#   session_move_same_second_race
#                           a session moved to the other node within the second of its last
#                           registration: the new connection is replaced and the session lost
#   session_lost_when_its_node_dies
#                           a session whose node is SIGKILLed, or restarted gracefully, is gone: what was
#                           published for it while it was away is lost
#   offline_queue_overflow_drops_session
#                           mod_mqtt's max_queue (10 here): one message more than it holds ends the
#                           session, and everything queued in it is lost
#   session_expiry          the Session Expiry Interval is honoured (2 s gone, 30 s kept; 0 in DISCONNECT)
#   failover_server_uris    cluster_failover: client_options::server_uris, node 1 killed under a client,
#                           the client on node 2, then back on node 1 (times measured)
#   events_examples         tick_publisher on node 1, tick_subscriber on node 2
#   commands_examples       ping_server on node 1, ping_client on node 2 (shared and per-client results)
#   events_cli              xymqtt publish on node 1 -> subscribe on node 2; 200 raw messages in order
#   commands_cli            xymqtt serve on node 1, call on node 2
#   session_one_node_cli    xymqtt sub --client-id: away from node 1, back on node 1
#   session_across_nodes_cli  the same, back on node 2
#
# Usage: check_cluster.sh CHECK SOURCE_DIR
# Programs from the environment (set by tests/cluster/CMakeLists.txt): CLUSTER_FAILOVER, XYMQTT_CLI,
# TICK_PUBLISHER, TICK_SUBSCRIBER, PING_SERVER, PING_CLIENT, PYTHON (python3).
# Lines "finding: ..." record what the broker did, for docs/cluster.md.
# Exits 77 (CTest SKIP) when ejabberd is not installed.
set -euo pipefail
check="${1:?usage: check_cluster.sh CHECK SOURCE_DIR}"
root="$(cd "${2:?usage: check_cluster.sh CHECK SOURCE_DIR}" && pwd)"

fail() {
  printf 'FAIL: %s\n' "$*" >&2
  dump_logs >&2
  exit 1
}
finding() { printf 'finding: %s\n' "$*"; }
# shellcheck source=tests/support/checks.sh
source "${root}/tests/support/checks.sh"
CHECK_TIMEOUT=120

dpkg-query -W -f='${Status}\n' ejabberd 2>/dev/null | grep -qx 'install ok installed' \
  || skip "ejabberd is not installed (scripts/cluster installs it: XYMQTT_APT_CLUSTER_PACKAGES)"
command -v erl >/dev/null 2>&1 || skip "erl not found (ejabberd's Erlang runtime)"
PYTHON="${PYTHON:-$(command -v python3 || true)}"
[[ -n "${PYTHON}" ]] || skip "python3 not found"

work="$(mktemp -d "${TMPDIR:-/tmp}/xymqtt-cluster.XXXXXX")"
cluster="${work}/cluster"
children=()
cleanup() {
  local status=$? pid
  for pid in "${children[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "${pid}" 2>/dev/null || true; done
  "${root}/scripts/cluster" stop "${cluster}" >/dev/null 2>&1 || true
  if [[ ${status} == 0 || ${status} == 77 ]]; then
    rm -rf "${work}"
  else
    printf 'kept for inspection: %s\n' "${work}" >&2
  fi
}
trap cleanup EXIT

# The last lines of both nodes' logs.
dump_logs() {
  local log
  for log in "${cluster}"/node*/log/ejabberd.log; do
    [[ -f "${log}" ]] || continue
    printf -- '--- %s (last 15 lines)\n' "${log}"
    tail -n 15 "${log}"
  done
}

# Does process $1 run? The nodes are not our children: a killed one may stay a zombie for a while.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ -n ${stat} && ${stat:0:1} != Z ]]
}


# start_cluster: sets URI1, URI2, PORT1, PORT2 and the credentials (XYMQTT_USERNAME, XYMQTT_PASSWORD).
start_cluster() {
  local out
  out="$(XYMQTT_CLUSTER_NO_INSTALL=1 "${root}/scripts/cluster" start "${cluster}" 2>"${work}/cluster-start.err")" \
    || fail "scripts/cluster start failed: $(cat "${work}/cluster-start.err")"
  read -r URI1 URI2 <<<"${out}"
  [[ ${URI1} =~ ^tcp://127\.0\.0\.1:[0-9]+$ && ${URI2} =~ ^tcp://127\.0\.0\.1:[0-9]+$ ]] \
    || fail "scripts/cluster start printed '${out}', want two tcp://127.0.0.1:PORT URIs"
  PORT1="${URI1##*:}"
  PORT2="${URI2##*:}"
  # shellcheck source=/dev/null
  source "${cluster}/env"
  export XYMQTT_USERNAME XYMQTT_PASSWORD
}

cluster_cmd() { "${root}/scripts/cluster" "$1" "${cluster}" "${@:2}"; }

# wait_for_subscription FILTER CLIENT_ID [SECONDS]: mod_mqtt's registry holds the subscription.
wait_for_subscription() {
  local deadline=$((SECONDS + ${3:-30}))
  until cluster_cmd subscriptions 2>/dev/null | grep -q "^$1 $2 "; do
    ((SECONDS < deadline)) || fail "no subscription of $2 to $1 at the broker:
$(cluster_cmd subscriptions 2>&1)"
    sleep 0.2
  done
}

# probe NAME ARGS...: the raw MQTT probe (JSON lines in ${work}/NAME.out), as user probe.
probe() {
  local name="$1"
  shift
  timeout 60 "${PYTHON}" "${root}/tests/cluster/mqtt_probe.py" --username probe --password probe "$@" \
    >"${work}/${name}.out" 2>"${work}/${name}.err" || fail "mqtt_probe ${name} failed: $(cat "${work}/${name}.err")"
}

# probe_eval NAME EXPRESSION: EXPRESSION (Python) over `events`, the probe's JSON lines of NAME, and
# the shorthands connack, publishes (payloads), end.
probe_eval() {
  "${PYTHON}" - "${work}/$1.out" "$2" <<'EOF'
import json, sys
events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def first(kind):
    return next((e[kind] for e in events if kind in e), None)
connack = first("connack") or {}
publishes = [e["publish"]["payload"] for e in events if "publish" in e]
end = first("end")
value = eval(sys.argv[2])
print(json.dumps(value) if not isinstance(value, str) else value)
EOF
}

# probe_expect NAME EXPRESSION WHAT: fails unless EXPRESSION is true for the probe's output.
probe_expect() {
  [[ "$(probe_eval "$1" "$2")" == true ]] || fail "$3: $2 is false; the probe saw:
$(cat "${work}/$1.out")"
}

cli() { timeout 120 "${XYMQTT_CLI}" "$@"; }

# Before a session moves to the other node: mod_mqtt orders a client's registrations by
# misc:unique_timestamp(), whole seconds plus a counter of the node that registers, so within the
# second of the last registration a move to the other node may be judged older than it and replaced
# (cluster.session_move_same_second_race). The checks that need a move to succeed wait for the next
# second.
next_second() { sleep 1.1; }

# --- The checks ---------------------------------------------------------------------------------------

check_script() {
  start_cluster
  local pid1 pid2
  pid1="$(cat "${cluster}/node1/pid")"
  pid2="$(cat "${cluster}/node2/pid")"
  [[ "$(cat "${cluster}/uris")" == "${URI1} ${URI2}" ]] || fail "DIR/uris holds '$(cat "${cluster}/uris")'"
  [[ ${PORT1} != "${PORT2}" ]] || fail "both nodes on port ${PORT1}"
  cluster_cmd status >"${work}/status.out" || fail "status exited non-zero for a running cluster: $(cat "${work}/status.out")"
  [[ "$(grep -c 'running.*cluster: .*ejabberd[12]@localhost.*ejabberd[12]@localhost' "${work}/status.out")" == 2 ]] \
    || fail "status does not show both nodes running in one cluster: $(cat "${work}/status.out")"
  ok "started: ${URI1} ${URI2}; $(tr '\n' ';' <"${work}/status.out")"

  # Idempotent: the same nodes, the same URIs.
  local again
  again="$(XYMQTT_CLUSTER_NO_INSTALL=1 "${root}/scripts/cluster" start "${cluster}" 2>/dev/null)"
  [[ ${again} == "${URI1} ${URI2}" && "$(cat "${cluster}/node1/pid")" == "${pid1}" && "$(cat "${cluster}/node2/pid")" == "${pid2}" ]] \
    || fail "a second start changed the cluster: '${again}'"
  ok "a second start leaves the running cluster as it is"

  # Every port the nodes and their epmd listen on is on loopback.
  local listening
  listening="$(ss -Hltnp 2>/dev/null | grep -E "pid=(${pid1}|${pid2}|$(cat "${cluster}/epmd.pid"))," || true)"
  [[ -n "${listening}" ]] || fail "ss shows no listening socket of the nodes"
  if grep -vE '^LISTEN +[0-9]+ +[0-9]+ +(127\.0\.0\.1|\[::1\]):' <<<"${listening}"; then
    fail "a node listens beyond loopback:
${listening}"
  fi
  ok "the nodes listen on loopback only: $(awk '{print $4}' <<<"${listening}" | sort | tr '\n' ' ')"

  cluster_cmd kill 2 2>/dev/null
  alive "${pid2}" && fail "node 2 (pid ${pid2}) survived kill"
  cluster_cmd status >"${work}/status-killed.out" && fail "status exited 0 with node 2 killed"
  grep -q '^node 2 .*not running' "${work}/status-killed.out" || fail "status: $(cat "${work}/status-killed.out")"
  probe after-kill --port "${PORT1}" -i script-check --clean
  probe_expect after-kill 'connack["reason_code"] == 0' "node 1 serves MQTT with node 2 killed"
  ok "kill 2: node 2 gone, status says so, node 1 still serves MQTT"

  cluster_cmd restart 2 2>/dev/null
  cluster_cmd status >"${work}/status-restarted.out" || fail "status after restart 2: $(cat "${work}/status-restarted.out")"
  probe after-restart --port "${PORT2}" -i script-check --clean
  probe_expect after-restart 'connack["reason_code"] == 0' "node 2 serves MQTT again after restart"
  ok "restart 2: node 2 back in the cluster on the same port"

  cluster_cmd stop 2>/dev/null
  local pid
  for pid in "${pid1}" "$(cat "${cluster}/node2/pid" 2>/dev/null || true)" "$(cat "${cluster}/epmd.pid" 2>/dev/null || true)"; do
    [[ -n "${pid}" ]] || continue
    alive "${pid}" && fail "process ${pid} still runs after stop"
  done
  local port
  for port in "${PORT1}" "${PORT2}" "$(cat "${cluster}/epmd.port")"; do
    (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null && fail "something still listens on ${port} after stop"
  done
  cluster_cmd status >/dev/null 2>&1 && fail "status exited 0 after stop"
  cluster_cmd stop 2>/dev/null || fail "a second stop failed"
  cluster_cmd kill 1 2>/dev/null || fail "kill of a stopped node failed"
  ok "stop: no process or port left; stop and kill again are harmless"
}

check_connack_capabilities() {
  start_cluster
  local port n=0
  for port in "${PORT1}" "${PORT2}"; do
    n=$((n + 1))
    probe "connack-${n}" --port "${port}" -i "caps-${n}" -x 3600
    finding "node ${n} CONNACK to an MQTT 5 CONNECT asking a 3600 s session: $(grep connack "${work}/connack-${n}.out")"
    probe_expect "connack-${n}" 'connack["reason_code"] == 0 and not connack["session_present"]' "node ${n} accepts"
    # What the runtime checks (broker_capabilities.cpp): absent means the MQTT 5 default.
    probe_expect "connack-${n}" '"maximum_qos" not in connack["properties"]' "node ${n}: maximum QoS absent (= 2)"
    probe_expect "connack-${n}" '"receive_maximum" not in connack["properties"]' "node ${n}: receive maximum absent (= 65535)"
    probe_expect "connack-${n}" 'connack["properties"].get("shared_subscription_available") == 0' \
      "node ${n}: shared subscriptions announced unavailable"
    probe_expect "connack-${n}" 'connack["properties"].get("session_expiry_interval") == 3600' \
      "node ${n}: the session expiry asked is granted"
  done
  ok "both nodes: maximum QoS and receive maximum absent (2 and 65535), shared subscriptions 0, session expiry as asked"

  probe connack-long --port "${PORT1}" -i caps-long -x 2592000
  probe_expect connack-long 'connack["properties"].get("session_expiry_interval") == 604800' \
    "a 30-day session expiry is capped at mod_mqtt's session_expiry (604800 s)"
  finding "30 days asked: $(probe_eval connack-long 'connack["properties"]["session_expiry_interval"]') s granted (mod_mqtt session_expiry)"

  probe connack-v4 --port "${PORT1}" -V 4 -i caps-v4
  probe_expect connack-v4 'connack["reason_code"] == 0' "MQTT 3.1.1 accepted on the same port"
  ok "MQTT 3.1.1 accepted on the same listener"

  "${PYTHON}" "${root}/tests/cluster/mqtt_probe.py" --port "${PORT1}" -i caps-anon >"${work}/connack-anon.out"
  probe_expect connack-anon 'connack["reason_code"] == 135' "no user name: not authorized (0x87)"
  "${PYTHON}" "${root}/tests/cluster/mqtt_probe.py" --port "${PORT1}" -i caps-nopass -u someone >"${work}/connack-nopass.out"
  probe_expect connack-nopass 'connack["reason_code"] == 135' "a user name without password: not authorized"
  ok "without credentials, or with an empty password: CONNACK 0x87 not authorized"

  if [[ -n "${XYMQTT_CLI:-}" ]]; then
    need XYMQTT_CLI
    # The runtime's capability check at connect: a durable session (7 days asked, 604800 s granted).
    expect_exit 0 cli-durable cli pub cluster/caps -m x -b "${URI1}" --client-id caps-cli \
      --store "${work}/store-caps-cli" -v
    if grep -E 'refused|lacks|granted of' "${work}/cli-durable.err"; then
      fail "the runtime complained about the broker: $(cat "${work}/cli-durable.err")"
    fi
    expect_exit 0 cli-v4 cli pub cluster/caps -m x -b "${URI2}" --mqtt-version 4 --client-id caps-cli-v4 \
      --store "${work}/store-caps-cli-v4"
    ok "the runtime accepts both nodes (MQTT 5 durable session, MQTT 3.1.1): no capability refused or reduced"
  fi
}

check_qos2_exactly_once() {
  start_cluster
  # A subscriber (session on node 2) records every delivery.
  probe sub-start --port "${PORT2}" -i qos2-sub -x 300 -s 'qos2/#'
  probe_expect sub-start 'first("suback")["reason_codes"] == [2]' "subscribed with QoS 2"

  # 1. The same PUBLISH three times (DUP on the repeats) before PUBREL: routed once.
  probe pub-dup --port "${PORT1}" -i qos2-pub -x 300 --publish qos2/dup -m dup-test --publish-id 7 --repeat 3
  probe_expect pub-dup 'len([e for e in events if "pubrec" in e]) == 3 and first("pubcomp")["reason_code"] == 0' \
    "three PUBRECs and a PUBCOMP for the repeated PUBLISH"

  # 2. PUBLISH on node 1, connection dropped after PUBREC; the session resumed on node 2, where the
  #    PUBLISH is resent (DUP, same id) and released.
  probe pub-drop --port "${PORT1}" -i qos2-pub -x 300 --publish qos2/moved -m moved-test --publish-id 9 --drop-after-pubrec
  probe_expect pub-drop 'end == "dropped" and first("pubrec")["id"] == 9' "PUBREC, then the connection dropped"
  next_second
  probe pub-resume --port "${PORT2}" -i qos2-pub -x 300 --publish qos2/moved -m moved-test --publish-id 9
  probe_expect pub-resume 'connack["session_present"] and first("pubcomp")["reason_code"] == 0' \
    "the publisher's session resumed on node 2, PUBLISH resent, PUBCOMP 0"

  probe sub-got --port "${PORT2}" -i qos2-sub -x 300 -w 3
  finding "subscriber deliveries: $(grep publish "${work}/sub-got.out" | tr '\n' ' ')"
  probe_expect sub-got 'sorted(publishes) == ["dup-test", "moved-test"]' \
    "each QoS 2 message delivered exactly once, the resent PUBLISH after the move not again"
  ok "publisher side: repeated PUBLISH delivered once; after a drop at PUBREC and a move to node 2, not again"
  finding "DUP flag of each first delivery (payload, dup): $(probe_eval sub-got '[(e["publish"]["payload"], e["publish"]["dup"]) for e in events if "publish" in e]')"

  # 3. Subscriber side: a delivery left at PUBREL (no PUBCOMP) on node 1, resumed on node 2: PUBREL
  #    again, no second PUBLISH.
  next_second
  probe sub-move --port "${PORT1}" -i qos2-sub -x 300 -w 1
  probe pub-half --port "${PORT2}" -i qos2-pub2 --clean --publish qos2/half -m half-done --publish-id 3
  probe sub-half --port "${PORT1}" -i qos2-sub -x 300 -w 10 --drop-at-pubrel
  probe_expect sub-half 'publishes == ["half-done"] and end == "dropped"' "delivery left at PUBREL"
  local id
  id="$(probe_eval sub-half 'first("pubrel")["id"]')"
  next_second
  probe sub-rel --port "${PORT2}" -i qos2-sub -x 300 -w 3
  probe_expect sub-rel "connack['session_present'] and publishes == [] and first('pubrel') is not None and first('pubrel')['id'] == ${id}" \
    "after the move to node 2, PUBREL ${id} again and no second PUBLISH"
  ok "subscriber side: a delivery left at PUBREL on node 1 is completed on node 2 with PUBREL, not redelivered"
}

check_shared_subscriptions_not_supported() {
  start_cluster
  # shellcheck disable=SC2016 # a literal $share/ filter
  probe share --port "${PORT1}" -i share-probe -x 60 -s '$share/group/cluster/shared'
  finding "SUBSCRIBE \$share/group/cluster/shared: $(grep -E 'suback|disconnect' "${work}/share.out" | tr '\n' ' ')"
  probe_expect share 'first("suback") is None and first("disconnect")["reason_code"] == 0x9E' \
    "the broker answers a \$share/ SUBSCRIBE with DISCONNECT 0x9E (shared subscriptions not supported)"
  ok "\$share/ filter: DISCONNECT 0x9E, no SUBACK"
  if [[ -n "${XYMQTT_CLI:-}" ]]; then
    need XYMQTT_CLI
    # Inventory.reserve is served in the share group "inventory": the runtime refuses the broker.
    expect_exit 5 cli-serve-group cli serve Inventory.reserve -s "${root}/schemas/examples/inventory.proto" \
      -t env=cluster -b "${URI1}" --client-id share-serve --store "${work}/store-share-serve" \
      --connect-timeout 5000 --exec 'echo {}' -v
    finding "xymqtt serve Inventory.reserve (share group) -v: $(grep -E 'refused|cannot connect|lacks' "${work}/cli-serve-group.err" | head -n 3 | tr '\n' ' ')"
    expect_text cli-serve-group.err "shared subscriptions: not available"
    ok "xymqtt serve of a command in a share group: refused (exit 5), 'shared subscriptions: not available'"
    # A raw $share/ filter: what happens (the runtime checks it at connect as well).
    local status=0
    # shellcheck disable=SC2016 # a literal $share/ filter
    cli sub '$share/g/cluster/shared' -b "${URI1}" -n 1 --timeout 5000 >"${work}/cli-share-sub.out" 2>"${work}/cli-share-sub.err" || status=$?
    finding "xymqtt sub '\$share/g/cluster/shared': exit ${status}: $(head -n 3 "${work}/cli-share-sub.err" | tr '\n' ' ')"
    [[ ${status} != 0 ]] || fail "xymqtt sub of a \$share/ filter succeeded"
  fi
}

check_session_across_nodes() {
  start_cluster
  # A session on node 1, left (DISCONNECT, expiry 300 s).
  probe leave --port "${PORT1}" -i across -x 300 -s 'across/#'
  cluster_cmd sessions | grep -q '^across probe ejabberd1@localhost$' || fail "the session is not on node 1: $(cluster_cmd sessions)"
  # Published while it is away, on both nodes.
  probe pub-1 --port "${PORT2}" -i across-pub --clean --publish across/a -m from-node-2 --publish-id 1
  probe pub-2 --port "${PORT1}" -i across-pub --clean --publish across/b -m from-node-1 --publish-id 2
  probe pub-3 --port "${PORT2}" -i across-pub --clean --publish across/c -m from-node-2-again --publish-id 3
  # Resumed on node 2.
  next_second
  probe resume --port "${PORT2}" -i across -x 300 -w 5 -n 3
  finding "resumed on node 2: $(grep -E 'connack|publish' "${work}/resume.out" | tr '\n' ' ')"
  finding "DUP flag of each first delivery (payload, dup): $(probe_eval resume '[(e["publish"]["payload"], e["publish"]["dup"]) for e in events if "publish" in e]')"
  probe_expect resume 'connack["session_present"]' "the session is present on node 2"
  probe_expect resume 'publishes == ["from-node-2", "from-node-1", "from-node-2-again"]' \
    "the 3 messages published while away arrive, in order"
  cluster_cmd sessions | grep -q '^across probe ejabberd2@localhost$' || fail "the session did not move to node 2: $(cluster_cmd sessions)"
  grep -q 'Reopened MQTT session via <[0-9]*\.[0-9]*\.[0-9]*> for probe@localhost/across' "${cluster}/node2/log/ejabberd.log" \
    || fail "node 2 did not log the session's transfer"
  finding "node 2's log: $(grep -o 'Reopened MQTT session via .* for probe@localhost/across' "${cluster}/node2/log/ejabberd.log" | head -n 1)"
  ok "a session left on node 1 resumes on node 2 with the 3 messages published meanwhile on both nodes"

  # And back: left on node 2, resumed on node 1; nothing delivered twice.
  probe pub-4 --port "${PORT1}" -i across-pub --clean --publish across/d -m back-to-node-1 --publish-id 4
  next_second
  probe back --port "${PORT1}" -i across -x 300 -w 3
  probe_expect back 'connack["session_present"] and publishes == ["back-to-node-1"]' \
    "resumed on node 1 again: only the new message"
  ok "and back to node 1: the new message only, no redelivery"

  # Takeover of a live connection: the session connected on node 1, the same client connects to node 2.
  probe live-start --port "${PORT1}" -i taken -x 300 -s 'taken/#'
  "${PYTHON}" "${root}/tests/cluster/mqtt_probe.py" --username probe --password probe --port "${PORT1}" \
    -i taken -x 300 -w 20 >"${work}/live-old.out" 2>&1 &
  local old_pid=$!
  children+=("${old_pid}")
  wait_for_text "${work}/live-old.out" '"connack"'
  next_second
  probe take --port "${PORT2}" -i taken -x 300 -w 5 -n 1 &
  local new_pid=$!
  children+=("${new_pid}")
  local deadline=$((SECONDS + 20))
  until cluster_cmd sessions | grep -q '^taken probe ejabberd2@localhost$'; do
    ((SECONDS < deadline)) || fail "the session did not move to node 2: $(cluster_cmd sessions)"
    sleep 0.1
  done
  probe pub-5 --port "${PORT1}" -i across-pub --clean --publish taken/x -m after-takeover --publish-id 5
  wait "${new_pid}" || fail "the probe on node 2 failed"
  wait_for_exit "${old_pid}" live-old 30 || true
  finding "the connection on node 1 when the same client id connected to node 2: $(grep -E 'disconnect|end' "${work}/live-old.out" | tr '\n' ' ')"
  probe_expect live-old 'first("disconnect")["reason_code"] == 0x8E' "the old connection is told 0x8E (session taken over)"
  probe_expect take 'connack["session_present"] and publishes == ["after-takeover"]' \
    "the new connection on node 2 has the session and gets what is published next on node 1"
  ok "takeover of a live connection across nodes: the old one gets DISCONNECT 0x8E, the new one the session"
}

check_session_move_same_second_race() {
  start_cluster
  # A client registers its session on one node (connect, subscribe, disconnect), and connects to the
  # other node within the same second, in both directions, 4 times each; the second connection must
  # take the session over. Then the same with 1.1 s between the two: the control.
  local direction from to i moved=0 replaced=0 lost=0
  for direction in "1 2" "2 1" "1 2" "2 1" "1 2" "2 1" "1 2" "2 1"; do
    read -r from to <<<"${direction}"
    i=$((moved + 1))
    local port_from="PORT${from}" port_to="PORT${to}"
    # Start at the beginning of a second, so that both connections fall in it.
    while (( 10#$(date +%N) > 300000000 )); do sleep 0.02; done
    probe "race-${i}-first" --port "${!port_from}" -i "race-${i}" -x 300 -s "race/${i}"
    probe "race-${i}-move" --port "${!port_to}" -i "race-${i}" -x 300 -w 1
    moved=$((moved + 1))
    if [[ "$(probe_eval "race-${i}-move" '(first("disconnect") or {}).get("properties", {}).get("reason_string", "")')" == "Replaced by another connection" ]]; then
      replaced=$((replaced + 1))
      finding "move ${i}, node ${from} -> node ${to} within a second: $(grep -E 'connack|disconnect' "${work}/race-${i}-move.out" | tr '\n' ' ')"
      # What is left of the session: published to its filter, then the client connects again.
      next_second
      probe "race-${i}-pub" --port "${!port_to}" -i race-pub --clean --publish "race/${i}" -m after
      probe "race-${i}-again" --port "${!port_to}" -i "race-${i}" -x 300 -w 2
      if [[ "$(probe_eval "race-${i}-again" 'not connack["session_present"] and publishes == []')" == true ]]; then
        lost=$((lost + 1))
      fi
    fi
  done
  finding "${replaced} of ${moved} moves within a second replaced the new connection; after ${lost} of them the session was gone (not present, a message published to it lost)"
  ((replaced > 0)) || fail "no move within a second was replaced: the race was not seen (${moved} moves)"
  ((lost == replaced)) || fail "after ${replaced} replaced moves the session survived $((replaced - lost)) times"
  ok "a session moved to the other node within the second of its last registration: the new connection gets CONNACK (session present), then DISCONNECT 0x8E 'Replaced by another connection', and the session is lost (${replaced} of ${moved} moves)"

  # The control: a second later, every move works, both ways.
  for direction in "1 2" "2 1" "1 2" "2 1"; do
    read -r from to <<<"${direction}"
    i=$((i + 1))
    local port_from="PORT${from}" port_to="PORT${to}"
    probe "slow-${i}-first" --port "${!port_from}" -i "slow-${i}" -x 300 -s "slow/${i}"
    next_second
    probe "slow-${i}-move" --port "${!port_to}" -i "slow-${i}" -x 300 -w 1
    probe_expect "slow-${i}-move" 'connack["session_present"] and first("disconnect") is None' \
      "a move node ${from} -> node ${to} 1.1 s after the registration"
  done
  ok "1.1 s after the registration, 4 moves (both ways) took the session over"
}

check_session_lost_when_its_node_dies() {
  start_cluster
  # SIGKILL: the session's process, and the messages queued in it, die with node 1.
  probe leave --port "${PORT1}" -i lost -x 300 -s 'lost/#'
  probe pub-1 --port "${PORT2}" -i lost-pub --clean --publish lost/1 -m while-away --publish-id 1
  cluster_cmd kill 1 2>/dev/null
  probe after-kill --port "${PORT2}" -i lost -x 300 -w 3
  finding "after SIGKILL of the session's node, resumed on node 2: $(grep -E 'connack|publish' "${work}/after-kill.out" | tr '\n' ' ')"
  probe_expect after-kill 'not connack["session_present"] and publishes == []' \
    "the session and its queued message are gone (session present 0, nothing delivered)"
  ok "node 1 SIGKILLed: the session is not present on node 2 and the queued message is lost"

  # A graceful restart loses it too: ejabberd ends its MQTT sessions when it stops.
  cluster_cmd restart 1 2>/dev/null
  probe leave-2 --port "${PORT1}" -i lost2 -x 300 -s 'lost/#'
  probe pub-2 --port "${PORT2}" -i lost-pub --clean --publish lost/2 -m while-away-2 --publish-id 2
  cluster_cmd restart 1 2>/dev/null
  probe after-restart --port "${PORT2}" -i lost2 -x 300 -w 3
  finding "after a graceful restart of the session's node, resumed on node 2: $(grep -E 'connack|publish' "${work}/after-restart.out" | tr '\n' ' ')"
  probe_expect after-restart 'not connack["session_present"] and publishes == []' \
    "after a graceful restart of node 1 the session is gone too"
  ok "node 1 restarted gracefully: the session and its queued message are lost as well"
}

check_offline_queue_overflow_drops_session() {
  # mod_mqtt's max_queue, 10 here (100000 in config/ejabberd): the messages a session holds while its
  # client is away, besides the one in flight.
  XYMQTT_CLUSTER_MAX_QUEUE=10 start_cluster
  grep -q '^    max_queue: 10$' "${cluster}/node1/ejabberd.yml" || fail "max_queue 10 not rendered"
  probe leave-11 --port "${PORT1}" -i queue-11 -x 300 -s 'queue/11/#'
  probe leave-12 --port "${PORT1}" -i queue-12 -x 300 -s 'queue/12/#'
  local i
  for i in $(seq 1 12); do
    ((i == 12)) || probe "pub-11-${i}" --port "${PORT2}" -i queue-pub --clean --publish queue/11/x -m "m${i}"
    probe "pub-12-${i}" --port "${PORT2}" -i queue-pub --clean --publish queue/12/x -m "m${i}"
  done
  probe back-11 --port "${PORT1}" -i queue-11 -x 300 -w 5 -n 11
  probe back-12 --port "${PORT1}" -i queue-12 -x 300 -w 3
  probe_expect back-11 'connack["session_present"] and publishes == ["m%d" % i for i in range(1, 12)]' \
    "11 messages (1 in flight + max_queue 10) are kept"
  finding "12 messages for an away session with max_queue 10: $(grep connack "${work}/back-12.out"), $(probe_eval back-12 'len(publishes)') delivered"
  probe_expect back-12 'not connack["session_present"] and publishes == []' \
    "one message more than the queue holds: the session and all 11 queued messages are dropped"
  grep -q 'Closing MQTT session for probe@localhost/queue-12 from .*: Message queue is overloaded' \
    "${cluster}/node1/log/ejabberd.log" || fail "node 1 did not log the overloaded queue"
  finding "node 1's log: $(grep -o 'Closing MQTT session for probe@localhost/queue-12 .*' "${cluster}/node1/log/ejabberd.log" | head -n 1)"
  ok "max_queue 10: 11 messages kept; the 12th drops the session with everything queued in it"
}

check_session_expiry() {
  start_cluster
  probe leave-2 --port "${PORT1}" -i expiry-2 -x 2 -s 'expiry/#'
  probe leave-30 --port "${PORT1}" -i expiry-30 -x 30 -s 'expiry/#'
  probe leave-0 --port "${PORT1}" -i expiry-0 -x 30 -s 'expiry/#' --disconnect-expiry 0
  probe pub --port "${PORT2}" -i expiry-pub --clean --publish expiry/1 -m while-away
  sleep 4
  probe back-2 --port "${PORT2}" -i expiry-2 -x 2 -w 2
  probe back-30 --port "${PORT2}" -i expiry-30 -x 30 -w 5 -n 1
  probe back-0 --port "${PORT2}" -i expiry-0 -x 30 -w 2
  probe_expect back-2 'not connack["session_present"] and publishes == []' "a 2 s session is gone after 4 s"
  probe_expect back-30 'connack["session_present"] and publishes == ["while-away"]' "a 30 s session is kept after 4 s"
  probe_expect back-0 'not connack["session_present"] and publishes == []' \
    "a session whose DISCONNECT set the expiry to 0 is gone"
  ok "session expiry honoured (also across nodes): 2 s gone after 4 s, 30 s kept with its message, 0 in DISCONNECT ends it"
}

check_failover_server_uris() {
  need CLUSTER_FAILOVER
  start_cluster
  local status=0
  timeout 200 "${CLUSTER_FAILOVER}" --uris "${URI1},${URI2}" --store "${work}/stores" \
    --kill "XYMQTT_CLUSTER_NO_INSTALL=1 '${root}/scripts/cluster' kill '${cluster}' 1" \
    --restart "XYMQTT_CLUSTER_NO_INSTALL=1 '${root}/scripts/cluster' restart '${cluster}' 1" \
    --kill-other "XYMQTT_CLUSTER_NO_INSTALL=1 '${root}/scripts/cluster' kill '${cluster}' 2" \
    >"${work}/failover.out" 2>&1 || status=$?
  cat "${work}/failover.out"
  [[ ${status} == 0 ]] || fail "cluster_failover failed (status ${status})"
  local figure
  for figure in kill_command_ms loss_noticed_ms failover_ms failback_ms session_present_after_failover during_published \
    during_received during_lost duplicates; do
    finding "${figure}=$(sed -n "s/^${figure}=//p" "${work}/failover.out")"
  done
}

check_events_examples() {
  need TICK_PUBLISHER TICK_SUBSCRIBER
  start_cluster
  background tick_subscriber "${TICK_SUBSCRIBER}" --broker "${URI2}" --store "${work}/store-tick_subscriber" \
    --expect 20 --fail-rate 0
  local sub_pid=${BG_PID}
  wait_for_subscription evt/publisher/tick tick_subscriber
  local start=${EPOCHREALTIME}
  expect_exit 0 tick_publisher "${TICK_PUBLISHER}" --broker "${URI1}" --store "${work}/store-tick_publisher" \
    --count 20 --interval-ms 0
  expect_text tick_publisher.out "all 20 ticks acknowledged"
  wait_for_exit "${sub_pid}" tick_subscriber || fail "tick_subscriber failed: $(cat "${work}/tick_subscriber.out")"
  expect_text tick_subscriber.out "handled 20 distinct ticks"
  local handled
  handled="$(grep -c '} √' "${work}/tick_subscriber.out")"
  [[ ${handled} == 20 ]] || fail "tick_subscriber handled ${handled} ticks, want 20 (no duplicate)"
  finding "20 ticks node 1 -> node 2 in $(awk -v a="${start}" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.2f", b - a }') s"
  ok "tick_publisher --count 20 on node 1, tick_subscriber --expect 20 on node 2: 20 handled, once each"
}

check_commands_examples() {
  need PING_SERVER PING_CLIENT
  start_cluster
  background ping_server "${PING_SERVER}" --broker "${URI1}" --store "${work}/store-ping_server" --fail-rate 0
  local server=${BG_PID}
  wait_for_subscription cmd/publisher/ping/invoke ping_server
  local results
  for results in shared per-client; do
    expect_exit 0 "ping_client-${results}" "${PING_CLIENT}" --broker "${URI2}" \
      --client-id "ping_client_${results/-/_}" --store "${work}/store-ping_client-${results}" \
      --count 5 --interval-ms 0 --results "${results}"
    expect_text "ping_client-${results}.out" "5 call(s): 5 resolved"
    ok "ping_client --count 5 --results ${results} on node 2: 5 pongs from ping_server on node 1"
  done
  kill -TERM "${server}"
  wait_for_exit "${server}" ping_server 20 || fail "ping_server did not stop cleanly: $(cat "${work}/ping_server.out")"
  [[ "$(grep -c '√ pong' "${work}/ping_server.out")" == 10 ]] || fail "ping_server did not answer 10 calls once each:
$(cat "${work}/ping_server.out")"
}

check_events_cli() {
  need XYMQTT_CLI
  start_cluster
  local schema=(-s "${root}/schemas/examples/publisher.proto")
  background cli-subscribe cli subscribe Publisher.tick "${schema[@]}" -b "${URI2}" -n 1 --timeout 30000
  local sub_pid=${BG_PID}
  wait_for_text "${work}/cli-subscribe.err" "xymqtt: subscribed to evt/publisher/tick"
  expect_exit 0 cli-publish cli publish Publisher.tick "${schema[@]}" -b "${URI1}" --json '{"count": 7}'
  wait_for_exit "${sub_pid}" cli-subscribe || fail "xymqtt subscribe failed: $(cat "${work}/cli-subscribe.err")"
  expect_text cli-subscribe.out '"count":"7"'
  ok "xymqtt publish on node 1 -> xymqtt subscribe on node 2: $(cat "${work}/cli-subscribe.out")"

  # 200 messages, one QoS 2 publish each, from node 1 to a subscriber on node 2: all, in order, once.
  background cli-sub cli sub cluster/order -b "${URI2}" -n 200 --timeout 120000 -F '%p'
  sub_pid=${BG_PID}
  wait_for_text "${work}/cli-sub.err" "xymqtt: subscribed to cluster/order"
  local start=${EPOCHREALTIME}
  seq 1 200 >"${work}/expected"
  expect_exit 0 cli-pub cli pub cluster/order -m - -b "${URI1}" <"${work}/expected"
  wait_for_exit "${sub_pid}" cli-sub 120 || fail "xymqtt sub failed: $(cat "${work}/cli-sub.err")"
  local seconds
  seconds="$(awk -v a="${start}" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.2f", b - a }')"
  diff "${work}/expected" "${work}/cli-sub.out" >"${work}/order.diff" || fail "the subscriber on node 2 did not get 1..200 in order:
$(head -n 20 "${work}/order.diff")"
  finding "200 QoS 2 messages node 1 -> node 2 (xymqtt pub -m - / xymqtt sub): ${seconds} s, in order, no duplicate"
  ok "200 raw messages from node 1 reached node 2 in order, once each (${seconds} s)"
}

check_commands_cli() {
  need XYMQTT_CLI
  start_cluster
  local schema=(-s "${root}/schemas/examples/publisher.proto")
  background cli-serve cli serve Publisher.ping "${schema[@]}" -b "${URI1}" -n 2 --store "${work}/store-serve" \
    --exec 'echo "{\"pong\": true}"'
  local server=${BG_PID}
  wait_for_text "${work}/cli-serve.err" "xymqtt: serving cmd/publisher/ping"
  expect_exit 0 cli-call cli call Publisher.ping "${schema[@]}" -b "${URI2}" --timeout 20000
  expect_text cli-call.out '{"pong":true}'
  expect_exit 0 cli-call-2 cli call Publisher.ping "${schema[@]}" -b "${URI2}" --timeout 20000 \
    --client-id cluster-caller --store "${work}/store-caller"
  expect_text cli-call-2.out '{"pong":true}'
  wait_for_exit "${server}" cli-serve || fail "xymqtt serve failed: $(cat "${work}/cli-serve.err")"
  ok "xymqtt call on node 2 (ad hoc and durable) -> xymqtt serve on node 1: {\"pong\":true} twice"
}

# cli_session_check BACK_URI PUBLISH_URI NAME: a durable xymqtt sub on node 1 leaves, 5 messages are
# published on PUBLISH_URI, the same client id comes back on BACK_URI.
cli_session_check() {
  local back="$1" publish="$2" name="$3" id="cluster-session-$3"
  local store="${work}/store-${name}"
  expect_exit 3 "${name}-first" cli sub "cluster/${name}/#" -b "${URI1}" --client-id "${id}" --store "${store}" \
    -n 1 --timeout 3000
  expect_text "${name}-first.err" "xymqtt: subscribed to cluster/${name}/#"
  seq 1 5 | sed "s/^/${name}-/" >"${work}/${name}.expected"
  expect_exit 0 "${name}-pub" cli pub "cluster/${name}/x" -m - -b "${publish}" <"${work}/${name}.expected"
  expect_exit 0 "${name}-back" cli sub "cluster/${name}/#" -b "${back}" --client-id "${id}" --store "${store}" \
    -n 5 --timeout 20000 -F '%p' -v
  diff "${work}/${name}.expected" "${work}/${name}-back.out" >/dev/null || fail "back with the same client id, \
the subscriber got:
$(cat "${work}/${name}-back.out")
want:
$(cat "${work}/${name}.expected")"
}

check_session_one_node_cli() {
  need XYMQTT_CLI
  start_cluster
  cli_session_check "${URI1}" "${URI1}" one-node
  ok "xymqtt sub --client-id away from node 1, 5 messages published there, back on node 1: all 5, in order"
}

check_session_across_nodes_cli() {
  need XYMQTT_CLI
  start_cluster
  cli_session_check "${URI2}" "${URI2}" across
  cluster_cmd sessions | grep -q "^cluster-session-across ${XYMQTT_USERNAME} ejabberd2@localhost\$" \
    || fail "the session is not on node 2 now: $(cluster_cmd sessions)"
  ok "xymqtt sub --client-id away from node 1, 5 messages published on node 2, back on node 2: all 5, in order"
}

case "${check}" in
  script | connack_capabilities | qos2_exactly_once | shared_subscriptions_not_supported | session_across_nodes | \
    session_move_same_second_race | session_lost_when_its_node_dies | offline_queue_overflow_drops_session | session_expiry | failover_server_uris | events_examples | commands_examples | \
    events_cli | commands_cli | session_one_node_cli | session_across_nodes_cli)
    "check_${check}" ;;
  *) fail "unknown check '${check}'" ;;
esac
