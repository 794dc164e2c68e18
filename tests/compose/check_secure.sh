#!/usr/bin/env bash
# The secured broker of compose.yml (service "mqtt-secure", profile "secure"), started with the Debian
# Mosquitto from the very same files (config/mosquitto-secure/), with certificates and passwords made
# by scripts/make-test-ca in a temp dir. One check per CTest test, compose.secure.<CHECK>:
#
#   config             the rendered config differs from the container's only in listeners and paths;
#                      TLS + password carries a QoS 2 message to an offline persistent session; the
#                      database is saved on a graceful stop; nothing "Error" in the log
#   make_test_ca       the files, their modes and certificates; idempotent; --force; --server-name
#   healthcheck        compose.yml's healthcheck command, run against the broker (and failing with a
#                      wrong password)
#   examples_events    tick_publisher --count 3 and tick_subscriber --expect 3 over TLS with passwords
#   examples_commands  ping_server and ping_client --count 3 (shared and per-client results)
#   mutual_tls         tick_publisher with a client certificate (listener 8884), no password; no
#                      certificate is refused; the examples' flag checks
#   cli                xymqtt publish/subscribe and serve/call over TLS with credentials
#   acl                publishing to another service's topics is refused (0x87, exit 5); a user
#                      receives only what it may read (a forbidden message, then an allowed marker)
#   refused            wrong password, no credentials, an untrusted CA, plain MQTT: clear errors, exit 5
#
# Usage: check_secure.sh CHECK SOURCE_DIR
# Programs from the environment: TICK_PUBLISHER, TICK_SUBSCRIBER, PING_SERVER, PING_CLIENT (the
# examples), XYMQTT_CLI (the command-line tool), PYTHON_YAML (a Python 3 with PyYAML).
# Exits 77 (CTest SKIP) when a tool it needs is missing.
set -euo pipefail
check="${1:?usage: check_secure.sh CHECK SOURCE_DIR}"
root="$(cd "${2:?usage: check_secure.sh CHECK SOURCE_DIR}" && pwd)"
# shellcheck source=scripts/lib/broker.sh
source "${root}/scripts/lib/broker.sh"
PATH="${PATH}:/usr/sbin"

# A failure shows the broker's log too.
fail() {
  printf 'FAIL: %s\n--- broker log:\n%s\n' "$*" "$(cat "${XYMQTT_BROKER_LOG:-/dev/null}" 2>/dev/null)" >&2
  exit 1
}
# shellcheck source=tests/support/checks.sh
source "${root}/tests/support/checks.sh"
CHECK_WAIT=20

for tool in openssl mosquitto mosquitto_passwd mosquitto_sub mosquitto_pub python3; do
  command -v "${tool}" >/dev/null 2>&1 || skip "${tool} is not installed (Debian: openssl, mosquitto, mosquitto-clients)"
done

secure_conf="${root}/config/mosquitto-secure/mosquitto.conf"
work="$(mktemp -d "${TMPDIR:-/tmp}/xymqtt-secure.XXXXXX")"
children=()
# "Error" lines of the broker's log that a check expects. Always: the readiness probe of
# xymqtt_broker_start (and start_broker) opens the TLS ports and closes them without a handshake.
expected_errors='OpenSSL Error\[[0-9]+\]: .*unexpected eof while reading'
cleanup() {
  local pid
  for pid in "${children[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "${pid}" 2>/dev/null || true; done
  xymqtt_broker_stop >/dev/null 2>&1 || true
  rm -rf "${work}"
}
trap cleanup EXIT

# The test CA, the passwords (XYMQTT_<USER>_PASSWORD) and the programs' stores live in ${work}.
certs="${work}/certs"
"${root}/scripts/make-test-ca" "${certs}" >"${work}/make-test-ca.log" 2>&1 \
  || fail "scripts/make-test-ca failed: $(cat "${work}/make-test-ca.log")"
# shellcheck source=/dev/null
source "${certs}/passwords.env"
export XDG_STATE_HOME="${work}/state"  # the CLI's default stores

# --- The broker ---------------------------------------------------------------------------------------

