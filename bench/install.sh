#!/usr/bin/env bash
# Installs the benchmark's tools, idempotently (each step is skipped when already done):
#   wrk, nginx, haproxy   Debian packages (apt-get; needs root)
#   LiteLLM proxy         PyPI, in its own venv ($VENV), only with LITELLM=1 (heavy: ~1 GiB)
# The paced SSE upstream and the harness need only python3's standard library.
set -euo pipefail
VENV=${VENV:-$HOME/.cache/keyway/bench-venv}
missing=()
for t in wrk nginx haproxy; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk nginx-light haproxy procps >/dev/null
fi
# The packages may start system services on :80; we never use them, and stop only those.
if [ ${#missing[@]} -gt 0 ] && command -v service >/dev/null; then
    service nginx stop >/dev/null 2>&1 || true
    service haproxy stop >/dev/null 2>&1 || true
fi
if [ "${LITELLM:-0}" = 1 ] && [ ! -x "$VENV/bin/litellm" ]; then
    echo "installing LiteLLM into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'litellm[proxy]'
fi
exit 0
