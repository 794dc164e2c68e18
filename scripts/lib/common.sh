# shellcheck shell=bash
# Shared set-up for scripts/test, scripts/demo and scripts/broker:
# Debian packages, the CMake build and the JavaScript interop dependencies.
# Source it; it defines functions and XYMQTT_ROOT, and runs nothing.

XYMQTT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# The Debian 12 packages the project needs: THE list (README and CI rely on it).
XYMQTT_APT_PACKAGES=(
  build-essential cmake pkg-config
  libpaho-mqttpp-dev libpaho-mqtt-dev
  liblmdb-dev lmdb-utils libsqlite3-dev sqlite3 zlib1g-dev liburiparser-dev libxxhash-dev libssl-dev
  protobuf-compiler libprotobuf-dev libprotoc-dev
  python3 python3-protobuf python3-jinja2 python3-yaml
  catch2 libtrompeloeil-cpp-dev nlohmann-json3-dev libcli11-dev
  mosquitto mosquitto-clients openssl clang-14 libclang-rt-14-dev
  dpkg-dev doxygen
)
# Only when no `node` is on PATH (a Node.js installed outside apt is fine).
XYMQTT_APT_NODE_PACKAGES=(nodejs npm)
# A second broker that clusters (ejabberd's mod_mqtt), for scripts/cluster and tests/cluster. Not part of
# the list above: scripts/test installs it apart (XYMQTT_CLUSTER_NO_INSTALL=1 leaves it out, and
# tests/cluster then skips), and the demo does not need it.
XYMQTT_APT_CLUSTER_PACKAGES=(ejabberd)