# render_secure_config SOURCE PORT_8883 PORT_8884 DIR: SOURCE as a private broker runs it, rendered as
# scripts/lib/broker.sh renders config/mosquitto/mosquitto.conf: each listener moved to 127.0.0.1 on a
# free port, /mosquitto/data and /mosquitto/log moved to DIR, "user root" appended when run as root; and
# the files the container finds in /mosquitto/config: certs/ from make-test-ca, the rest (the ACL) from
# config/mosquitto-secure/ itself.
render_secure_config() {
  local src="$1" tls_port="$2" mtls_port="$3" dir="$4" out
  out="$(sed -E \
    -e "s|^[[:space:]]*listener[[:space:]]+8883[[:space:]]*\$|listener ${tls_port} 127.0.0.1|" \
    -e "s|^[[:space:]]*listener[[:space:]]+8884[[:space:]]*\$|listener ${mtls_port} 127.0.0.1|" \
    -e "s|/mosquitto/config/certs/|${certs}/|g" \
    -e "s|/mosquitto/config/|${root}/config/mosquitto-secure/|g" \
    -e "s|/mosquitto/data|${dir}/data|g" \
    -e "s|/mosquitto/log|${dir}/log|g" \
    "${src}")" || return 1
  grep -qx "listener ${tls_port} 127.0.0.1" <<<"${out}" || { printf 'error: %s has no "listener 8883"\n' "${src}" >&2; return 1; }
  grep -qx "listener ${mtls_port} 127.0.0.1" <<<"${out}" || { printf 'error: %s has no "listener 8884"\n' "${src}" >&2; return 1; }
  printf '%s\n' "${out}"
  printf '\n# Added for a private broker run by %s\n' "$(id -un)"
  if [[ ${EUID} -eq 0 ]]; then
    printf 'user root\n'
  fi
}

# broker.sh's xymqtt_broker_start renders its config with xymqtt_render_broker_config: here it renders
# the secured config instead, with a second free port for the mutual TLS listener.
XYMQTT_BROKER_CONFIG="${secure_conf}"
xymqtt_render_broker_config() {
  MTLS_PORT="$(xymqtt_free_port)" || return 1
  render_secure_config "$1" "$2" "${MTLS_PORT}" "$3"
}

# start_broker [EXTRA CONFIG]: sets PORT, MTLS_PORT, URI (ssl://localhost:PORT), MTLS_URI.
start_broker() {
  XYMQTT_BROKER_EXTRA_CONFIG="${1:-}" xymqtt_broker_start || fail "the secured broker did not start"
  PORT="${XYMQTT_BROKER_PORT}"
  local deadline=$((SECONDS + 10))
  until xymqtt_port_open "${MTLS_PORT}"; do
    ((SECONDS < deadline)) || fail "the mutual TLS listener (port ${MTLS_PORT}) does not accept connections"
    sleep 0.02
  done
  URI="ssl://localhost:${PORT}"
  MTLS_URI="ssl://localhost:${MTLS_PORT}"
}

# stop_broker: a graceful stop; fails on "Error" lines in the log other than ${expected_errors}.
stop_broker() {
  local dir="${XYMQTT_BROKER_DIR}" log="${XYMQTT_BROKER_LOG}" errors
  XYMQTT_KEEP_BROKER_DIR=1 xymqtt_broker_stop >/dev/null 2>&1 || true
  errors="$(grep -h 'Error' "${log}" "${dir}/stdout.log" 2>/dev/null | grep -v -E -e "${expected_errors}" | sort -u || true)"
  [[ -z "${errors}" ]] || fail "the broker logged errors (log in ${dir}):
${errors}"
}

# Waits until the broker has CLIENT_ID's subscription to FILTER (needs "log_type subscribe").
wait_for_subscription() {
  wait_for_text "${XYMQTT_BROKER_LOG}" " $1 2 $2" "${3:-20}"
}

# The command-line tool as USER (its password from passwords.env, through $XYMQTT_PASSWORD).
cli_as() {
  local user="$1" var
  shift
  var="XYMQTT_${user^^}_PASSWORD"
  XYMQTT_USERNAME="${user}" XYMQTT_PASSWORD="${!var:-}" timeout 60 "${XYMQTT_CLI}" "$@"
}

schema=(-s "${root}/schemas/examples/publisher.proto")

# --- The checks ---------------------------------------------------------------------------------------

