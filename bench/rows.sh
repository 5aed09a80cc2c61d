# rows.sh -- one function per benchmark row (sourced by harness.py via bash).
#
# Contract for a row NAME:
#   ROW_PORT[NAME]=<port>          port the proxy listens on (127.0.0.1)
#   ROW_AUTH[NAME]=<header value>  optional client Authorization (default: CLIENT_KEY below)
#   ROW_METRICS[NAME]=<url>        optional Prometheus endpoint, scraped after the load
#   row_NAME                       `exec`s the proxy in the FOREGROUND, so the process the
#                                  harness started is the proxy and its CPU/RSS can be read
#                                  from /proc (children such as nginx workers are included).
#                                  Rows with no process (direct) just `exit 0`.
# The fake upstream listens on 127.0.0.1:18000 and :18001 and 401s any request whose
# Authorization is not "Bearer sk-upstream-*", so a proxy has to replace the client key with
# a pool key. It serves POST /v1/chat/completions (JSON; SSE with header X-Fake-Stream: 1)
# and POST /sse/v1/chat/completions (SSE). The proxy is started with cwd = $RUN_DIR/<NAME>.
#
# With UPSTREAM_TLS=h1 or h2 (the `tls` part of run.sh) the rows nginx, haproxy and keyway
# proxy to the same fake upstream over HTTPS instead, trusting the private CA in $RUN_DIR/tls
# (gen_upstream_conf.py --tls): h1 = ports 18443/18444 (ALPN http/1.1 only), h2 = ports
# 18445/18446 (ALPN h2; HTTP/1.1 requests get 426). Client to proxy stays plain HTTP/1.1.
# nginx has no h2 row: proxy_pass speaks HTTP/1.x only.

BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
RUN_DIR=${RUN_DIR:-/tmp/keyway-bench-run}
VENV=${VENV:-$HOME/.cache/keyway/bench-venv}
KEYWAY_BIN=${KEYWAY_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/keyway/target}/release/keyway-proxy}
CLIENT_KEY="sk-bench-client-0123456789abcdef0123456789abcdef"

declare -A ROW_PORT ROW_AUTH ROW_METRICS
TLS_DIR=$RUN_DIR/tls

# A proxy config for the TLS upstream, to stdout: fills @TLS_DIR@ @PORT0@ @PORT1@ @ALPN@ of a
# template, and turns the plain endpoints of conf/keyway.yaml into the TLS ones.
_tls_conf() {
    local p0 p1 alpn
    case "${UPSTREAM_TLS:-}" in
    h1) p0=18443 p1=18444 alpn=http/1.1 ;;
    h2) p0=18445 p1=18446 alpn=h2 ;;
    *) echo "UPSTREAM_TLS=${UPSTREAM_TLS:-} (want h1 or h2)" >&2; exit 2 ;;
    esac
    sed -e "s#@TLS_DIR@#$TLS_DIR#g" -e "s#@PORT0@#$p0#g" -e "s#@PORT1@#$p1#g" -e "s#@ALPN@#$alpn#g" \
        -e "s#\"http://127.0.0.1:18000\"#\"https://127.0.0.1:$p0\"#" \
        -e "s#\"http://127.0.0.1:18001\"#\"https://127.0.0.1:$p1\"#" "$1"
}
# Rows without a TLS variant refuse to start under UPSTREAM_TLS.
_plain_only() {
    if [ -n "${UPSTREAM_TLS:-}" ]; then
        echo "row $1 has no TLS-upstream variant (UPSTREAM_TLS=$UPSTREAM_TLS)" >&2; exit 2
    fi
}

