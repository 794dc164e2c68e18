#!/usr/bin/env bash
# Runs one libFuzzer harness for a bounded time on the committed corpus without writing into it.
#   run_fuzzer.sh BINARY CORPUS_DIR SECONDS [extra libFuzzer flags]
# Prints the number of executions; fails on any crash, leak, timeout or sanitizer report.
set -euo pipefail
bin="$1" corpus="$2" seconds="$3"
shift 3
work="$(mktemp -d "${TMPDIR:-/tmp}/xymqtt-fuzz.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/new" "${work}/artifacts"
status=0
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
  "${bin}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="${work}/artifacts/" "$@" "${work}/new" "${corpus}" >"${work}/log" 2>&1 || status=$?
execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${work}/log" | tail -1)"
if [[ ${status} -ne 0 ]]; then
  tail -60 "${work}/log"
  for a in "${work}"/artifacts/*; do
    [[ -f ${a} ]] && { echo "crashing input ($(basename "${a}")), base64:"; base64 "${a}" | head -20; }
  done
  echo "fuzz $(basename "${bin}"): FAILED after ${execs:-?} executions"
  exit 1
fi
summary="fuzz $(basename "${bin}"): ${execs} executions in ${seconds} s, $(ls "${work}/new" | wc -l) new corpus inputs, 0 crashes"
echo "${summary}"
if [[ -n ${XYMQTT_REL_REPORT:-} ]]; then echo "${summary}" >>"${XYMQTT_REL_REPORT}"; fi