check_config() {
  start_broker
  local dir="${XYMQTT_BROKER_DIR}" changed unexpected
  # Only the listeners, the /mosquitto/ paths and the appended lines may differ.
  changed="$(diff <(grep -v '^#' "${secure_conf}") <(grep -v '^#' "${dir}/mosquitto.conf") | grep '^[<>]' || true)"
  unexpected="$(grep -v -E \
    -e '^< (listener 888[34]|.*/mosquitto/(config|data|log)/.*)$' \
    -e "^> (listener (${PORT}|${MTLS_PORT}) 127\\.0\\.0\\.1|.*(${certs}|${root}/config/mosquitto-secure|${dir}/data|${dir}/log)/.*|user root|)\$" \
    <<<"${changed}" || true)"
  [[ -z "${unexpected}" ]] || fail "the rendered config differs in more than listeners/paths:
${unexpected}"
  ok "the rendered config differs from the container's only in listeners and paths"

  local tls=(-h localhost -p "${PORT}" --cafile "${certs}/ca.crt" -V mqttv5 -q 2)
  local sub=(mosquitto_sub "${tls[@]}" -u subscriber -P "${XYMQTT_SUBSCRIBER_PASSWORD}" -t evt/publisher/tick
             -i secure-config-check -c -x 3600)
  "${sub[@]}" -E || fail "mosquitto_sub could not subscribe over TLS with a password"
  mosquitto_pub "${tls[@]}" -u publisher -P "${XYMQTT_PUBLISHER_PASSWORD}" -t evt/publisher/tick -m delivered \
    || fail "mosquitto_pub could not publish over TLS with a password"
  local got
  got="$("${sub[@]}" -C 1 -W 10)" || fail "the message queued for the offline session did not arrive"
  [[ ${got} == delivered ]] || fail "received '${got}', want 'delivered'"
  ok "a QoS 2 message reached the offline persistent session over TLS"

  # A user added with mosquitto_passwd may connect once the broker reloads (SIGHUP), as docs/deployment.md
  # tells (the container gets the signal from "docker compose kill -s SIGHUP").
  local newcomer=(mosquitto_sub "${tls[@]}" -u newcomer -P newcomer-password -t evt/newcomer/x -E)
  "${newcomer[@]}" 2>/dev/null && fail "an unknown user could connect"
  mosquitto_passwd -b "${certs}/passwd" newcomer newcomer-password
  kill -HUP "${XYMQTT_BROKER_PID}"
  local deadline=$((SECONDS + 10))
  until "${newcomer[@]}" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "the user added to the password file cannot connect after SIGHUP"
    sleep 0.05
  done
  ok "a user added with mosquitto_passwd connects after SIGHUP"

  stop_broker
  [[ -s "${dir}/data/mosquitto.db" ]] || fail "no persistence file ${dir}/data/mosquitto.db after a graceful stop"
  grep -q 'mosquitto version .* running' "${dir}/log/mosquitto.log" || fail "nothing in the log file"
  grep -q "Opening ipv4 listen socket on port ${PORT}" "${dir}/log/mosquitto.log" || fail "no listener on ${PORT} in the log"
  rm -rf "${dir}"
  ok "the database was saved on a graceful stop and the log has no errors"
}

