#!/usr/bin/env bash
# Writes an OCI image archive (an OCI image layout in a tar, as `ctr images import` and
# `skopeo copy oci-archive:` read it) from files on this machine, with no container engine
# and no registry:
#
#   oci-archive.sh OUT.tar NAME:TAG ROOTFS_DIR USER ENTRYPOINT_JSON [LABEL=VALUE ...]
#
# ROOTFS_DIR is the image's whole filesystem (one layer). The layer is reproducible: sorted
# entries, mtime 0, numeric owner 0:0 except what the tree already says (the caller chowns
# what must belong to the image's user), gzip without a name or time stamp; so the same
# inputs give the same digests, and an importer that already has them skips the work.
# USER is "uid:gid"; ENTRYPOINT_JSON a JSON array, e.g. '["/usr/local/bin/keyway-proxy"]'.
# The image's name is recorded for containerd (io.containerd.image.name) and for OCI tools
# (org.opencontainers.image.ref.name).
set -euo pipefail

[[ $# -ge 5 ]] || { echo "usage: $0 OUT.tar NAME:TAG ROOTFS_DIR USER ENTRYPOINT_JSON [LABEL=VALUE ...]" >&2; exit 64; }
out="$1" name="$2" rootfs="$3" user="$4" entrypoint="$5"
shift 5
[[ -d "$rootfs" ]] || { echo "$0: ${rootfs}: not a directory" >&2; exit 66; }

work="$(mktemp -d "${out}.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
blobs="${work}/blobs/sha256"
mkdir -p "$blobs"

# Stores stdin as a blob; prints "<sha256> <size>".
put_blob() {
  local tmp="${work}/blob.tmp" sum size
  cat >"$tmp"
  sum="$(sha256sum "$tmp" | cut -d' ' -f1)"
  size="$(stat -c %s "$tmp")"
  mv -f "$tmp" "${blobs}/${sum}"
  printf '%s %s\n' "$sum" "$size"
}

json_str() { # a JSON string literal (the inputs here are paths, names and labels)
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

# --- the layer ----------------------------------------------------------------------------
tar --sort=name --mtime=@0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "${work}/layer.tar" .
diff_id="$(sha256sum "${work}/layer.tar" | cut -d' ' -f1)"
read -r layer_sum layer_size < <(gzip -n -6 <"${work}/layer.tar" | put_blob)
rm -f "${work}/layer.tar"

# --- config -------------------------------------------------------------------------------
labels=""
for kv in "$@"; do
  [[ "$kv" == *=* ]] || { echo "$0: label '${kv}' is not KEY=VALUE" >&2; exit 64; }
  labels+="${labels:+,}$(json_str "${kv%%=*}"):$(json_str "${kv#*=}")"
done
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"User\":$(json_str "$user"),"
config+="\"Entrypoint\":${entrypoint},\"Env\":[\"PATH=/usr/local/bin:/usr/bin:/bin\","
config+="\"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\"],\"WorkingDir\":\"/\","
config+="\"Labels\":{${labels}}},"
config+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:${diff_id}\"]},"
config+="\"history\":[{\"created_by\":\"e2e/image/oci-archive.sh\"}]}"
read -r config_sum config_size < <(printf '%s' "$config" | put_blob)

# --- manifest, index ----------------------------------------------------------------------
manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
manifest+="\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:${config_sum}\",\"size\":${config_size}},"
manifest+="\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:${layer_sum}\",\"size\":${layer_size}}]}"
read -r manifest_sum manifest_size < <(printf '%s' "$manifest" | put_blob)

tag="${name##*:}"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}' \
  "$manifest_sum" "$manifest_size" "$(json_str "$name")" "$(json_str "$tag")" >"${work}/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"${work}/oci-layout"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" \
    -cf "${out}.tmp" oci-layout index.json blobs
mv -f "${out}.tmp" "$out"
echo "sha256:${manifest_sum}"
