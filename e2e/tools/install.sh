#!/usr/bin/env bash
# Builds the e2e control-plane tools (kube-apiserver, etcd, helm) from their Go
# modules with the local Go toolchain, into a cache outside the repository:
#
#   ${KEYWAY_CACHE:-~/.cache/keyway}/bin/{kube-apiserver,etcd,helm}
#
# the components of the e2e suite's real node, from the same k8s.io/kubernetes version as
# kube-apiserver (plus CoreDNS from its Go module and the pod sandbox's pause from the
# Kubernetes module's C source):
#
#   ${KEYWAY_CACHE:-~/.cache/keyway}/bin/{kubelet,kube-scheduler,kube-controller-manager,
#                                         kube-proxy,coredns,pause}
#
# and provides what the chart, observability and node tests need besides:
#
#   prometheus, promtool  Debian package `prometheus` (/usr/bin), installed with
#                         apt-get only when missing (needs root)
#   redis-server          Debian package `redis-server`, same rule
#   containerd, runc      Debian packages `containerd` and `runc` (the node's runtime)
#   cni-plugins           Debian package `containernetworking-plugins` (/usr/lib/cni:
#                         bridge, host-local, loopback, portmap)
#   iptables, conntrack   Debian packages of those names (kube-proxy, kubelet, portmap)
#   chromium              Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium,
#                         /usr/bin/chromedriver): the status page's browser test drives
#                         headless Chromium through chromedriver's WebDriver API
#   monitoring-crds       the ServiceMonitor and PrometheusRule CRDs, copied from the
#                         prometheus-operator Go module (fetched through the Go module
#                         proxy) into ${KEYWAY_CACHE:-~/.cache/keyway}/crds/
#
# Versions come from versions.env beside this script. Each binary has a stamp
# (bin/.<tool>.stamp); a tool whose stamp matches is skipped, so a second run
# is a fast no-op and a version bump rebuilds only that tool.
#
# Usage: e2e/tools/install.sh [TOOL ...]   (default: all; `node` = every node component)
#        TOOL: kube-apiserver etcd helm prometheus redis-server monitoring-crds kubelet
#              kube-scheduler kube-controller-manager kube-proxy coredns pause containerd
#              runc cni-plugins iptables conntrack chromium
# Env:   KEYWAY_CACHE  cache root (default ~/.cache/keyway)
#        GO            go binary (default /usr/local/go/bin/go, else go on PATH)
#        KEYWAY_TOOLS_FORCE=1  rebuild even if up to date
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${SCRIPT_DIR}/versions.env"

# Bump when the build recipe (flags, ldflags) changes, to force rebuilds.
RECIPE=1

CACHE="${KEYWAY_CACHE:-${HOME}/.cache/keyway}"
BIN="${CACHE}/bin"
WORK="${CACHE}/work"