check_make_test_ca() {
  local ca="${work}/ca" f mode
  "${root}/scripts/make-test-ca" "${ca}" >"${work}/first.out" || fail "make-test-ca failed"
  expect_text first.out "TEST CA"
  declare -A modes=([ca.crt]=644 [ca.key]=600 [server.crt]=644 [server.key]=644 [client.crt]=644 [client.key]=600
                    [passwd]=644 [passwords.env]=600 [healthcheck.password]=600)
  for f in "${!modes[@]}"; do
    [[ -s "${ca}/${f}" ]] || fail "make-test-ca did not make ${f}"
    mode="$(stat -c %a "${ca}/${f}")"
    [[ ${mode} == "${modes[${f}]}" ]] || fail "${f} has mode ${mode}, want ${modes[${f}]}"
  done
  ok "make-test-ca made every file with its mode"

  openssl verify -CAfile "${ca}/ca.crt" -purpose sslserver -verify_hostname localhost "${ca}/server.crt" >/dev/null \
    || fail "the server certificate does not verify for localhost"
  openssl verify -CAfile "${ca}/ca.crt" -purpose sslserver -verify_ip 127.0.0.1 "${ca}/server.crt" >/dev/null \
    || fail "the server certificate does not verify for 127.0.0.1"
  openssl verify -CAfile "${ca}/ca.crt" -purpose sslclient "${ca}/client.crt" >/dev/null \
    || fail "the client certificate does not verify as a TLS client"
  openssl x509 -in "${ca}/client.crt" -noout -subject | grep -q 'CN *= *publisher' \
    || fail "the client certificate is not for user publisher"
  [[ "$(openssl x509 -in "${ca}/server.crt" -noout -pubkey)" == "$(openssl pkey -in "${ca}/server.key" -pubout)" ]] \
    || fail "server.key does not belong to server.crt"
  ok "the certificates verify against the CA (localhost, 127.0.0.1, client)"

  [[ "$(cut -d: -f1 "${ca}/passwd" | sort | tr '\n' ' ')" == "caller healthcheck publisher subscriber " ]] \
    || fail "passwd has the users $(cut -d: -f1 "${ca}/passwd" | tr '\n' ' '), want those of the ACL"
  (
    # shellcheck source=/dev/null
    source "${ca}/passwords.env"
    [[ ${XYMQTT_PUBLISHER_PASSWORD} == publisher-test-password && ${XYMQTT_CALLER_PASSWORD} == caller-test-password ]]
  ) || fail "passwords.env does not hold the documented default passwords"
  [[ "$(cat "${ca}/healthcheck.password")" == healthcheck-test-password ]] || fail "healthcheck.password is wrong"
  ok "passwd, passwords.env and healthcheck.password hold the ACL's users"

  local before after
  before="$(cd "${ca}" && sha256sum -- * && stat -c '%n %Y %a' -- *)"
  "${root}/scripts/make-test-ca" "${ca}" >"${work}/again.out" || fail "make-test-ca failed the second time"
  expect_text again.out "nothing to do"
  after="$(cd "${ca}" && sha256sum -- * && stat -c '%n %Y %a' -- *)"
  [[ ${before} == "${after}" ]] || fail "a second run changed files"
  ok "a second run changes nothing"

  rm "${ca}/client.crt"
  "${root}/scripts/make-test-ca" "${ca}" >/dev/null || fail "make-test-ca failed to make a missing file"
  [[ -s "${ca}/client.crt" ]] || fail "the missing client.crt was not made again"
  after="$(cd "${ca}" && sha256sum ca.crt ca.key passwd server.crt server.key)"
  [[ ${after} == "$(grep -E ' (ca\.crt|ca\.key|server\.crt|server\.key|passwd)$' <<<"${before}")" ]] \
    || fail "making client.crt again changed other files"
  ok "a missing file is made again, the others are kept"

  XYMQTT_CALLER_PASSWORD="other 'secret'" "${root}/scripts/make-test-ca" --force \
    --server-name mqtt.example.com --server-name 10.1.2.3 "${ca}" >/dev/null || fail "make-test-ca --force failed"
  cmp -s <(grep ' ca\.crt$' <<<"${before}") <(cd "${ca}" && sha256sum ca.crt) && fail "--force kept the CA"
  openssl verify -CAfile "${ca}/ca.crt" -verify_hostname mqtt.example.com "${ca}/server.crt" >/dev/null \
    || fail "--server-name mqtt.example.com is not in the certificate"
  openssl verify -CAfile "${ca}/ca.crt" -verify_ip 10.1.2.3 "${ca}/server.crt" >/dev/null \
    || fail "--server-name 10.1.2.3 is not in the certificate"
  (
    # shellcheck source=/dev/null
    source "${ca}/passwords.env"
    [[ ${XYMQTT_CALLER_PASSWORD} == "other 'secret'" ]]
  ) || fail "XYMQTT_CALLER_PASSWORD was not used: $(grep CALLER "${ca}/passwords.env")"
  ok "--force makes everything again, with --server-name and the password variables"

  grep -q 'THIS IS A TEST CA, NOT FOR PRODUCTION' "${root}/scripts/make-test-ca" || fail "the script's header does not say TEST CA"
  if command -v git >/dev/null 2>&1 && git -C "${root}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    for f in ca.key server.key passwd passwords.env; do
      git -C "${root}" check-ignore -q "config/mosquitto-secure/certs/${f}" \
        || fail "config/mosquitto-secure/certs/${f} is not ignored by git"
    done
    ok "config/mosquitto-secure/certs/ is ignored by git"
  fi
}

