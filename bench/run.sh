#!/usr/bin/env bash
# Keyway's benchmark suite (docs/performance.md explains the method and the results).
#
#   bench/run.sh            full run (~12 min of measuring, plus builds the first time): release
#                           build, tools, side by side with direct/nginx/haproxy/keyway/litellm
#                           (json + SSE, 2 rounds of 5 s loads), SSE timing through a paced
#                           upstream, nginx/haproxy/keyway to an HTTPS upstream (HTTP/1.1 and
#                           HTTP/2), micro-benchmarks, control plane; writes
#                           bench/results/<UTC date>.md and prints it
#   bench/run.sh --smoke    ~2 min: debug build, direct/nginx/keyway, 2 s loads, 5 paced
#                           streams, then nginx/haproxy/keyway over TLS (h1) and haproxy/keyway
#                           over TLS (h2); fails on any error, a row that did not reach the
#                           upstream over TLS with the wanted protocol included; report in
#                           $RUN_DIR/smoke/report.md (CI-safe)
#
# Knobs: ROWS (side-by-side rows; drop litellm to skip its heavy install), TTFB_ROWS, TLS_ROWS
# (rows of the TLS parts, any of nginx haproxy keyway; nginx is left out of tls-h2), ROUNDS,
# DURATION, WARMUP, TTFB_N, QUIET_WAIT (see harness.py), PARTS (any of: side ttfb tls micro cp;
# tls = tls-h1 tls-h2, either alone also works), MICRO_ARGS (criterion flags), OUT, RUN_DIR,
# KEYWAY_BIN (skip the build, use this proxy binary). Load goes to 127.0.0.1 only; every
# process the run starts is stopped by PID when it ends.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/keyway/target}
export RUN_DIR=${RUN_DIR:-/tmp/keyway-bench-run}
export VENV=${VENV:-$HOME/.cache/keyway/bench-venv}
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
STAMP=$(date -u +%Y-%m-%dT%H%MZ)

if [ "$SMOKE" = 1 ]; then
    ROWS=${ROWS:-direct nginx keyway}
    TTFB_ROWS=${TTFB_ROWS:-direct keyway}
    TLS_ROWS=${TLS_ROWS:-nginx haproxy keyway}
    PARTS=${PARTS:-side ttfb tls}
    OUT=${OUT:-$RUN_DIR/smoke}
    REPORT=$OUT/report.md
    export ROUNDS=1 DURATION=${DURATION:-2} WARMUP=0 LOADS=2:16,1:8 IDLE_S=1 QUIET_WAIT=0 TTFB_N=5 STRICT=1
else
    ROWS=${ROWS:-direct nginx haproxy keyway litellm}
    TTFB_ROWS=${TTFB_ROWS:-}
    TLS_ROWS=${TLS_ROWS:-nginx haproxy keyway}
    PARTS=${PARTS:-side ttfb tls micro cp}
    OUT=${OUT:-$RUN_DIR/$STAMP}
    REPORT=${REPORT:-$BENCH_DIR/results/$STAMP.md}
    export ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-5} WARMUP=${WARMUP:-1} TTFB_N=${TTFB_N:-20}
fi
rm -rf "$OUT" && mkdir -p "$OUT" "$(dirname "$REPORT")"
log() { echo "$(date +%H:%M:%S) == $*"; }

# --- tools -----------------------------------------------------------------------------------
case " $ROWS ${TTFB_ROWS:-} " in *" litellm "*) WANT_LITELLM=1 ;; *) WANT_LITELLM=0 ;; esac
log "tools"
"$BENCH_DIR/install.sh"
if [ "$WANT_LITELLM" = 1 ] && ! LITELLM=1 timeout "${LITELLM_INSTALL_TIMEOUT:-600}" "$BENCH_DIR/install.sh"; then
    echo "LiteLLM could not be installed: its rows are skipped" | tee "$OUT/litellm-skipped.txt"
fi
if [ ! -x "$VENV/bin/litellm" ]; then
    ROWS=$(echo " $ROWS " | sed 's/ litellm / /g'); TTFB_ROWS=$(echo " ${TTFB_ROWS:-} " | sed 's/ litellm / /g')
