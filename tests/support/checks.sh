# shellcheck shell=bash
# Helpers of the shell-driven checks (tests/compose/check_secure.sh, tests/cluster/check_cluster.sh).
# The sourcing script defines fail (which may add its own logs), sets `work` (a directory for outputs)
# and `children=()` (killed at exit), and may set CHECK_TIMEOUT (seconds a command under expect_exit may
# take, default 60) and CHECK_WAIT (default seconds of wait_for_text, 30).

skip() { printf 'SKIP: %s\n' "$*"; exit 77; }
ok() { printf 'ok: %s\n' "$*"; }

# need VAR...: the programs these variables name (set by the test's CMakeLists.txt) are built.
need() {
  local var
  for var in "$@"; do
    [[ -n "${!var:-}" ]] || fail "${var} is not set (run through CTest)"
    [[ -x "${!var}" ]] || fail "${var}=${!var} is not built"
  done
}

# background NAME COMMAND...: stdout in ${work}/NAME.out, stderr in NAME.err; sets BG_PID.
background() {
  local name="$1"
  shift
  "$@" >"${work}/${name}.out" 2>"${work}/${name}.err" &
  BG_PID=$!
  children+=("${BG_PID}")
}

# wait_for_exit PID NAME [SECONDS]: the exit status of a background program, which must end in time.
wait_for_exit() {
  local pid="$1" name="$2" deadline=$((SECONDS + ${3:-60}))
  while kill -0 "${pid}" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "${pid}" 2>/dev/null || true
      fail "${name} did not end within ${3:-60} s; its output:
$(cat "${work}/${name}.out" "${work}/${name}.err" 2>/dev/null)"
    fi
    sleep 0.02
  done
  local status=0
  wait "${pid}" || status=$?
  return "${status}"
}

# expect_exit STATUS NAME COMMAND...: runs COMMAND (output in ${work}/NAME.out/.err), checks its status.
# COMMAND may be a function of the sourcing script (it then bounds its own time).
expect_exit() {
  local want="$1" name="$2" status=0
  shift 2
  if declare -F "$1" >/dev/null; then
    "$@" >"${work}/${name}.out" 2>"${work}/${name}.err" || status=$?
  else
    timeout "${CHECK_TIMEOUT:-60}" "$@" >"${work}/${name}.out" 2>"${work}/${name}.err" || status=$?
  fi
  [[ ${status} == "${want}" ]] || fail "${name}: exit status ${status}, want ${want}; output:
$(cat "${work}/${name}.out" "${work}/${name}.err")"
}

# expect_text NAME.out|NAME.err TEXT: the output file contains TEXT.
expect_text() {
  grep -qF -- "$2" "${work}/$1" || fail "${1%.*} did not print '$2'; it printed:
$(cat "${work}/$1")"
}

# wait_for_text FILE TEXT [SECONDS]: until FILE contains TEXT.
wait_for_text() {
  local file="$1" text="$2" deadline=$((SECONDS + ${3:-${CHECK_WAIT:-30}}))
  until grep -qF -- "${text}" "${file}" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "'${text}' did not appear in ${file}:
$(cat "${file}" 2>/dev/null)"
    sleep 0.02
  done
}