check_healthcheck() {
  [[ -n "${PYTHON_YAML:-}" ]] || fail "PYTHON_YAML is not set (run through CTest)"
  start_broker
  # The healthcheck as compose.yml has it, a shell command for the container ($$ is compose's $).
  local command
  command="$("${PYTHON_YAML}" - "${root}/compose.yml" <<'EOF'
import shlex, sys, yaml
test = yaml.safe_load(open(sys.argv[1]))["services"]["mqtt-secure"]["healthcheck"]["test"]
if isinstance(test, str):
    command = test
elif test[0] == "CMD-SHELL":
    command = test[1]
elif test[0] == "CMD":
    command = shlex.join(test[1:])
else:
    sys.exit(f"unexpected healthcheck test {test!r}")
print(command.replace("$$", "$"))
EOF
)" || fail "no healthcheck in compose.yml's mqtt-secure service"
  printf 'compose.yml healthcheck: %s\n' "${command}"
  [[ ${command} == *"-p 8883"* && ${command} == *"/mosquitto/config/certs/"* ]] \
    || fail "the healthcheck does not connect to port 8883 with the files of /mosquitto/config/certs/"
  # In the container the broker listens on 8883 and the certificates are in /mosquitto/config/certs.
  local here="${command//-p 8883/-p ${PORT}}"
  here="${here//\/mosquitto\/config\/certs\//${certs}/}"
  local out status=0
  out="$(timeout 20 sh -c "${here}" 2>&1)" || status=$?
  [[ ${status} == 0 ]] || fail "the healthcheck failed (status ${status}): ${out}"
  [[ ${out} =~ ^[0-9]+\ seconds$ ]] || fail "the healthcheck printed '${out}', want the broker's uptime"
  ok "the healthcheck passes: uptime '${out}'"

  # It must fail when the broker refuses it (not pass whatever happens).
  mkdir -p "${work}/bad-certs"
  cp "${certs}/ca.crt" "${work}/bad-certs/"
  printf 'wrong-password\n' >"${work}/bad-certs/healthcheck.password"
  local bad="${command//-p 8883/-p ${PORT}}"
  bad="${bad//\/mosquitto\/config\/certs\//${work}/bad-certs/}"
  status=0
  out="$(timeout 20 sh -c "${bad}" 2>&1)" || status=$?
  [[ ${status} != 0 ]] || fail "the healthcheck passed with a wrong password: ${out}"
  ok "the healthcheck fails with a wrong password (status ${status}: ${out})"
  stop_broker
}

check_examples_events() {
  need TICK_PUBLISHER TICK_SUBSCRIBER
  start_broker "log_type subscribe"
  # The subscriber's credentials as flags, the publisher's from the environment.
  background tick_subscriber "${TICK_SUBSCRIBER}" --broker "${URI}" --cafile "${certs}/ca.crt" \
    --username subscriber --password "${XYMQTT_SUBSCRIBER_PASSWORD}" \
    --store "${work}/store-tick_subscriber" --expect 3 --fail-rate 0
  local sub_pid=${BG_PID}
  wait_for_subscription tick_subscriber evt/publisher/tick
  XYMQTT_USERNAME=publisher XYMQTT_PASSWORD="${XYMQTT_PUBLISHER_PASSWORD}" \
    expect_exit 0 tick_publisher "${TICK_PUBLISHER}" --broker "${URI}" --cafile "${certs}/ca.crt" \
    --store "${work}/store-tick_publisher" --count 3 --interval-ms 0
  expect_text tick_publisher.out "all 3 ticks acknowledged"
  wait_for_exit "${sub_pid}" tick_subscriber || fail "tick_subscriber failed: $(cat "${work}/tick_subscriber.out")"
  expect_text tick_subscriber.out "handled 3 distinct ticks"
  grep -q "u'publisher'" "${XYMQTT_BROKER_LOG}" || fail "the broker did not log user publisher"
  ok "tick_publisher --count 3 and tick_subscriber --expect 3 over TLS with passwords"
  stop_broker
}