xymqtt_log() { printf '==> %s\n' "$*" >&2; }
xymqtt_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
xymqtt_as_root() {
  if [[ ${EUID} -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    xymqtt_die "need root to run: $* (install sudo, or run as root)"
  fi
}

# Prints the packages of "$@" that are not installed, one per line.
xymqtt_missing_packages() {
  local status
  status="$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)"
  local pkg
  for pkg in "$@"; do
    grep -qx "${pkg} install ok installed" <<<"${status}" || printf '%s\n' "${pkg}"
  done
}

# Installs the missing Debian packages; `apt-get update` only when one is missing.
xymqtt_ensure_packages() {
  command -v dpkg-query >/dev/null 2>&1 \
    || xymqtt_die "dpkg-query not found: these scripts set up Debian 12 (see README for the package list)"
  local wanted=("${XYMQTT_APT_PACKAGES[@]}")
  command -v node >/dev/null 2>&1 || wanted+=("${XYMQTT_APT_NODE_PACKAGES[@]}")
  local missing
  mapfile -t missing < <(xymqtt_missing_packages "${wanted[@]}")
  [[ ${#missing[@]} -eq 0 ]] && return 0
  xymqtt_log "installing Debian packages: ${missing[*]}"
  xymqtt_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  xymqtt_as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
}

# The build directory: build/ (Release by default), or build-asan/ with
# XYMQTT_SANITIZE=1 (AddressSanitizer + UBSan, RelWithDebInfo by default).
# CMAKE_BUILD_TYPE applies when the directory is configured the first time.
xymqtt_build_dir() {
  if [[ ${XYMQTT_SANITIZE:-0} == 1 ]]; then
    printf '%s\n' "${XYMQTT_ROOT}/build-asan"
  else
    printf '%s\n' "${XYMQTT_ROOT}/build"
  fi
}

# Configures (only when the build directory is not configured yet, or its
# last configure failed before generating) and builds incrementally: every
# target, or only `xymqtt_build target...` and what they need.
xymqtt_build() {
  local dir
  dir="$(xymqtt_build_dir)"
  if [[ ! -f "${dir}/CMakeCache.txt" || ! ( -f "${dir}/Makefile" || -f "${dir}/build.ninja" ) ]]; then
    local args=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}")
    if [[ ${XYMQTT_SANITIZE:-0} == 1 ]]; then
      args=(-DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" -DXYMQTT_SANITIZE=ON)
    fi
    xymqtt_log "configuring ${dir#"${XYMQTT_ROOT}"/}"
    cmake -S "${XYMQTT_ROOT}" -B "${dir}" "${args[@]}"
  fi
  # With arguments, only those targets (and what they need); without, everything.
  local targets=()
  if [[ $# -gt 0 ]]; then targets=(--target "$@"); fi
  xymqtt_log "building ${dir#"${XYMQTT_ROOT}"/}${*:+ ($*)}"
  cmake --build "${dir}" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "${targets[@]}"
}

# Installs tests/interop's npm dependencies when that folder exists and its
# node_modules is missing or older than package.json / package-lock.json.
xymqtt_ensure_interop_deps() {
  local dir="${XYMQTT_ROOT}/tests/interop"
  [[ -f "${dir}/package.json" ]] || return 0
  local stamp="${dir}/node_modules/.xymqtt-installed"
  if [[ -f "${stamp}" && ! "${dir}/package.json" -nt "${stamp}" \
        && ! ( -f "${dir}/package-lock.json" && "${dir}/package-lock.json" -nt "${stamp}" ) ]]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || xymqtt_die "npm not found (needed by tests/interop)"
  xymqtt_log "installing npm dependencies of tests/interop"
  if [[ -f "${dir}/package-lock.json" ]]; then
    npm ci --prefix "${dir}" --no-audit --no-fund --loglevel=error
  else
    npm install --prefix "${dir}" --no-audit --no-fund --loglevel=error
  fi
  mkdir -p "${dir}/node_modules"
  touch "${stamp}"
}

# @return 0 when the clustered broker's packages are all installed.
xymqtt_cluster_packages_present() {
  command -v dpkg-query >/dev/null 2>&1 || return 1
  [[ -z "$(xymqtt_missing_packages "${XYMQTT_APT_CLUSTER_PACKAGES[@]}")" ]]
}

# Installs the clustered broker (XYMQTT_APT_CLUSTER_PACKAGES) when missing, for scripts/test, scripts/cluster
# and scripts/reliability, then stops and disables the system service that Debian's package starts (the
# cluster runs its own nodes). XYMQTT_CLUSTER_NO_INSTALL=1: fail instead.
xymqtt_ensure_cluster_packages() {
  command -v dpkg-query >/dev/null 2>&1 || xymqtt_die "dpkg-query not found: the cluster scripts set up Debian 12's ejabberd"
  local missing
  mapfile -t missing < <(xymqtt_missing_packages "${XYMQTT_APT_CLUSTER_PACKAGES[@]}")
  if [[ ${#missing[@]} -gt 0 ]]; then
    [[ ${XYMQTT_CLUSTER_NO_INSTALL:-0} != 1 ]] || xymqtt_die "not installed: ${missing[*]} (apt-get install ${missing[*]})"
    xymqtt_log "installing Debian packages: ${missing[*]}"
    xymqtt_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    xymqtt_as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet ejabberd 2>/dev/null; then
      xymqtt_log "disabling the system ejabberd service (scripts/cluster runs its own nodes)"
      xymqtt_as_root systemctl disable --now ejabberd >/dev/null 2>&1 || true
    fi
    if [[ -x /usr/sbin/ejabberdctl ]] && pgrep -u ejabberd -x beam.smp >/dev/null 2>&1; then
      xymqtt_log "stopping the system ejabberd the package started"
      xymqtt_as_root /usr/sbin/ejabberdctl stop >/dev/null 2>&1 || true
    fi
  fi
  command -v erl >/dev/null 2>&1 || xymqtt_die "erl not found (Debian: erlang-base, a dependency of ejabberd)"
  command -v epmd >/dev/null 2>&1 || PATH="${PATH}:/usr/lib/erlang/bin"
  command -v epmd >/dev/null 2>&1 || xymqtt_die "epmd not found (Debian: erlang-base)"
}
