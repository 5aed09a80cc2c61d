#!/usr/bin/env bash
# The e2e node's guard: one real node per machine at a time, and nothing of it left behind.
#
#   guard.sh LOCK_FILE STATE_DIR
#
# The node's parts are machine-wide (the containerd socket, the kubelet's ports, the CNI
# bridge, iptables chains, sysctls), so a test process that wants a node starts this first:
#
# 1. It takes an exclusive flock on LOCK_FILE, waiting while another run holds it, and keeps
#    it until it exits.
# 2. It cleans up whatever a run that died left behind (cleanup.sh), then prints "ready".
# 3. It waits for EOF on stdin: the test process holds the only write end, so EOF means that
#    process has exited, however it ended. The node's daemons run in this script's process
#    group; it then re-execs itself into a new session (so it is not its own victim), kills
#    that group, runs cleanup.sh again and only then releases the lock.
#
# INT, HUP and TERM are ignored, like the harness's reaper: Ctrl-C on `cargo test` stops the
# test process, which is what triggers the cleanup.
set -uo pipefail
trap '' INT HUP TERM
lock="$1" state="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec 9>"$lock"
if ! flock -n 9; then
  echo "waiting"
  flock 9
fi
"${here}/cleanup.sh" "$state" >&2
echo "ready"
cat >/dev/null
exec setsid bash -c 'kill -KILL -- "-$1" 2>/dev/null; sleep 0.2; "$2/cleanup.sh" "$3"' \
  keyway-node-guard "$$" "$here" "$state" >/dev/null 2>&1 </dev/null