check_examples_commands() {
  need PING_SERVER PING_CLIENT
  start_broker "log_type subscribe"
  background ping_server env XYMQTT_USERNAME=publisher XYMQTT_PASSWORD="${XYMQTT_PUBLISHER_PASSWORD}" \
    "${PING_SERVER}" --broker "${URI}" --cafile "${certs}/ca.crt" --store "${work}/store-ping_server" --fail-rate 0
  local server=${BG_PID}
  wait_for_subscription ping_server cmd/publisher/ping/invoke
  wait_for_subscription ping_server cmd/publisher/ping/cancel
  local results
  for results in shared per-client; do
    XYMQTT_USERNAME=caller XYMQTT_PASSWORD="${XYMQTT_CALLER_PASSWORD}" \
      expect_exit 0 "ping_client-${results}" "${PING_CLIENT}" --broker "${URI}" --cafile "${certs}/ca.crt" \
      --client-id "ping_client_${results/-/_}" --store "${work}/store-ping_client-${results}" \
      --count 3 --interval-ms 0 --results "${results}"
    expect_text "ping_client-${results}.out" "3 call(s): 3 resolved"
    ok "ping_client --count 3 --results ${results} as user caller: 3 pongs from ping_server as user publisher"
  done
  grep -q " ping_client_per_client 2 xymqtt/results/ping_client_per_client/#" "${XYMQTT_BROKER_LOG}" \
    || fail "ping_client --results per-client did not subscribe its own results topic"
  kill -TERM "${server}"
  wait_for_exit "${server}" ping_server 20 || fail "ping_server did not stop cleanly: $(cat "${work}/ping_server.out")"
  [[ "$(grep -c '√ pong' "${work}/ping_server.out")" == 6 ]] || fail "ping_server did not answer 6 calls:
$(cat "${work}/ping_server.out")"
  stop_broker
}

check_mutual_tls() {
  need TICK_PUBLISHER TICK_SUBSCRIBER XYMQTT_CLI
  start_broker "log_type subscribe"
  background tick_subscriber env XYMQTT_USERNAME=subscriber XYMQTT_PASSWORD="${XYMQTT_SUBSCRIBER_PASSWORD}" \
    "${TICK_SUBSCRIBER}" --broker "${URI}" --cafile "${certs}/ca.crt" \
    --store "${work}/store-tick_subscriber" --expect 3 --fail-rate 0
  local sub_pid=${BG_PID}
  wait_for_subscription tick_subscriber evt/publisher/tick
  # No user name or password: the certificate's Common Name, publisher, is the user.
  expect_exit 0 tick_publisher env -u XYMQTT_USERNAME -u XYMQTT_PASSWORD "${TICK_PUBLISHER}" --broker "${MTLS_URI}" \
    --cafile "${certs}/ca.crt" --cert "${certs}/client.crt" --key "${certs}/client.key" \
    --store "${work}/store-tick_publisher" --count 3 --interval-ms 0
  expect_text tick_publisher.out "all 3 ticks acknowledged"
  wait_for_exit "${sub_pid}" tick_subscriber || fail "tick_subscriber failed: $(cat "${work}/tick_subscriber.out")"
  expect_text tick_subscriber.out "handled 3 distinct ticks"
  grep -q "as tick_publisher (.*u'publisher')" "${XYMQTT_BROKER_LOG}" \
    || fail "the broker did not take publisher, the certificate's name, as the user name"
  ok "tick_publisher with a client certificate on listener 8884 (user publisher), tick_subscriber got 3 ticks"

  # Without a client certificate the handshake fails, a password does not help.
  expected_errors='OpenSSL Error'
  expect_exit 5 cli-no-cert cli_as publisher pub evt/publisher/tick -m x -b "${MTLS_URI}" \
    --cafile "${certs}/ca.crt" --connect-timeout 3000
  expect_text cli-no-cert.err "cannot connect to ${MTLS_URI}"
  ok "without a client certificate listener 8884 refuses: $(cat "${work}/cli-no-cert.err")"

  # The examples check their TLS flags.
  expect_exit 105 cert-without-key "${TICK_PUBLISHER}" --broker "${MTLS_URI}" --cert "${certs}/client.crt" --count 1
  expect_text cert-without-key.err "--cert and --key go together"
  expect_exit 105 tls-flags-on-tcp "${TICK_PUBLISHER}" --broker "tcp://localhost:${PORT}" --cafile "${certs}/ca.crt" --count 1
  expect_text tls-flags-on-tcp.err "need a TLS broker URI (ssl:// or mqtts://)"
  ok "the examples refuse --cert without --key, and TLS files with a tcp:// URI"
  stop_broker
}