fi
if [ -z "${TTFB_ROWS// }" ]; then
    TTFB_ROWS="direct nginx haproxy_nd keyway"
    [ -x "$VENV/bin/litellm" ] && case " $ROWS " in *" litellm "*) TTFB_ROWS="$TTFB_ROWS litellm" ;; esac
fi

# --- Keyway ------------------------------------------------------------------------------------
if [ -z "${KEYWAY_BIN:-}" ]; then
    if [ "$SMOKE" = 1 ]; then
        log "debug build of keyway-proxy"
        (cd "$ROOT" && cargo build -q -p keyway-proxy --locked)
        KEYWAY_BIN=$CARGO_TARGET_DIR/debug/keyway-proxy
    else
        log "release build of keyway-proxy"
        (cd "$ROOT" && cargo build -q --release -p keyway-proxy --locked)
        KEYWAY_BIN=$CARGO_TARGET_DIR/release/keyway-proxy
    fi
fi
export KEYWAY_BIN
"$KEYWAY_BIN" check --config "$BENCH_DIR/conf/keyway.yaml"

# --- side by side ------------------------------------------------------------------------------
case " $PARTS " in *" side "*)
    log "side by side: $ROWS (rounds=$ROUNDS, ${DURATION}s per load)"
    OUT=$OUT ROWS="$ROWS" UPSTREAM=nginx SCENARIOS=json,stream python3 "$BENCH_DIR/harness.py" ;;
esac
case " $PARTS " in *" ttfb "*)
    log "streaming through the paced upstream: $TTFB_ROWS"
    OUT=$OUT ROWS="$TTFB_ROWS" UPSTREAM=paced SCENARIOS=ttfb CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-20} \
        IDLE_S=${TTFB_IDLE_S:-1} WARMUP=0 python3 "$BENCH_DIR/harness.py" ;;
esac
# The same load, the proxies reaching the upstream over HTTPS (private CA, made afresh per run in
# $RUN_DIR/tls): tls-h1 = ALPN http/1.1 only, tls-h2 = ALPN h2 (nginx cannot: proxy_pass is
# HTTP/1.x only). Client to proxy stays plain HTTP/1.1.
case " $PARTS " in *" tls "* | *" tls-h1 "* | *" tls-h2 "*) rm -rf "$RUN_DIR/tls" ;; esac
case " $PARTS " in *" tls "* | *" tls-h1 "*)
    log "side by side over TLS, HTTP/1.1 upstream: $TLS_ROWS"
    OUT=$OUT ROWS="$TLS_ROWS" UPSTREAM=nginx UPSTREAM_TLS=h1 SCENARIOS=json,stream \
        python3 "$BENCH_DIR/harness.py" ;;
esac
case " $PARTS " in *" tls "* | *" tls-h2 "*)
    H2_ROWS=$(echo " $TLS_ROWS " | sed 's/ nginx / /g')
    log "side by side over TLS, HTTP/2 upstream: $H2_ROWS (nginx: no HTTP/2 to upstreams)"
    OUT=$OUT ROWS="$H2_ROWS" UPSTREAM=nginx UPSTREAM_TLS=h2 SCENARIOS=json,stream \
        python3 "$BENCH_DIR/harness.py" ;;
esac

# --- micro-benchmarks and control plane -------------------------------------------------------
CRIT=()
case " $PARTS " in *" micro "*)
    log "micro-benchmarks (criterion: ${MICRO_ARGS:=--warm-up-time 0.3 --measurement-time 1})"
    # shellcheck disable=SC2086
    (cd "$ROOT" && cargo bench -q -p keyway-proxy --locked --bench keys --bench balance --bench routing \
        --bench usage -- $MICRO_ARGS) 2>&1 | tee "$OUT/micro.txt" | grep -E "^[a-z_]+/|time:|thrpt:" || true
    CRIT=(--criterion "$CARGO_TARGET_DIR/criterion") ;;
esac
CP=()
case " $PARTS " in *" cp "*)
    log "control plane"
    (cd "$ROOT" && CP_OUT=$OUT/control_plane.json cargo bench -q -p keyway-testkit --locked \
        --bench control_plane) 2>&1 | tee "$OUT/control_plane.txt"
    CP=(--control-plane "$OUT/control_plane.json") ;;
esac

log "report: $REPORT"
python3 "$BENCH_DIR/report.py" "$OUT" -o "$REPORT" "${CRIT[@]}" "${CP[@]}"
