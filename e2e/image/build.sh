#!/usr/bin/env bash
# Builds the images the real-node e2e tests run, from binaries built on this machine, with no
# container engine and no registry (oci-archive.sh writes each as an OCI archive):
#
#   build.sh OUT_DIR BIN_DIR [TOOLS_BIN_DIR]
#
#   keyway.tar        docker.io/library/keyway:${KEYWAY_IMAGE_TAG:-dev}
#                     keyway-proxy + keyway-controller, the same layout as the Dockerfile's
#                     runtime image (KEYWAY_* constants below; a test checks the Dockerfile
#                     against them): /usr/local/bin, user 65532:65532, entrypoint keyway-proxy,
#                     glibc and libgcc from this machine in place of distroless/cc-debian12,
#                     CA certificates, /etc/passwd with root, nobody and nonroot.
#   mock-upstream.tar keyway.local/mock-upstream:dev   (keyway-testkit's keyway-mock-upstream)
#   app-client.tar    keyway.local/app-client:dev      (keyway-testkit's keyway-app-client)
#   coredns.tar       keyway.local/coredns:dev         (TOOLS_BIN_DIR/coredns, static)
#   pause.tar         keyway.local/pause:dev           (TOOLS_BIN_DIR/pause, static)
#
# BIN_DIR holds the Rust binaries (target/debug or target/release); TOOLS_BIN_DIR the tools
# of e2e/tools/install.sh (default ${KEYWAY_CACHE:-~/.cache/keyway}/bin); without it only
# keyway.tar is built, which is what a user without a registry needs:
#
#   cargo build --release -p keyway-controller -p keyway-proxy
#   e2e/image/build.sh /tmp/img target/release
#   ctr -n k8s.io images import /tmp/img/keyway.tar    # then: helm install ... --set image.tag=dev
#
# Binaries are copied without their debug information (objcopy --strip-debug), which is most
# of a debug build's size. Must run as root (the files' owners are set in the image).
set -euo pipefail

# The image layout, shared with the Dockerfile's runtime stage.
KEYWAY_BIN_DIR=/usr/local/bin
KEYWAY_USER=65532:65532
KEYWAY_ENTRYPOINT=/usr/local/bin/keyway-proxy
KEYWAY_BINARIES=(keyway-controller keyway-proxy)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUT_DIR BIN_DIR [TOOLS_BIN_DIR]}"
bin="${2:?usage: build.sh OUT_DIR BIN_DIR [TOOLS_BIN_DIR]}"
tools="${3:-}"
tag="${KEYWAY_IMAGE_TAG:-dev}"
mkdir -p "$out"
stage="$(mktemp -d "${out}/stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

log() { printf '[keyway-image] %s\n' "$*" >&2; }

# The base every dynamically linked image shares: the distroless/cc-debian12:nonroot layout.
base_rootfs() { # dir
  local root="$1"
  mkdir -p "${root}/etc/ssl/certs" "${root}/tmp" "${root}/home/nonroot" "${root}${KEYWAY_BIN_DIR}"
  chmod 1777 "${root}/tmp"
  chown 65532:65532 "${root}/home/nonroot"
  cat >"${root}/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
  cat >"${root}/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
  printf 'hosts: files dns\n' >"${root}/etc/nsswitch.conf"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "${root}/etc/ssl/certs/"
  fi
}

# Copies a binary without debug information, and the shared libraries it loads (ldd), at
# the same paths.
add_binary() { # rootfs source dest
  local root="$1" src="$2" dest="$3" lib
  [[ -x "$src" ]] || { log "error: ${src} not found (build it first)"; exit 66; }
  mkdir -p "${root}$(dirname "$dest")"
  objcopy --strip-debug "$src" "${root}${dest}"
  while read -r lib; do
    [[ -n "$lib" && -e "${root}${lib}" ]] && continue
    mkdir -p "${root}$(dirname "$lib")"
    cp -L "$lib" "${root}${lib}"
  done < <(ldd "$src" 2>/dev/null | grep -oE '/[^[:space:]]+' | sort -u)
}

image() { # file name user entrypoint-json rootfs
  local file="$1" name="$2" user="$3" entry="$4" root="$5" digest
  digest="$("${here}/oci-archive.sh" "${out}/${file}" "$name" "$root" "$user" "$entry" \
    "org.opencontainers.image.title=${name%%:*}")"
  log "${name}: ${out}/${file} (${digest}, $(du -m "${out}/${file}" | cut -f1) MB)"
}

start=$SECONDS

root="${stage}/keyway"
base_rootfs "$root"
for b in "${KEYWAY_BINARIES[@]}"; do add_binary "$root" "${bin}/${b}" "${KEYWAY_BIN_DIR}/${b}"; done
image keyway.tar "docker.io/library/keyway:${tag}" "$KEYWAY_USER" "[\"${KEYWAY_ENTRYPOINT}\"]" "$root"

if [[ -n "$tools" ]]; then
  for t in mock-upstream app-client; do
    root="${stage}/${t}"
    base_rootfs "$root"
    add_binary "$root" "${bin}/keyway-${t}" "${KEYWAY_BIN_DIR}/keyway-${t}"
    image "${t}.tar" "keyway.local/${t}:dev" "$KEYWAY_USER" "[\"${KEYWAY_BIN_DIR}/keyway-${t}\"]" "$root"
  done
  root="${stage}/coredns"
  base_rootfs "$root"
  add_binary "$root" "${tools}/coredns" /coredns
  image coredns.tar keyway.local/coredns:dev "$KEYWAY_USER" '["/coredns"]' "$root"
  # registry.k8s.io/pause runs as 65535 with nothing but the binary.
  root="${stage}/pause"
  mkdir -p "$root"
  add_binary "$root" "${tools}/pause" /pause
  image pause.tar keyway.local/pause:dev 65535:65535 '["/pause"]' "$root"
fi
log "built in $((SECONDS - start))s"