check_cli() {
  need XYMQTT_CLI
  start_broker
  local tls=(-b "${URI}" --cafile "${certs}/ca.crt")
  # subscribe as user subscriber (from the environment), publish as user publisher (flags).
  background cli-subscribe cli_as subscriber subscribe Publisher.tick "${schema[@]}" "${tls[@]}" -n 1 --timeout 30000
  local sub_pid=${BG_PID}
  wait_for_text "${work}/cli-subscribe.err" "xymqtt: subscribed to evt/publisher/tick"
  expect_exit 0 cli-publish env -u XYMQTT_USERNAME -u XYMQTT_PASSWORD "${XYMQTT_CLI}" publish Publisher.tick \
    "${schema[@]}" "${tls[@]}" -u publisher --password "${XYMQTT_PUBLISHER_PASSWORD}" --json '{"count": 7}'
  wait_for_exit "${sub_pid}" cli-subscribe || fail "xymqtt subscribe failed: $(cat "${work}/cli-subscribe.err")"
  expect_text cli-subscribe.out '"topic":"evt/publisher/tick"'
  expect_text cli-subscribe.out '"count":"7"'
  ok "xymqtt publish (user publisher) -> xymqtt subscribe (user subscriber) over TLS: $(cat "${work}/cli-subscribe.out")"

  background cli-serve cli_as publisher serve Publisher.ping "${schema[@]}" "${tls[@]}" -n 1 \
    --exec 'echo "{\"pong\": true}"'
  local server=${BG_PID}
  wait_for_text "${work}/cli-serve.err" "xymqtt: serving cmd/publisher/ping"
  expect_exit 0 cli-call cli_as caller call Publisher.ping "${schema[@]}" "${tls[@]}" --timeout 20000
  expect_text cli-call.out '{"pong":true}'
  wait_for_exit "${server}" cli-serve || fail "xymqtt serve failed: $(cat "${work}/cli-serve.err")"
  ok "xymqtt call (user caller) -> xymqtt serve (user publisher) over TLS: $(cat "${work}/cli-call.out")"
  stop_broker
}

