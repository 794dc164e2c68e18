# shellcheck shell=bash
# A private Mosquitto for scripts and shell tests, configured from
# config/mosquitto/mosquitto.conf (the project's one broker config).
#
#   xymqtt_broker_start        # sets XYMQTT_BROKER_URI, _PORT, _PID, _DIR, _LOG
#   trap xymqtt_broker_stop EXIT
#   ...
#   xymqtt_broker_stop         # graceful stop; prints "Error" log lines, returns 1 if any
#
# The C++ twin of the rendering below is tests/support/broker.cpp; both only
# change the listener and the two /mosquitto/ paths (see the config's header).

XYMQTT_BROKER_CONFIG="${XYMQTT_BROKER_CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/config/mosquitto/mosquitto.conf}"

# Prints a TCP port on 127.0.0.1 that is free right now.
xymqtt_free_port() {
  local py
  py="$(command -v python3 || true)"
  [[ -n "${py}" ]] || { printf 'error: python3 not found\n' >&2; return 1; }
  "${py}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# xymqtt_render_broker_config SOURCE PORT DIR: prints SOURCE with the listener
# moved to 127.0.0.1:PORT and /mosquitto/{data,log} moved to DIR/{data,log}.
# Appends "user root" when run as root: Mosquitto started as root otherwise
# drops to the "mosquitto" user and cannot write its persistence file in DIR.
xymqtt_render_broker_config() {
  local src="$1" port="$2" dir="$3" out
  out="$(sed -E \
    -e "s|^[[:space:]]*listener[[:space:]]+[0-9]+[[:space:]]*\$|listener ${port} 127.0.0.1|" \
    -e "s|/mosquitto/data|${dir}/data|g" \
    -e "s|/mosquitto/log|${dir}/log|g" \
    "${src}")" || return 1
  if ! grep -qx "listener ${port} 127.0.0.1" <<<"${out}"; then
    printf 'error: %s has no "listener <port>" line to render\n' "${src}" >&2
    return 1
  fi
  printf '%s\n' "${out}"
  printf '\n# Added for a private broker run by %s\n' "$(id -un)"
  if [[ ${EUID} -eq 0 ]]; then
    printf 'user root\n'
  fi
}

# Is something accepting TCP connections on 127.0.0.1:$1?
xymqtt_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts Mosquitto in the background (not daemonised: a child of this shell)
# and waits until it accepts connections. XYMQTT_BROKER_EXTRA_CONFIG: extra
# config lines appended (password_file, acl_file, another listener...).
xymqtt_broker_start() {
  local extra="${XYMQTT_BROKER_EXTRA_CONFIG:-}"
  command -v mosquitto >/dev/null 2>&1 || PATH="${PATH}:/usr/sbin"
  command -v mosquitto >/dev/null 2>&1 || { printf 'error: mosquitto not found\n' >&2; return 1; }
  XYMQTT_BROKER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/xymqtt-script-broker.XXXXXX")"
  mkdir -p "${XYMQTT_BROKER_DIR}/data" "${XYMQTT_BROKER_DIR}/log"
  XYMQTT_BROKER_LOG="${XYMQTT_BROKER_DIR}/log/mosquitto.log"
  for _ in 1 2 3; do
    XYMQTT_BROKER_PORT="$(xymqtt_free_port)" || return 1
    {
      xymqtt_render_broker_config "${XYMQTT_BROKER_CONFIG}" "${XYMQTT_BROKER_PORT}" "${XYMQTT_BROKER_DIR}" || return 1
      [[ -z "${extra}" ]] || printf '%s\n' "${extra}"
    } >"${XYMQTT_BROKER_DIR}/mosquitto.conf" || return 1
    mosquitto -c "${XYMQTT_BROKER_DIR}/mosquitto.conf" >"${XYMQTT_BROKER_DIR}/stdout.log" 2>&1 &
    XYMQTT_BROKER_PID=$!
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
      if ! kill -0 "${XYMQTT_BROKER_PID}" 2>/dev/null; then
        break
      fi
      if xymqtt_port_open "${XYMQTT_BROKER_PORT}"; then
        XYMQTT_BROKER_URI="tcp://127.0.0.1:${XYMQTT_BROKER_PORT}"
        export XYMQTT_BROKER_URI XYMQTT_BROKER_PORT XYMQTT_BROKER_PID XYMQTT_BROKER_DIR XYMQTT_BROKER_LOG
        # Not exported: a child script that sources this file must not stop the broker of its parent
        # (its environment names that broker) when it stops its own, or when it started none.
        _xymqtt_broker_started_here=1
        return 0
      fi
      sleep 0.02
    done
    kill -KILL "${XYMQTT_BROKER_PID}" 2>/dev/null || true
    wait "${XYMQTT_BROKER_PID}" 2>/dev/null || true
    XYMQTT_BROKER_PID=
    # Another process may have taken the port between our check and bind: retry.
    grep -q 'Address already in use' "${XYMQTT_BROKER_DIR}/stdout.log" "${XYMQTT_BROKER_LOG}" 2>/dev/null || break
  done
  {
    printf 'error: mosquitto did not start on 127.0.0.1:%s; its output:\n' "${XYMQTT_BROKER_PORT}"
    cat "${XYMQTT_BROKER_DIR}/stdout.log" 2>/dev/null || true
    printf -- '--- config %s/mosquitto.conf\n' "${XYMQTT_BROKER_DIR}"
    grep -v -e '^#' -e '^$' "${XYMQTT_BROKER_DIR}/mosquitto.conf" || true
  } >&2
  return 1
}

# Stops the broker gracefully (SIGTERM: it saves its database), SIGKILL after
# 10 s. Prints the log's "Error" lines to stderr and returns 1 if there are any.
# Safe to call twice (from a trap and explicitly). Removes the broker's temp
# dir unless it logged errors or XYMQTT_KEEP_BROKER_DIR=1.
xymqtt_broker_stop() {
  [[ -n "${_xymqtt_broker_started_here:-}" ]] || return 0  # the broker of a parent process, or none
  _xymqtt_broker_started_here=
  local pid="${XYMQTT_BROKER_PID:-}" status=0
  XYMQTT_BROKER_PID=
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
    kill -TERM "${pid}" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.02; done
    kill -KILL "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
  fi
  [[ -n "${XYMQTT_BROKER_DIR:-}" && -d "${XYMQTT_BROKER_DIR}" ]] || return 0
  local errors
  errors="$(grep -h 'Error' "${XYMQTT_BROKER_LOG}" "${XYMQTT_BROKER_DIR}/stdout.log" 2>/dev/null | sort -u || true)"
  if [[ -n "${errors}" ]]; then
    printf 'error: the broker logged errors (log kept in %s):\n%s\n' "${XYMQTT_BROKER_DIR}" "${errors}" >&2
    status=1
  elif [[ ${XYMQTT_KEEP_BROKER_DIR:-0} != 1 ]]; then
    rm -rf "${XYMQTT_BROKER_DIR}"
  fi
  XYMQTT_BROKER_DIR=
  return "${status}"
}