# --- the fake upstream (not a row; started once per harness run) -----------------------
# UPSTREAM=nginx (default): fixed bodies from nginx, 1 worker -- for throughput.
# UPSTREAM=paced: python asyncio, SSE events CHUNK_DELAY_MS apart, each stamped with its
#                 send time -- for the low-concurrency `ttfb` scenario only (it is slow).
upstream() {
    case "${UPSTREAM:-nginx}" in
    nginx) exec nginx -p "$RUN_DIR/upstream/" -c "$RUN_DIR/upstream-nginx.conf" \
               -e "$RUN_DIR/upstream/error.log" -g 'daemon off;' ;;
    paced) exec python3 "$BENCH_DIR/paced_upstream.py" 18000 18001 ;;
    *) echo "unknown UPSTREAM=$UPSTREAM" >&2; exit 2 ;;
    esac
}

# --- direct to the upstream: the physical limit ----------------------------------------
ROW_PORT[direct]=18000
ROW_AUTH[direct]="Bearer sk-upstream-direct"
row_direct() { _plain_only direct; exit 0; }

# --- Keyway: standalone manifest (conf/keyway.yaml): 8-key pool, key injection into
#     Authorization, round robin over the two upstream ports; metrics always on ----------
ROW_PORT[keyway]=18090
ROW_METRICS[keyway]="http://127.0.0.1:18091/metrics"
row_keyway() {
    local cfg=$BENCH_DIR/conf/keyway.yaml tls=()
    if [ -n "${UPSTREAM_TLS:-}" ]; then   # same manifest, https:// endpoints, the private CA
        _tls_conf "$cfg" >keyway.yaml
        grep -q '"https://127.0.0.1:' keyway.yaml || { echo "no https endpoint in keyway.yaml" >&2; exit 2; }
        cfg=$PWD/keyway.yaml tls=(--upstream-ca "$TLS_DIR/ca.pem")
    fi
    exec "$KEYWAY_BIN" --config "$cfg" "${tls[@]}" \
        --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:18091
}

# --- nginx reverse proxy -----------------------------------------------------------------
ROW_PORT[nginx]=18080
row_nginx() {
    local conf=$BENCH_DIR/conf/nginx-proxy.conf
    case "${UPSTREAM_TLS:-}" in
    h1) _tls_conf "$BENCH_DIR/conf/nginx-proxy-tls.conf" >nginx.conf; conf=$PWD/nginx.conf ;;
    h2) echo "nginx cannot proxy to an HTTP/2 upstream (proxy_pass speaks HTTP/1.x only)" >&2; exit 2 ;;
    esac
    exec nginx -p "$PWD/" -c "$conf" -e "$PWD/error.log" -g 'daemon off;'
}

# --- haproxy -------------------------------------------------------------------------------
ROW_PORT[haproxy]=18081
row_haproxy() {
    local conf=$BENCH_DIR/conf/haproxy.cfg
    if [ -n "${UPSTREAM_TLS:-}" ]; then
        _tls_conf "$BENCH_DIR/conf/haproxy-tls.cfg" >haproxy.cfg; conf=$PWD/haproxy.cfg
    fi
    exec haproxy -db -f "$conf"
}

# --- haproxy + "option http-no-delay" (without it HAProxy sends with MSG_MORE and the
#     kernel holds small SSE chunks up to 200 ms) ---------------------------------------------
ROW_PORT[haproxy_nd]=18082
row_haproxy_nd() {
    _plain_only haproxy_nd
    exec haproxy -db -f "$BENCH_DIR/conf/haproxy-nodelay.cfg"
}

# --- LiteLLM proxy (1 worker, its default) ---------------------------------------------------
_litellm_env() {
    export LITELLM_MASTER_KEY="$CLIENT_KEY"
    export LITELLM_TELEMETRY=False           # no telemetry
    export LITELLM_LOCAL_MODEL_COST_MAP=True # don't fetch the price map
    export LITELLM_LOG=ERROR                 # also turns off uvicorn's access log
    unset DATABASE_URL
}
ROW_PORT[litellm]=4000
row_litellm() {
    _plain_only litellm
    _litellm_env
    exec "$VENV/bin/litellm" --config "$BENCH_DIR/conf/litellm.yaml" \
        --host 127.0.0.1 --port 4000
}
