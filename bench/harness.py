#!/usr/bin/env python3
"""Side-by-side harness: the same load against every row of rows.sh (run it via run.sh).

Env knobs (all optional):
  ROWS        rows to measure, in order (reversed on even rounds)    [direct nginx haproxy keyway]
  ROUNDS      interleaved rounds                                      [2]
  DURATION    seconds per wrk run                                     [8]
  WARMUP      seconds of unmeasured wrk per scenario after start      [2]
  LOADS       wrk threads:connections list                            [2:64,1:8]
  SCENARIOS   json,stream (wrk) and/or ttfb (sequential streaming client
              with per-event timing; use with UPSTREAM=paced)          [json,stream]
  UPSTREAM    nginx | paced (see rows.sh)                             [nginx]
  UPSTREAM_TLS  h1 | h2: the proxies reach the nginx upstream over HTTPS
              (private CA), ALPN http/1.1 only or h2; rows nginx (h1
              only), haproxy, keyway. The sanity check then requires
              every response to say it came over TLS with that protocol []
  TTFB_N      requests per ttfb run                                   [30]
  IDLE_S      seconds of idle CPU measured after start                [5]
  OUT         result dir (raw.jsonl, rows.jsonl, wrk.log, env*.json)  [required]
  RUN_DIR     scratch dir for logs and temp files                     [/tmp/keyway-bench-run]
  QUIET_WAIT  before each run, wait up to this many s for the machine
              (everything but our idle processes) to be quiet          [20]
  QUIET_CORES busy cores counted as quiet                             [0.25]
  STRICT      1: exit 1 if a row failed or any request failed         [0]

Only 127.0.0.1 is ever contacted. Every process started here is stopped (by PID, TERM then
KILL for its process tree) before exit, also on Ctrl-C.
"""
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS_SH = os.path.join(HERE, "rows.sh")
LUA = os.path.join(HERE, "wrk", "post.lua")
CLK = os.sysconf("SC_CLK_TCK")
PATH = "/v1/chat/completions"

ROWS = os.environ.get("ROWS", "direct nginx haproxy keyway").split()
ROUNDS = int(os.environ.get("ROUNDS", "2"))
DURATION = int(os.environ.get("DURATION", "8"))
WARMUP = int(os.environ.get("WARMUP", "2"))
LOADS = [tuple(int(x) for x in l.split(":")) for l in os.environ.get("LOADS", "2:64,1:8").split(",")]
SCENARIOS = os.environ.get("SCENARIOS", "json,stream").split(",")
UPSTREAM = os.environ.get("UPSTREAM", "nginx")
UPSTREAM_TLS = os.environ.get("UPSTREAM_TLS", "")
TLS_PORTS = {"h1": [18443, 18444], "h2": [18445, 18446]}  # gen_upstream_conf.py
TLS_PROTO = {"h1": "HTTP/1.1", "h2": "HTTP/2.0"}           # nginx's $server_protocol
RUN_DIR = os.environ.get("RUN_DIR", "/tmp/keyway-bench-run")
TTFB_N = int(os.environ.get("TTFB_N", "30"))
IDLE_S = float(os.environ.get("IDLE_S", "5"))
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "20"))
QUIET_CORES = float(os.environ.get("QUIET_CORES", "0.25"))
STRICT = os.environ.get("STRICT") == "1"
OUT = os.environ.get("OUT") or sys.exit("set OUT")