log() { printf '[keyway-tools] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

vtag() { printf 'v%s' "${1#v}"; } # normalise to a leading "v"

K8S_V="$(vtag "${KUBERNETES_VERSION:?missing in versions.env}")"
ETCD_V="$(vtag "${ETCD_VERSION:?missing in versions.env}")"
HELM_V="$(vtag "${HELM_VERSION:?missing in versions.env}")"
PROM_OP_V="$(vtag "${PROMETHEUS_OPERATOR_VERSION:?missing in versions.env}")"
COREDNS_V="$(vtag "${COREDNS_VERSION:?missing in versions.env}")"
CRDS="${CACHE}/crds"

# --- Go toolchain and environment (all caches under $CACHE) ---------------
if [[ -z "${GO:-}" ]]; then
  if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  elif command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  else die "no Go toolchain found (set GO=/path/to/go)"; fi
fi
export GOPATH="${CACHE}/go"
export GOMODCACHE="${CACHE}/go/mod"
export GOCACHE="${CACHE}/go/build"
export GOFLAGS="-trimpath -buildvcs=false"
export GOTOOLCHAIN=local GOWORK=off GO111MODULE=on CGO_ENABLED=0
unset GOOS GOARCH GOBIN

gover="$("$GO" env GOVERSION)" || die "cannot run ${GO}"
if ! [[ "$gover" =~ ^go1\.([0-9]+) ]] || (( BASH_REMATCH[1] < 24 )); then
  die "need Go >= 1.24, have ${gover} (${GO})"
fi

mkdir -p "$BIN" "$WORK"

# One install at a time per cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${CACHE}/.install.lock"
  flock 9
fi

# --- helpers -----------------------------------------------------------------
stamp_of() { printf '%s recipe=%s\n' "$1" "$RECIPE"; }

# Succeeds (and says so) if bin/NAME was built for VERSION by this recipe.
current() { # name version
  local f="${BIN}/.$1.stamp"
  if [[ "${KEYWAY_TOOLS_FORCE:-0}" != 1 && -x "${BIN}/$1" && -f "$f" &&
        "$(cat "$f")" == "$(stamp_of "$2")" ]]; then
    log "$1 $2: up to date (${BIN}/$1)"
    return 0
  fi
  return 1
}

# Prints the module's .info path (downloading it if needed).
mod_info() { # module@version
  local json
  json="$("$GO" mod download -json "$1" 2>&1)" || { printf '%s\n' "$json" >&2; die "cannot download $1"; }
  sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}
# VCS commit of a module version if the proxy recorded one, else empty.
origin_hash() { sed -n 's/.*"Hash":"\([0-9a-f]\{40\}\)".*/\1/p' "$1"; }
# Commit time of a module version, RFC 3339 UTC.
mod_time() { sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$1"; }

build_failed() { # name version logfile
  rm -f "${BIN}/.$1.tmp"
  tail -n 40 "$3" >&2
  die "$1 $2: build failed (full log: $3)"
}

# build_tool NAME VERSION MODULE PACKAGE LDFLAGS [go.mod extra lines] [main.go]
# Builds PACKAGE from MODULE@VERSION in a throwaway module that requires it; with a main.go,
# builds that instead (a main package of the throwaway module, importing from MODULE).
build_tool() {
  local name="$1" version="$2" module="$3" pkg="$4" ldflags="$5" extra="${6:-}" main="${7:-}"
  log "${name} ${version}: building from ${pkg} (this takes a while)..."
  local start=$SECONDS dir="${WORK}/${name}-${version}"
  rm -rf "$dir"
  mkdir -p "$dir"
  {
    printf 'module keyway.local/tools/%s\n\ngo 1.24.0\n\n' "$name"
    printf 'require %s %s\n\n' "$module" "$version"
    [[ -n "$main" ]] || printf 'tool %s\n' "$pkg"
    [[ -z "$extra" ]] || printf '\n%s\n' "$extra"
  } >"${dir}/go.mod"
  if [[ -n "$main" ]]; then
    printf '%s\n' "$main" >"${dir}/main.go"
    pkg=.
  fi
  # Go's own output goes to build.log, shown only if a step fails.
  local logf="${dir}/build.log"
  log "${name}: resolving modules"
  (cd "$dir" && "$GO" mod tidy) >"$logf" 2>&1 || build_failed "$name" "$version" "$logf"
  log "${name}: compiling"
  (cd "$dir" && "$GO" build -ldflags "$ldflags" -o "${BIN}/.${name}.tmp" "$pkg") >>"$logf" 2>&1 ||
    build_failed "$name" "$version" "$logf"
  mv -f "${BIN}/.${name}.tmp" "${BIN}/${name}"
  stamp_of "$version" >"${BIN}/.${name}.stamp"
  rm -rf "$dir"
  log "${name} ${version}: built in $((SECONDS - start))s -> ${BIN}/${name}"
}

# --- Kubernetes components (kube-apiserver and the node's) -------------------------
# k8s.io/kubernetes requires its staging modules at v0.0.0 (replaced by ./staging in its own
# repo); K8S_REPLACES maps each to its published v0.<minor>.<patch>, and K8S_LDFLAGS stamps
# the version the way the Kubernetes build does. Computed once, for every component.
K8S_REPLACES="" K8S_LDFLAGS=""
k8s_module_setup() {
  [[ -z "$K8S_LDFLAGS" ]] || return 0
  local v="$K8S_V" info gomod staging_v replaces mod
  info="$(mod_info "k8s.io/kubernetes@${v}")"
  [[ -f "$info" ]] || die "cannot download k8s.io/kubernetes@${v}"
  gomod="${info%.info}.mod"
  staging_v="v0.${v#v1.}"
  replaces="replace ("
  while read -r mod; do
    replaces+=$'\n\t'"${mod} => ${mod} ${staging_v}"
  done < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "$gomod" | sort -u)
  replaces+=$'\n)'
  [[ "$replaces" == *k8s.io/apiserver* ]] || die "found no staging modules in ${gomod}"

  local major minor rest commit x=""
  rest="${v#v}"; major="${rest%%.*}"; rest="${rest#*.}"; minor="${rest%%.*}"
  commit="$(origin_hash "$info")"
  local -a kv=(
    "gitVersion=${v}" "gitMajor=${major}" "gitMinor=${minor}"
    "gitTreeState=clean" "buildDate=$(mod_time "$info")"
  )
  [[ -z "$commit" ]] || kv+=("gitCommit=${commit}")
  local p
  for p in "${kv[@]}"; do
    x+=" -X k8s.io/component-base/version.${p} -X k8s.io/client-go/pkg/version.${p}"
  done
  K8S_REPLACES="$replaces"
  K8S_LDFLAGS="-s -w${x}"
}

install_k8s() { # component (cmd/<component> of k8s.io/kubernetes)
  current "$1" "$K8S_V" && return 0
  k8s_module_setup
  build_tool "$1" "$K8S_V" k8s.io/kubernetes "k8s.io/kubernetes/cmd/$1" "$K8S_LDFLAGS" "$K8S_REPLACES"
}

# --- pause (the pod sandbox's process) ----------------------------------------------------
# The Kubernetes module ships build/pause/linux/pause.c, the source of registry.k8s.io/pause;
# compiled statically here, since no registry is reachable to pull that image.
install_pause() {
  local v="$K8S_V" json dir src
  current pause "$v" && return 0
  command -v gcc >/dev/null 2>&1 || die "pause: gcc not found (Debian package gcc, with libc6-dev)"
  json="$("$GO" mod download -json "k8s.io/kubernetes@${v}" 2>&1)" ||
    { printf '%s\n' "$json" >&2; die "cannot download k8s.io/kubernetes@${v}"; }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  src="${dir}/build/pause/linux/pause.c"
  [[ -f "$src" ]] || die "pause: ${src} not found in the k8s.io/kubernetes module"
  log "pause ${v}: compiling ${src}"
  gcc -Os -Wall -Werror -static -DVERSION="${v}-keyway" -o "${BIN}/.pause.tmp" "$src" ||
    die "pause: gcc failed"
  mv -f "${BIN}/.pause.tmp" "${BIN}/pause"
  stamp_of "$v" >"${BIN}/.pause.stamp"
  log "pause ${v}: built -> ${BIN}/pause"
}

# --- CoreDNS (the cluster's DNS) --------------------------------------------------------
# CoreDNS's own main (coredns.go) imports every plugin, cloud SDKs included: ~11 minutes on
# two cores. The node needs only those of its Corefile (e2e/src/node/config.rs), so this main
# is CoreDNS's with that plugin list, the way CoreDNS documents custom builds (plugins
# register themselves when imported; the order comes from core/dnsserver either way).
COREDNS_MAIN='package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }'
install_coredns() {
  local v="$COREDNS_V" info sha
  current coredns "$v" && return 0
  info="$(mod_info "github.com/coredns/coredns@${v}")"
  sha="$(origin_hash "$info")"
  build_tool coredns "$v" github.com/coredns/coredns github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${sha:-${v}}" "" "$COREDNS_MAIN"
}

# --- etcd --------------------------------------------------------------------
install_etcd() {
  local v="$ETCD_V" info sha
  current etcd "$v" && return 0
  # server/v3 holds `package main` (server/main.go) in etcd 3.5 and 3.6.
  info="$(mod_info "go.etcd.io/etcd/server/v3@${v}")"
  sha="$(origin_hash "$info")"
  build_tool etcd "$v" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${sha:-unknown}"
}

# --- helm --------------------------------------------------------------------
install_helm() {
  local v="$HELM_V"
  current helm "$v" && return 0
  # helm's Makefile derives these from its k8s.io/client-go (v0.33 -> 1.33).
  local info cg cgmajor cgminor
  info="$(mod_info "helm.sh/helm/v3@${v}")"
  cg="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go[[:space:]]\{1,\}v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p' "${info%.info}.mod" | head -n1)"
  [[ -n "$cg" ]] || die "cannot read k8s.io/client-go version from helm's go.mod"
  read -r cgmajor cgminor <<<"$cg"
  local x=" -X helm.sh/helm/v3/internal/version.version=${v}"
  x+=" -X helm.sh/helm/v3/internal/version.metadata="
  x+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local sha; sha="$(origin_hash "$info")"
  [[ -z "$sha" ]] || x+=" -X helm.sh/helm/v3/internal/version.gitCommit=${sha}"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    x+=" -X ${pkg}.k8sVersionMajor=$((cgmajor + 1)) -X ${pkg}.k8sVersionMinor=${cgminor}"
  done
  build_tool helm "$v" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "-s -w${x}"
}

# --- Debian packages (prometheus + promtool, redis-server, chromium) ----------
# Installed only when a binary is missing. apt-get needs root: without it, a
# missing binary is an error that says what to install.
have_binary() { if [[ "$1" == /* ]]; then [[ -x "$1" ]]; else command -v "$1" >/dev/null 2>&1; fi; }
install_deb() { # package binary... (a name on PATH, or an absolute path)
  local pkg="$1" missing=() b
  shift
  for b in "$@"; do
    have_binary "$b" || missing+=("$b")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "${pkg}: present ($1)"
    return 0
  fi
  if [[ "$(id -u)" != 0 ]]; then
    die "${missing[*]} not found and not root: run 'sudo apt-get install -y --no-install-recommends ${pkg}'"
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "${missing[*]} not found and no apt-get: install the ${pkg} package of your system"
  log "${pkg}: installing the Debian package (missing: ${missing[*]})"
  local logf="${WORK}/apt-${pkg}.log"
  # The lock timeout waits for another apt-get of a concurrent run instead of failing.
  local -a apt=(apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$pkg" >"$logf" 2>&1; then
    log "${pkg}: install failed; refreshing the package lists once"
    { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update &&
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$pkg"; } >>"$logf" 2>&1 || {
      tail -n 20 "$logf" >&2
      die "${pkg}: apt-get install failed (full log: ${logf})"
    }
  fi
  for b in "$@"; do
    have_binary "$b" || die "${pkg} is installed but ${b} is still missing"
  done
  log "${pkg}: installed ($1)"
}

# --- ServiceMonitor / PrometheusRule CRDs ------------------------------------
# From the prometheus-operator Go module (the Go module proxy is the one source
# of upstream files we have); only the two CRDs the chart renders are kept.
install_monitoring_crds() {
  local v="$PROM_OP_V" stamp="${CRDS}/.monitoring-crds.stamp" f
  local -a files=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
  local have=1
  for f in "${files[@]}"; do [[ -s "${CRDS}/${f}" ]] || have=0; done
  if [[ "${KEYWAY_TOOLS_FORCE:-0}" != 1 && $have == 1 && -f "$stamp" &&
        "$(cat "$stamp")" == "$(stamp_of "$v")" ]]; then
    log "monitoring-crds ${v}: up to date (${CRDS})"
    return 0
  fi
  local json dir
  json="$("$GO" mod download -json "github.com/prometheus-operator/prometheus-operator@${v}" 2>&1)" ||
    { printf '%s\n' "$json" >&2; die "cannot download prometheus-operator ${v}"; }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  [[ -d "${dir}/example/prometheus-operator-crd" ]] ||
    die "prometheus-operator ${v}: no example/prometheus-operator-crd in ${dir:-the module}"
  mkdir -p "$CRDS"
  for f in "${files[@]}"; do
    # The module cache is read-only: copy, then make the copy writable for the next update.
    cp -f "${dir}/example/prometheus-operator-crd/${f}" "${CRDS}/.${f}.tmp"
    chmod 0644 "${CRDS}/.${f}.tmp"
    mv -f "${CRDS}/.${f}.tmp" "${CRDS}/${f}"
  done
  stamp_of "$v" >"$stamp"
  log "monitoring-crds ${v}: ${files[*]} -> ${CRDS}"
}

# --- main --------------------------------------------------------------------
node_tools=(kubelet kube-scheduler kube-controller-manager kube-proxy coredns pause
            containerd runc cni-plugins iptables conntrack)
tools=()
for t in "$@"; do
  if [[ "$t" == node ]]; then tools+=("${node_tools[@]}"); else tools+=("$t"); fi
done
[[ ${#tools[@]} -gt 0 ]] ||
  tools=(etcd helm kube-apiserver prometheus redis-server monitoring-crds chromium "${node_tools[@]}")
log "cache ${CACHE} (${gover})"
for t in "${tools[@]}"; do
  case "$t" in
    kube-apiserver | kubelet | kube-scheduler | kube-controller-manager | kube-proxy) install_k8s "$t" ;;
    etcd) install_etcd ;;
    helm) install_helm ;;
    coredns) install_coredns ;;
    pause) install_pause ;;
    prometheus | promtool) install_deb prometheus prometheus promtool ;;
    redis-server | redis) install_deb redis-server redis-server ;;
    containerd) install_deb containerd containerd ctr ;;
    runc) install_deb runc runc ;;
    cni-plugins) install_deb containernetworking-plugins /usr/lib/cni/bridge /usr/lib/cni/host-local \
                   /usr/lib/cni/loopback /usr/lib/cni/portmap ;;
    iptables) install_deb iptables iptables ;;
    conntrack) install_deb conntrack conntrack ;;
    chromium | chromedriver)
      install_deb chromium /usr/bin/chromium
      install_deb chromium-driver /usr/bin/chromedriver ;;
    monitoring-crds) install_monitoring_crds ;;
    *) die "unknown tool '${t}' (see the usage at the top of $0)" ;;
  esac
done
log "done; add to PATH: export PATH=\"${BIN}:\$PATH\""
