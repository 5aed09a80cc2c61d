#!/usr/bin/env bash
# Removes everything the e2e node creates on this machine (see guard.sh, which runs this under
# the node lock, before a node starts and after it stopped):
#
#   cleanup.sh STATE_DIR
#
# - processes started with a path under STATE_DIR/run/ (containerd's shims, which leave the
#   harness's process groups), and every process in the node's cgroups (`keyway-node`);
# - mounts under STATE_DIR/run/ (volumes, container root filesystems, network namespaces);
# - iptables and ip6tables rules and chains named KUBE-*, CNI-* and KEYWAY-* (kube-proxy,
#   the kubelet, the CNI plugins, the harness's egress guard);
# - the CNI bridge `keyway0`;
# - sysctls the node changed, restored from STATE_DIR/sysctl.saved;
# - STATE_DIR/run itself.
# Idempotent; it reports what it removed on stderr and never fails the caller.
set -uo pipefail
state="${1:?usage: cleanup.sh STATE_DIR}"
run="${state}/run"
note() { printf '[keyway-node cleanup] %s\n' "$*" >&2; }

# --- processes ------------------------------------------------------------------------------
for p in /proc/[0-9]*; do
  pid="${p#/proc/}"
  [[ "$pid" == "$$" ]] && continue
  cmd="$(tr '\0' ' ' 2>/dev/null <"${p}/cmdline")" || continue
  if [[ "$cmd" == *"${run}/"* ]]; then
    note "killing ${pid}: ${cmd:0:120}"
    kill -KILL "$pid" 2>/dev/null
  fi
done
mapfile -t groups < <(find /sys/fs/cgroup -maxdepth 2 -type d -name keyway-node 2>/dev/null)
for round in 1 2 3 4 5 6 7 8 9 10; do
  left=0
  for g in "${groups[@]}"; do
    while read -r pid; do
      [[ -n "$pid" ]] || continue
      left=1
      kill -KILL "$pid" 2>/dev/null
    done < <(find "$g" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  [[ $left == 1 ]] || break
  [[ $round == 1 ]] && note "killed the processes in the keyway-node cgroups"
  sleep 0.2
done
for g in "${groups[@]}"; do
  find "$g" -depth -type d -exec rmdir {} + 2>/dev/null
done

# --- mounts ---------------------------------------------------------------------------------
mapfile -t mounts < <(awk -v p="${run}/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo |
  awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
for m in "${mounts[@]}"; do
  umount -l "$m" 2>/dev/null && note "unmounted ${m}"
done

# --- iptables -------------------------------------------------------------------------------
ours='(KUBE|CNI|KEYWAY)-'
for cmd in iptables ip6tables; do
  command -v "$cmd" >/dev/null 2>&1 || continue
  for table in filter nat mangle raw; do
    dump="$("${cmd}-save" -t "$table" 2>/dev/null)" || continue
    # Rules of the built-in chains that jump to one of ours, then our chains themselves.
    while read -r rule; do
      eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null
    done < <(grep -E "^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j ${ours}" <<<"$dump")
    mapfile -t chains < <(sed -n -E "s/^:(${ours}[^ ]*) .*/\\1/p" <<<"$dump")
    [[ ${#chains[@]} -gt 0 ]] || continue
    for c in "${chains[@]}"; do "$cmd" -w -t "$table" -F "$c" 2>/dev/null; done
    for c in "${chains[@]}"; do "$cmd" -w -t "$table" -X "$c" 2>/dev/null; done
    note "${cmd} ${table}: removed ${#chains[@]} chains"
  done
done

# --- files outside STATE_DIR -----------------------------------------------------------------
# containerd 1.6 puts its shims' sockets in /run/containerd/s whatever its state dir; the ones
# no process listens on any more (ours, killed above) go. A system containerd's live shims
# keep theirs.
if [[ -d /run/containerd/s ]] && command -v ss >/dev/null 2>&1; then
  listening="$(ss -xlnH 2>/dev/null)"
  for sock in /run/containerd/s/*; do
    [[ -S "$sock" && "$listening" != *"$sock"* ]] && rm -f "$sock"
  done
fi
# The kubelet links every container's log from /var/log/containers (a fixed path).
for link in /var/log/containers/*.log; do
  [[ -L "$link" && "$(readlink "$link")" == "${run}/"* ]] && rm -f "$link"
done

# --- network --------------------------------------------------------------------------------
if ip link show keyway0 >/dev/null 2>&1; then
  ip link del keyway0 && note "deleted the bridge keyway0"
fi

# --- sysctls --------------------------------------------------------------------------------
if [[ -f "${state}/sysctl.saved" ]]; then
  while read -r key value; do
    [[ -n "$key" ]] && sysctl -q -w "${key}=${value}" >/dev/null 2>&1
  done <"${state}/sysctl.saved"
  rm -f "${state}/sysctl.saved"
  note "restored the sysctls"
fi

# --- files ----------------------------------------------------------------------------------
if [[ -e "$run" ]]; then
  rm -rf --one-file-system "$run" 2>/dev/null || { sleep 1; rm -rf --one-file-system "$run"; }
  note "removed ${run}"
fi
exit 0