started = []  # Popen objects we own
failures = []


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- /proc utils
def proc_children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    if pid is None:
        return []
    kids = proc_children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """utime+stime+cutime+cstime summed over pids."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fl = s[s.rindex(")") + 2:].split()
        t += int(fl[11]) + int(fl[12]) + int(fl[13]) + int(fl[14])
    return t


def mem_kb(pids):
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def sys_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, irq + softirq


def wait_quiet():
    """Our processes are idle here, so machine busy ~= other people's load. Wait (bounded)
    for it to drop; return (busy cores in the last 1 s sample, s waited)."""
    t0 = time.time()
    while True:
        b0, _, _ = sys_cpu()
        time.sleep(1 if QUIET_WAIT > 0 else 0.2)
        b1, _, _ = sys_cpu()
        busy = (b1 - b0) / CLK / (1 if QUIET_WAIT > 0 else 0.2)
        if busy <= QUIET_CORES or time.time() - t0 >= QUIET_WAIT:
            return busy, max(0.0, time.time() - t0 - 1)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# ---------------------------------------------------------------- processes
def row_meta(name):
    out = subprocess.run(
        ["bash", "-c", f'source "{ROWS_SH}"; declare -F row_{name} >/dev/null || exit 3; '
                       f'echo "${{ROW_PORT[{name}]}}"; echo "${{ROW_AUTH[{name}]:-Bearer $CLIENT_KEY}}"; '
                       f'echo "${{ROW_METRICS[{name}]:-}}"'],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"row '{name}' not defined in rows.sh")
    port, auth, metrics = (out.stdout.splitlines() + ["", "", ""])[:3]
    return int(port), auth, metrics


def start(fn, name):
    wd = os.path.join(RUN_DIR, name)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    logf = open(os.path.join(RUN_DIR, f"{name}.log"), "ab")
    p = subprocess.Popen(["bash", "-c", f'source "{ROWS_SH}"; {fn}'], cwd=wd, stdout=logf,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                         env=dict(os.environ, BENCH_DIR=HERE, RUN_DIR=RUN_DIR))
    started.append(p)
    return p


def stop(p, timeout=15):
    if p is None or p.poll() is not None:
        if p in started:
            started.remove(p)
        return
    pids = tree(p.pid)
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    for q in pids + tree(p.pid):
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if p in started:
        started.remove(p)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port, proc=None, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited rc={proc.returncode} before port {port} opened")
        if port_open(port):
            return time.time() - t0
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def post(port, auth, stream):
    body = {"model": "fake-gpt-stream" if stream else "fake-gpt",
            "messages": [{"role": "user", "content": "Say hello in twenty tokens."}], "max_tokens": 20}
    if stream:
        body["stream"] = True
    hdr = {"Content-Type": "application/json", "Authorization": auth}
    if stream:
        hdr["X-Fake-Stream"] = "1"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=json.dumps(body).encode(), headers=hdr)
    with urllib.request.urlopen(req, timeout=30) as r:
        h = {k.lower(): v for k, v in r.headers.items()}
        return r.status, h, r.read().decode()


def sanity(port, auth):
    """Functional check before load: 200s, right shapes, both upstreams used, keys rotated."""
    t0 = time.time()
    while True:
        try:
            st, h, b = post(port, auth, False)
            break
        except Exception as e:  # litellm may open the port before it is ready
            if time.time() - t0 > 60:
                raise RuntimeError(f"sanity JSON request failed: {e}")
            time.sleep(0.5)
    assert st == 200 and '"choices"' in b, (st, b[:200])
    ports, keys, links = set(), set(), set()
    for _ in range(8):
        st, h, b = post(port, auth, False)
        ports.add(h.get("x-upstream-port") or h.get("llm_provider-x-upstream-port"))
        links.add((h.get("x-upstream-tls"), h.get("x-upstream-proto")))
        if h.get("x-keyway-key-id"):
            keys.add(h["x-keyway-key-id"])
    st, h, b = post(port, auth, True)
    links.add((h.get("x-upstream-tls"), h.get("x-upstream-proto")))
    data_lines = [l for l in b.splitlines() if l.startswith("data:")]
    assert st == 200 and data_lines and data_lines[-1].strip() == "data: [DONE]" and len(data_lines) >= 21, \
        (st, len(data_lines), b[-200:])
    out = {"upstream_ports_seen": sorted(p for p in ports if p), "key_ids_seen": sorted(keys),
           "stream_data_lines": len(data_lines), "stream_content_type": h.get("content-type")}
    if UPSTREAM_TLS:
        # the upstream's own word on how each request reached it: TLS, with the protocol wanted
        want = TLS_PROTO[UPSTREAM_TLS]
        bad = [l for l in links if not (l[0] or "").startswith("TLSv") or l[1] != want]
        if bad:
            raise RuntimeError(f"upstream saw (TLS, protocol) {sorted(map(str, links))}, want (TLSv*, {want})")
        out["upstream_tls_seen"] = sorted(f"{t} {p}" for t, p in links)
        expect = {str(p) for p in TLS_PORTS[UPSTREAM_TLS]}
        if not set(out["upstream_ports_seen"]) <= expect:
            raise RuntimeError(f"upstream ports {out['upstream_ports_seen']}, want {sorted(expect)}")
    return out


def scrape(url):
    """Sums of the Keyway counters that show metrics and key injection at work."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {"requests_total": 0.0, "key_requests": {}, "tokens_total": 0.0, "bytes": len(text)}
    for line in text.splitlines():
        if line.startswith("keyway_proxy_requests_total{"):
            out["requests_total"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("keyway_proxy_key_requests_total{"):
            kid = re.search(r'key_id="([^"]*)"', line).group(1)
            out["key_requests"][kid] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("keyway_proxy_key_tokens_total{"):
            out["tokens_total"] += float(line.rsplit(" ", 1)[1])
    return out


# ---------------------------------------------------------------- wrk
def run_wrk(port, auth, stream, threads, conns, secs):
    env = dict(os.environ, WRK_AUTH=auth, WRK_STREAM="1" if stream else "0")
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "30s", "--latency",
           "-s", LUA, f"http://127.0.0.1:{port}{PATH}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=secs + 60)
    j = None
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            j = json.loads(line[8:])
    if j is None:
        raise RuntimeError(f"wrk gave no result: {r.stdout[-500:]} {r.stderr[-500:]}")
    return cmd, r.stdout, j


# ---------------------------------------------------------------- streaming client
class Dechunk:
    """Incremental HTTP/1.1 chunked-body decoder."""

    def __init__(self):
        self.raw = b""
        self.left = 0  # bytes of the current chunk still to come (+2 for its CRLF)
        self.done = False

    def feed(self, data):
        self.raw += data
        out = b""
        while not self.done:
            if self.left > 2:  # payload bytes of the current chunk
                n = min(self.left - 2, len(self.raw))
                if n == 0:
                    break
                out += self.raw[:n]
                self.raw = self.raw[n:]
                self.left -= n
            elif self.left > 0:  # the CRLF closing the chunk
                n = min(self.left, len(self.raw))
                if n == 0:
                    break
                self.raw = self.raw[n:]
                self.left -= n
            else:
                i = self.raw.find(b"\r\n")
                if i < 0:
                    break
                size = int(self.raw[:i].split(b";")[0], 16)
                if size == 0:  # last chunk: done once the (empty) trailer section ended
                    rest = self.raw[i + 2:]
                    if rest.startswith(b"\r\n") or b"\r\n\r\n" in rest:
                        self.done = True
                    break
                self.raw = self.raw[i + 2:]
                self.left = size + 2
        return out


def stream_once(sock, port, auth, body):
    """One streaming request on `sock`. Returns (status, t_send_ns, [(recv_ns, sent_ns|None)],
    reusable)."""
    req = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"Authorization: {auth}\r\nX-Fake-Stream: 1\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    t_send = time.monotonic_ns()
    sock.sendall(req)
    buf, head, status, events = b"", None, 0, []
    dech, clen, got, text = None, None, 0, b""
    while True:
        data = sock.recv(65536)
        now = time.monotonic_ns()
        if not data:
            if head is not None and dech is None and clen is None:
                break  # close-delimited body
            raise ConnectionError("connection closed mid-response")
        if head is None:
            buf += data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                continue
            head = buf[:i].decode("latin1").lower()
            status = int(head.split()[1])
            data = buf[i + 4:]
            if "transfer-encoding: chunked" in head:
                dech = Dechunk()
            else:
                m = re.search(r"content-length:\s*(\d+)", head)
                clen = int(m.group(1)) if m else None
        if dech is not None:
            payload = dech.feed(data)
        else:
            payload = data
            got += len(data)
        text += payload
        while True:
            j = text.find(b"\n")
            if j < 0:
                break
            line, text = text[:j], text[j + 1:]
            if line.startswith(b"data:"):
                m = re.search(rb'tok\d\d@(\d+)', line)
                events.append((now, int(m.group(1)) if m else None))
        if (dech is not None and dech.done) or (clen is not None and got >= clen):
            break
    return status, t_send, events, "connection: close" not in (head or "")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def measure_ttfb(rnd, name, port, auth, proxy, raw):
    body = json.dumps({"model": "fake-gpt-stream", "stream": True, "max_tokens": 20,
                       "messages": [{"role": "user", "content": "Say hello in twenty tokens."}]}).encode()
    pre_other, waited = wait_quiet()
    c0 = cpu_ticks(tree(proxy.pid) if proxy else [])
    w0 = time.time()
    ttfb, lag_first, lag_all, jitter, errors, ok = [], [], [], [], 0, 0
    sock = None
    for _ in range(TTFB_N):
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status, t_send, events, reuse = stream_once(sock, port, auth, body)
            if not reuse:
                sock.close()
                sock = None
            stamped = [(r, s) for r, s in events if s is not None]
            if status != 200 or not stamped:
                errors += 1
                continue
            ok += 1
            ttfb.append((events[0][0] - t_send) / 1e6)
            lags = [(r - s) / 1e6 for r, s in stamped]
            lag_first.append(lags[0])
            lag_all.extend(lags)
            jitter.extend(abs(b - a) for a, b in zip(lags, lags[1:]))
        except Exception as e:
            errors += 1
            log(f"  {name} ttfb error: {e!r}")
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    wall = time.time() - w0
    c1 = cpu_ticks(tree(proxy.pid) if proxy else [])
    rec = {"round": rnd, "row": name, "scenario": "ttfb", "threads": 1, "conns": 1,
           "requests": ok, "errors": errors, "rps": ok / wall,
           "ttfb_p50_ms": pct(ttfb, 50), "ttfb_p90_ms": pct(ttfb, 90), "ttfb_max_ms": max(ttfb, default=None),
           "first_lag_p50_ms": pct(lag_first, 50), "first_lag_p99_ms": pct(lag_first, 99),
           "first_lag_max_ms": max(lag_first, default=None),
           "lag_p50_ms": pct(lag_all, 50), "lag_p99_ms": pct(lag_all, 99), "lag_max_ms": max(lag_all, default=None),
           "gap_jitter_p50_ms": pct(jitter, 50), "gap_jitter_p99_ms": pct(jitter, 99),
           "gap_jitter_max_ms": max(jitter, default=None), "events": len(lag_all),
           "proxy_cpu_us_per_req": ((c1 - c0) / CLK * 1e6 / ok) if proxy and ok else None,
           "pre_other_cores": pre_other, "quiet_waited_s": round(waited, 1), "upstream": UPSTREAM,
           "chunk_delay_ms": float(os.environ.get("CHUNK_DELAY_MS", "20")),
           "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    if errors:
        failures.append(f"round {rnd} {name} ttfb: {errors} errors")
    f = lambda x: f"{x:7.3f}" if x is not None else "      -"
    log(f"  {name:12s} ttfb   seq x{TTFB_N}  ttfb p50={f(rec['ttfb_p50_ms'])}ms  event lag p50={f(rec['lag_p50_ms'])} "
        f"p99={f(rec['lag_p99_ms'])} max={f(rec['lag_max_ms'])}ms  err={errors} pre={pre_other:.2f}c")


def measure(rnd, name, port, auth, proxy, upstream, scenario, threads, conns, raw, wrklog):
    stream = scenario == "stream"
    ppids, upids = tree(proxy.pid if proxy else None), tree(upstream.pid)
    pre_other, waited = wait_quiet()
    la = loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0, si0 = sys_cpu()
    pc0, uc0 = cpu_ticks(ppids), cpu_ticks(upids)
    w0 = time.time()
    cmd, out, j = run_wrk(port, auth, stream, threads, conns, DURATION)
    wall = time.time() - w0
    pc1, uc1 = cpu_ticks(tree(proxy.pid) if proxy else []), cpu_ticks(upids)
    b1, t1, si1 = sys_cpu()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    dur = j["duration_us"] / 1e6
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    proxy_cpu = (pc1 - pc0) / CLK
    up_cpu = (uc1 - uc0) / CLK
    busy = (b1 - b0) / CLK
    softirq = (si1 - si0) / CLK
    errors = sum(j[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    rec = {
        "round": rnd, "row": name, "scenario": scenario, "threads": threads, "conns": conns,
        "rps": j["requests"] / dur, "requests": j["requests"], "errors": errors,
        "err_status_non2xx": j["err_status"], "err_timeout": j["err_timeout"],
        "p50_ms": j["p50_us"] / 1000, "p90_ms": j["p90_us"] / 1000, "p99_ms": j["p99_us"] / 1000,
        "p999_ms": j["p999_us"] / 1000, "max_ms": j["lat_max_us"] / 1000, "mean_ms": j["lat_mean_us"] / 1000,
        "bytes": j["bytes"], "duration_s": dur,
        "proxy_cores": proxy_cpu / wall if proxy else None,
        "proxy_cpu_us_per_req": (proxy_cpu * 1e6 / j["requests"]) if proxy and j["requests"] else None,
        "upstream_cores": up_cpu / wall, "wrk_cores": wrk_cpu / wall,
        "machine_busy_cores": busy / wall, "irq_softirq_cores": softirq / wall,
        # busy time charged to none of proxy/upstream/wrk = other people's load
        "other_cores": max(0.0, busy - proxy_cpu - up_cpu - wrk_cpu) / wall,
        "loadavg_before": la, "pre_other_cores": pre_other, "quiet_waited_s": round(waited, 1),
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if UPSTREAM_TLS:
        rec["tls"] = UPSTREAM_TLS
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    wrklog.write(f"### round {rnd} {name} {scenario} t{threads} c{conns}\n$ {' '.join(cmd)}\n{out}\n")
    wrklog.flush()
    if errors:
        failures.append(f"round {rnd} {name} {scenario} t{threads}c{conns}: {errors} errors")
    log(f"  {name:12s} {scenario + (' ' + UPSTREAM_TLS if UPSTREAM_TLS else ''):6s} t{threads}c{conns:<3d} rps={rec['rps']:9.1f} p50={rec['p50_ms']:7.2f}ms "
        f"p99={rec['p99_ms']:7.2f}ms err={errors} proxy={rec['proxy_cores'] or 0:.2f}c "
        f"cpu/req={rec['proxy_cpu_us_per_req'] or 0:.1f}us other={rec['other_cores']:.2f}c pre={pre_other:.2f}c")


# ---------------------------------------------------------------- env info
def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def env_info():
    venv = os.environ.get("VENV", os.path.expanduser("~/.cache/keyway/bench-venv"))
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uname": sh("uname -srm"), "nproc": sh("nproc"), "cpu": sh("grep -m1 'model name' /proc/cpuinfo"),
        "mem": sh("free -h | sed -n 2p"), "uptime": sh("uptime"),
        "wrk": sh("wrk -v 2>&1 | head -1"), "nginx": sh("nginx -v 2>&1"),
        "haproxy": sh("haproxy -v | head -1"), "python": sh("python3 -V"),
        "litellm": sh(f"{venv}/bin/pip show litellm 2>/dev/null | sed -n 2p"),
        "keyway_bin": os.environ.get("KEYWAY_BIN", ""),
        "keyway_commit": os.environ.get("KEYWAY_COMMIT") or (
            sh(f"git -C {HERE} rev-parse --short HEAD 2>/dev/null || echo unknown") + (
                " (with local changes)" if sh(f"git -C {HERE} status --porcelain -- ../proxy ../api 2>/dev/null") else "")),
        "top": sh("top -bn1 -w 200 | head -15"),
        "rows": ROWS, "rounds": ROUNDS, "duration_s": DURATION, "warmup_s": WARMUP,
        "loads": LOADS, "scenarios": SCENARIOS, "upstream": UPSTREAM, "upstream_tls": UPSTREAM_TLS,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(RUN_DIR, exist_ok=True)
    metas = {n: row_meta(n) for n in ROWS}
    if UPSTREAM_TLS and (UPSTREAM_TLS not in TLS_PORTS or UPSTREAM != "nginx"):
        sys.exit(f"UPSTREAM_TLS={UPSTREAM_TLS}: want h1 or h2, with UPSTREAM=nginx")
    if UPSTREAM_TLS and "direct" in ROWS:
        sys.exit("UPSTREAM_TLS: the direct row has no TLS variant (wrk would do the TLS itself)")
    up_ports = [18000, 18001] + TLS_PORTS.get(UPSTREAM_TLS, [])
    for p in up_ports + [m[0] for n, m in metas.items() if n != "direct"]:
        if port_open(p):
            sys.exit(f"port {p} is already in use: stop whatever listens there first")
    if UPSTREAM == "nginx":
        tls = ["--tls", os.path.join(RUN_DIR, "tls")] if UPSTREAM_TLS else []
        subprocess.run([sys.executable, os.path.join(HERE, "gen_upstream_conf.py"),
                        os.path.join(RUN_DIR, "upstream-nginx.conf")] + tls, check=True, stdout=subprocess.DEVNULL)
    info = env_info()
    tag = UPSTREAM + (f"-tls-{UPSTREAM_TLS}" if UPSTREAM_TLS else "")
    n, env_path = 1, os.path.join(OUT, f"env-{tag}.json")
    while os.path.exists(env_path):  # a later harness run into the same OUT adds its own
        n += 1
        env_path = os.path.join(OUT, f"env-{tag}-{n}.json")
    with open(env_path, "w") as f:
        json.dump(info, f, indent=1)
    log("load before start:", info["uptime"])
    raw = open(os.path.join(OUT, "raw.jsonl"), "a")
    wrklog = open(os.path.join(OUT, "wrk.log"), "a")
    memf = open(os.path.join(OUT, "rows.jsonl"), "a")

    upstream = start("upstream", "upstream")
    for p in up_ports:
        wait_port(p, upstream, 20)
    log(f"upstream ({tag}) up, pid", upstream.pid)
    try:
        for rnd in range(1, ROUNDS + 1):
            order = ROWS if rnd % 2 == 1 else list(reversed(ROWS))
            log(f"=== round {rnd}/{ROUNDS}: {' '.join(order)}")
            for name in order:
                port, auth, metrics_url = metas[name]
                proxy = None if name == "direct" else start(f"row_{name}", name)
                rec = {"round": rnd, "row": name, "port": port, "upstream": UPSTREAM, "scenarios": SCENARIOS}
                if UPSTREAM_TLS:
                    rec["tls"] = UPSTREAM_TLS
                try:
                    if proxy:
                        rec["startup_s"] = round(wait_port(port, proxy), 3)
                    rec.update(sanity(port, auth))
                    if proxy:
                        time.sleep(min(2, IDLE_S))
                        pids = tree(proxy.pid)
                        c0 = cpu_ticks(pids)
                        time.sleep(IDLE_S)
                        pids = tree(proxy.pid)
                        rec["idle_cores"] = (cpu_ticks(pids) - c0) / CLK / max(IDLE_S, 0.01)
                        rec["nprocs"] = len(pids)
                        rec["idle_rss_kb"], rec["idle_pss_kb"] = mem_kb(pids)
                    for sc in SCENARIOS:  # unmeasured warm-up
                        if sc == "ttfb":
                            for _ in range(3):
                                post(port, auth, True)
                        elif WARMUP > 0:
                            run_wrk(port, auth, sc == "stream", 2, 64, WARMUP)
                    for sc in SCENARIOS:
                        if sc == "ttfb":
                            measure_ttfb(rnd, name, port, auth, proxy, raw)
                            continue
                        for (t, c) in LOADS:
                            measure(rnd, name, port, auth, proxy, upstream, sc, t, c, raw, wrklog)
                    if proxy:
                        rec["loaded_rss_kb"], rec["loaded_pss_kb"] = mem_kb(tree(proxy.pid))
                        if proxy.poll() is not None:
                            raise RuntimeError(f"proxy exited rc={proxy.returncode} during the load")
                    if metrics_url:
                        rec["metrics"] = scrape(metrics_url)
                except Exception as e:
                    rec["error"] = repr(e)
                    failures.append(f"round {rnd} {name}: {e!r}")
                    log(f"  {name}: ERROR {e!r}")
                finally:
                    stop(proxy)
                memf.write(json.dumps(rec) + "\n")
                memf.flush()
                short = {k: v for k, v in rec.items() if k not in ("round", "row", "metrics", "scenarios")}
                log(f"  {name}: {json.dumps(short)}")
    finally:
        for p in list(started):
            stop(p)
        raw.close()
        wrklog.close()
        memf.close()
    if failures:
        log("FAILURES:\n  " + "\n  ".join(failures))
        if STRICT:
            sys.exit(1)


if __name__ == "__main__":
    def _sig(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _sig)
    main()
