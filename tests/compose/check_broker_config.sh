#!/usr/bin/env bash
# Starts the Debian Mosquitto with the compose config (config/mosquitto/
# mosquitto.conf) as scripts/test renders it, and checks that it
#  - differs from the container's file only in the listener and paths,
#  - carries a QoS 2 message to a persistent session that was offline,
#  - saves its database on a graceful stop, and logs no "Error".
# Usage: check_broker_config.sh SOURCE_DIR
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
# shellcheck source=scripts/lib/broker.sh
source "${root}/scripts/lib/broker.sh"
PATH="${PATH}:/usr/sbin"

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
dir=
trap 'xymqtt_broker_stop >/dev/null 2>&1 || true; [[ -z "${dir}" ]] || rm -rf "${dir}"' EXIT

export XYMQTT_KEEP_BROKER_DIR=1
xymqtt_broker_start
dir="${XYMQTT_BROKER_DIR}"
port="${XYMQTT_BROKER_PORT}"

# Only the listener, the /mosquitto/ paths and the appended lines may differ.
changed="$(diff <(grep -v '^#' "${root}/config/mosquitto/mosquitto.conf") \
                <(grep -v '^#' "${dir}/mosquitto.conf") | grep '^[<>]' || true)"
unexpected="$(grep -v -E -e '^< (listener 1883|.*/mosquitto/(data|log).*)$' \
  -e "^> (listener ${port} 127\\.0\\.0\\.1|.*${dir}/(data|log).*|user root|)\$" <<<"${changed}" || true)"
[[ -z "${unexpected}" ]] || fail "the rendered config differs in more than listener/paths:
${unexpected}"

sub=(mosquitto_sub -h 127.0.0.1 -p "${port}" -V mqttv5 -q 2 -t compose/check -i compose-check -c -x 3600)
"${sub[@]}" -E || fail "mosquitto_sub could not subscribe"
mosquitto_pub -h 127.0.0.1 -p "${port}" -V mqttv5 -q 2 -t compose/check -m "delivered" \
  || fail "mosquitto_pub failed"
got="$("${sub[@]}" -C 1 -W 10)" || fail "the queued message did not arrive"
[[ ${got} == delivered ]] || fail "received '${got}', want 'delivered'"

export XYMQTT_KEEP_BROKER_DIR=1
xymqtt_broker_stop || fail "the broker logged errors"
[[ -s "${dir}/data/mosquitto.db" ]] || fail "no persistence file ${dir}/data/mosquitto.db after a graceful stop"
grep -q 'mosquitto version .* running' "${dir}/log/mosquitto.log" || fail "nothing in the log file"
rm -rf "${dir}"
echo "the compose broker config starts Mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') and delivers"