check_acl() {
  need XYMQTT_CLI
  start_broker
  local tls=(-b "${URI}" --cafile "${certs}/ca.crt")
  # Publishing to another service's topics: refused with "not authorized" (0x87 = 135) under MQTT 5.
  expect_exit 5 acl-subscriber-publishes cli_as subscriber pub evt/publisher/tick -m forged "${tls[@]}"
  expect_text acl-subscriber-publishes.err "refused the publish"
  expect_text acl-subscriber-publishes.err "135"
  ok "user subscriber publishing evt/publisher/tick: $(cat "${work}/acl-subscriber-publishes.err")"
  expect_exit 5 acl-caller-publishes cli_as caller publish Publisher.tick "${schema[@]}" "${tls[@]}" --json '{"count": 1}'
  expect_text acl-caller-publishes.err "135"
  expect_exit 5 acl-subscriber-invokes cli_as subscriber pub cmd/publisher/ping/invoke -m '{"messageId":"x"}' "${tls[@]}"
  expect_text acl-subscriber-invokes.err "135"
  expect_exit 5 acl-caller-answers cli_as caller pub cmd/publisher/ping/resolve -m '{"messageId":"x"}' "${tls[@]}"
  expect_text acl-caller-answers.err "135"
  ok "users caller and subscriber may not publish events, invokes or results not theirs"

  # Reading: a user receives only what it may read. Users caller and subscriber subscribe (which
  # Mosquitto's ACL does not check) to the publisher's events and results alike, and caller also to every
  # per-client results topic. Then, one publish completed before the next starts:
  #   1 cmd/publisher/ping/resolve                 caller may read it, subscriber not
  #   2 evt/publisher/tick                         subscriber may read it, caller not
  #   3 xymqtt/results/someone-else/ping/resolve   another client's results: caller (acl-caller) not
  #   4 xymqtt/results/acl-caller/ping/resolve     caller's own results (the ACL's pattern)
  #   5 cmd/publisher/ping/reject                  caller may read it
  # The broker queues each subscriber's messages in order, so a forbidden message that got through would
  # come before the allowed one after it: each subscriber takes as many messages as it may read.
  background acl-caller-results cli_as caller sub '+/publisher/#' "${tls[@]}" -n 2 --timeout 30000
  local caller_results=${BG_PID}
  background acl-caller-own cli_as caller sub 'xymqtt/results/#' "${tls[@]}" --client-id acl-caller --clean \
    -n 1 --timeout 30000
  local caller_own=${BG_PID}
  background acl-subscriber-events cli_as subscriber sub '+/publisher/#' "${tls[@]}" -n 1 --timeout 30000
  local subscriber=${BG_PID}
  wait_for_text "${work}/acl-caller-results.err" "xymqtt: subscribed to +/publisher/#"
  wait_for_text "${work}/acl-caller-own.err" "xymqtt: subscribed to xymqtt/results/#"
  wait_for_text "${work}/acl-subscriber-events.err" "xymqtt: subscribed to +/publisher/#"
  local topic n=0
  for topic in cmd/publisher/ping/resolve evt/publisher/tick xymqtt/results/someone-else/ping/resolve \
    xymqtt/results/acl-caller/ping/resolve cmd/publisher/ping/reject; do
    n=$((n + 1))
    expect_exit 0 "acl-publish-${n}" cli_as publisher pub "${topic}" -m "message ${n}" "${tls[@]}"
  done
  wait_for_exit "${caller_results}" acl-caller-results || fail "xymqtt sub failed: $(cat "${work}/acl-caller-results.err")"
  wait_for_exit "${caller_own}" acl-caller-own || fail "xymqtt sub failed: $(cat "${work}/acl-caller-own.err")"
  wait_for_exit "${subscriber}" acl-subscriber-events || fail "xymqtt sub failed: $(cat "${work}/acl-subscriber-events.err")"
  [[ "$(cat "${work}/acl-subscriber-events.out")" == '{"topic":"evt/publisher/tick","payload":"message 2"}' ]] \
    || fail "user subscriber, subscribed to +/publisher/#, received: $(cat "${work}/acl-subscriber-events.out")"
  [[ "$(cat "${work}/acl-caller-results.out")" == '{"topic":"cmd/publisher/ping/resolve","payload":"message 1"}
{"topic":"cmd/publisher/ping/reject","payload":"message 5"}' ]] \
    || fail "user caller, subscribed to +/publisher/#, received: $(cat "${work}/acl-caller-results.out")"
  [[ "$(cat "${work}/acl-caller-own.out")" == '{"topic":"xymqtt/results/acl-caller/ping/resolve","payload":"message 4"}' ]] \
    || fail "user caller (client id acl-caller), subscribed to xymqtt/results/#, received: $(cat "${work}/acl-caller-own.out")"
  ok "user subscriber received the event only, user caller the shared results and its own per-client results only"
  stop_broker
}

check_refused() {
  need XYMQTT_CLI
  start_broker
  # Refused handshakes are logged by the broker as OpenSSL errors: expected here.
  expected_errors='OpenSSL Error'
  local tls=(-b "${URI}" --cafile "${certs}/ca.crt" --connect-timeout 3000)

  expect_exit 5 wrong-password env XYMQTT_USERNAME=publisher XYMQTT_PASSWORD=wrong-password \
    "${XYMQTT_CLI}" pub evt/publisher/tick -m x "${tls[@]}"
  expect_text wrong-password.err "not authorized: bad user name or password"
  ok "a wrong password: $(cat "${work}/wrong-password.err")"

  expect_exit 5 no-credentials env -u XYMQTT_USERNAME -u XYMQTT_PASSWORD \
    "${XYMQTT_CLI}" pub evt/publisher/tick -m x "${tls[@]}"
  expect_text no-credentials.err "not authorized"
  ok "no credentials: $(cat "${work}/no-credentials.err")"

  "${root}/scripts/make-test-ca" "${work}/other-ca" >/dev/null || fail "make-test-ca failed for a second CA"
  expect_exit 5 untrusted-ca cli_as publisher pub evt/publisher/tick -m x -b "${URI}" \
    --cafile "${work}/other-ca/ca.crt" --connect-timeout 3000
  expect_text untrusted-ca.err "certificate verify failed"
  ok "a server certificate from an untrusted CA: $(cat "${work}/untrusted-ca.err")"

  expect_exit 5 plain-mqtt cli_as publisher pub evt/publisher/tick -m x -b "tcp://localhost:${PORT}" --connect-timeout 3000
  expect_text plain-mqtt.err "cannot connect to tcp://localhost:${PORT}"
  ok "plain MQTT on the TLS port: $(cat "${work}/plain-mqtt.err")"
  stop_broker
}

case "${check}" in
  config | make_test_ca | healthcheck | examples_events | examples_commands | mutual_tls | cli | acl | refused)
    "check_${check}" ;;
  *) fail "unknown check '${check}'" ;;
esac
