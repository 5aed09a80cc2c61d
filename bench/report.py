#!/usr/bin/env python3
"""Writes the Markdown report of a benchmark run.

usage: report.py OUT_DIR [-o REPORT.md] [--criterion DIR] [--control-plane FILE.json]

OUT_DIR holds what harness.py wrote (raw.jsonl, rows.jsonl, env-*.json). With --criterion
(criterion's output dir, $CARGO_TARGET_DIR/criterion) the micro-benchmarks are added, with
--control-plane the control-plane bench's JSON (CP_OUT). Prints the report too.
"""
import argparse
import glob
import json
import os
import statistics as st
import time

# Runs during which other processes kept more than this many cores busy are left out of the
# medians when the same row and load has undisturbed runs (they stay in the details).
QUIET_OTHER = 0.3
MICRO_GROUPS = ["key_pick", "key_lease", "backend_pick", "affinity_hash", "route", "sse_scan", "json_usage"]


def load(d, name):
    p = os.path.join(d, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []


def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None


def f(x, nd=1, suffix=""):
    return "–" if x is None else f"{x:,.{nd}f}{suffix}"


def ratio(a, b, nd=2):
    return "–" if a is None or not b else f"{a / b:.{nd}f}"


class Side:
    def __init__(self, raw, rows):
        self.raw, self.rows = raw, rows
        loads = sorted({(r["threads"], r["conns"]) for r in raw if r["scenario"] != "ttfb"}, key=lambda l: l[1])
        self.hi = loads[-1] if loads else (2, 64)  # the throughput load
        self.lo = loads[0] if loads else (1, 8)    # the latency load
        self.order = []
        for r in raw + rows:
            if r["row"] not in self.order:
                self.order.append(r["row"])

    def get(self, row, scenario, t, c, key):
        if (t, c) == (2, 64):
            t, c = self.hi
        elif (t, c) == (1, 8):
            t, c = self.lo
        return med([r.get(key) for r in self.runs(row, scenario, t, c)])

    def runs(self, row, scenario, t, c):
        """The runs of one row and load; only the undisturbed ones when there are any (other
        processes busy below QUIET_OTHER cores during the run)."""
        rs = [r for r in self.raw if (r["row"], r["scenario"], r["threads"], r["conns"]) == (row, scenario, t, c)]
        quiet = [r for r in rs if (r.get("other_cores") or 0) <= QUIET_OTHER]
        return quiet or rs

    def mem(self, row, key, agg=med):
        xs = [r[key] for r in self.rows if r["row"] == row and r.get(key) is not None]
        return agg(xs) / 1024 if xs else None

    def ttfb(self, row, key):
        return med([r.get(key) for r in self.raw if r["row"] == row and r["scenario"] == "ttfb"])


def main_table(s, lines):
    hi, lo = f"-t{s.hi[0]} -c{s.hi[1]}", f"-t{s.lo[0]} -c{s.lo[1]}"
    lines.append(f"| row | JSON rps ({hi}) | × direct | × nginx | SSE rps ({hi}) | × nginx | JSON p99 ms ({lo}) "
                 f"| SSE p99 ms ({lo}) | CPU µs/req JSON | CPU µs/req SSE | idle RSS MiB | RSS after load MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    d = s.get("direct", "json", 2, 64, "rps")
    n = s.get("nginx", "json", 2, 64, "rps")
    ns = s.get("nginx", "stream", 2, 64, "rps")
    for row in s.order:
        if not any(r["row"] == row and r["scenario"] != "ttfb" for r in s.raw):
            continue
        j = s.get(row, "json", 2, 64, "rps")
        sse = s.get(row, "stream", 2, 64, "rps")
        lines.append(
            f"| {row} | {f(j, 0)} | {ratio(j, d, 3)} | {ratio(j, n)} | {f(sse, 0)} | {ratio(sse, ns)} | "
            f"{f(s.get(row, 'json', 1, 8, 'p99_ms'), 2)} | {f(s.get(row, 'stream', 1, 8, 'p99_ms'), 2)} | "
            f"{f(s.get(row, 'json', 2, 64, 'proxy_cpu_us_per_req'), 1)} | "
            f"{f(s.get(row, 'stream', 2, 64, 'proxy_cpu_us_per_req'), 1)} | "
            f"{f(s.mem(row, 'idle_rss_kb'), 1)} | {f(s.mem(row, 'loaded_rss_kb', max), 1)} |")


def ttfb_table(s, lines):
    rows = [r for r in s.order if any(x["row"] == r and x["scenario"] == "ttfb" for x in s.raw)]
    if not rows:
        return
    delay = next(r.get("chunk_delay_ms") for r in s.raw if r["scenario"] == "ttfb")
    lines.append(f"Paced upstream: 20 SSE events {delay:g} ms apart per request, one connection, requests in "
                 "sequence. *Lag* = client receive time − upstream send time of the same event (both "
                 "CLOCK_MONOTONIC); it includes the client's own read path, so `direct` is the floor.\n")
    lines.append("| row | TTFB p50 ms | first-event lag p50 / p99 ms | every-event lag p50 / p99 / max ms "
                 "| added p99 vs direct p50 ms | spacing jitter p99 ms | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    dl = s.ttfb("direct", "lag_p50_ms")
    for row in rows:
        lp99 = s.ttfb(row, "lag_p99_ms")
        errs = sum(r["errors"] for r in s.raw if r["row"] == row and r["scenario"] == "ttfb")
        lines.append(
            f"| {row} | {f(s.ttfb(row, 'ttfb_p50_ms'), 2)} | {f(s.ttfb(row, 'first_lag_p50_ms'), 3)} / "
            f"{f(s.ttfb(row, 'first_lag_p99_ms'), 3)} | {f(s.ttfb(row, 'lag_p50_ms'), 3)} / {f(lp99, 3)} / "
            f"{f(s.ttfb(row, 'lag_max_ms'), 3)} | {f(lp99 - dl if lp99 is not None and dl is not None else None, 3)} | "
            f"{f(s.ttfb(row, 'gap_jitter_p99_ms'), 3)} | {errs} |")


TLS_LABEL = {"h1": "HTTP/1.1 over TLS", "h2": "HTTP/2 over TLS"}
NGINX_NO_H2 = "nginx's proxy_pass speaks HTTP/1.x only to upstreams"


def tls_table(sides, plain, lines):
    """One table for the TLS parts (sides: {"h1": Side, "h2": Side}); ratios to nginx and
    haproxy over the same upstream protocol, and to the same row with the plain upstream."""
    any_side = next(iter(sides.values()))
    hi, lo = f"-t{any_side.hi[0]} -c{any_side.hi[1]}", f"-t{any_side.lo[0]} -c{any_side.lo[1]}"
    lines.append(f"| upstream | row | JSON rps ({hi}) | × nginx | × haproxy | × plain upstream | SSE rps ({hi}) "
                 f"| × nginx | × haproxy | JSON p99 ms ({lo}) | SSE p99 ms ({lo}) | CPU µs/req JSON "
                 "| CPU µs/req SSE | idle RSS MiB | RSS after load MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nginx_ran = any(r["row"] == "nginx" for sd in sides.values() for r in sd.raw)
    for tls, s in sides.items():
        n, ns = s.get("nginx", "json", 2, 64, "rps"), s.get("nginx", "stream", 2, 64, "rps")
        h, hs = s.get("haproxy", "json", 2, 64, "rps"), s.get("haproxy", "stream", 2, 64, "rps")
        order = list(s.order)
        if tls == "h2" and nginx_ran and "nginx" not in order:
            order.insert(0, "nginx")
        for row in order:
            if row == "nginx" and tls == "h2" and not any(r["row"] == row for r in s.raw):
                lines.append(f"| {TLS_LABEL[tls]} | nginx | n/a ({NGINX_NO_H2}) |" + " n/a |" * 12)
                continue
            if not any(r["row"] == row for r in s.raw):
                continue
            j, sse = s.get(row, "json", 2, 64, "rps"), s.get(row, "stream", 2, 64, "rps")
            p = plain.get(row, "json", 2, 64, "rps") if plain.hi == s.hi else None
            lines.append(
                f"| {TLS_LABEL[tls]} | {row} | {f(j, 0)} | {ratio(j, n)} | {ratio(j, h)} | {ratio(j, p)} | "
                f"{f(sse, 0)} | {ratio(sse, ns)} | {ratio(sse, hs)} | "
                f"{f(s.get(row, 'json', 1, 8, 'p99_ms'), 2)} | {f(s.get(row, 'stream', 1, 8, 'p99_ms'), 2)} | "
                f"{f(s.get(row, 'json', 2, 64, 'proxy_cpu_us_per_req'), 1)} | "
                f"{f(s.get(row, 'stream', 2, 64, 'proxy_cpu_us_per_req'), 1)} | "
                f"{f(s.mem(row, 'idle_rss_kb'), 1)} | {f(s.mem(row, 'loaded_rss_kb', max), 1)} |")
    seen = sorted({t for r in (r for sd in sides.values() for r in sd.rows) for t in r.get("upstream_tls_seen", [])})
    if seen:
        lines.append(f"\nHow the upstream saw the sanity requests of every row (its `$ssl_protocol` and "
                     f"`$server_protocol`): {', '.join(seen)}.")


def detail_tables(s, lines, label=""):
    groups = []
    for r in s.raw:
        g = (r["scenario"], r["threads"], r["conns"])
        if g not in groups and r["scenario"] != "ttfb":
            groups.append(g)
    for (sc, t, c) in groups:
        sel = [r for r in s.raw if (r["scenario"], r["threads"], r["conns"]) == (sc, t, c)]
        lines.append(f"\n#### {label}{sc}, wrk -t{t} -c{c}\n")
        lines.append("| row | runs (undisturbed) | rps median | rps min | p50 ms | p99 ms (med) | p99 ms (max) | errors "
                     "| proxy cores | proxy CPU µs/req | upstream cores | other load cores (med/max) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in s.order:
            rs = [r for r in sel if r["row"] == name]
            if not rs:
                continue
            lines.append(
                f"| {name} | {len(rs)} ({sum((r.get('other_cores') or 0) <= QUIET_OTHER for r in rs)}) | {f(med([r['rps'] for r in rs]), 0)} | {f(min(r['rps'] for r in rs), 0)} | "
                f"{f(med([r['p50_ms'] for r in rs]), 2)} | {f(med([r['p99_ms'] for r in rs]), 2)} | "
                f"{f(max(r['p99_ms'] for r in rs), 2)} | {sum(r['errors'] for r in rs)} | "
                f"{f(med([r['proxy_cores'] for r in rs]), 2)} | {f(med([r['proxy_cpu_us_per_req'] for r in rs]), 1)} | "
                f"{f(med([r['upstream_cores'] for r in rs]), 2)} | "
                f"{f(med([r['other_cores'] for r in rs]), 2)}/{f(max(r['other_cores'] for r in rs), 2)} |")
    mem = [r for r in s.rows if "idle_rss_kb" in r]
    if mem:
        lines.append(f"\n#### {label}processes and memory\n")
        lines.append("| row | upstream | procs | startup s | idle CPU cores | idle RSS MiB | idle PSS MiB | RSS after load MiB |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name in s.order:
            for up in ("nginx", "paced"):
                ms = [m for m in mem if m["row"] == name and m.get("upstream", "nginx") == up]
                if not ms:
                    continue
                lines.append(
                    f"| {name} | {up} | {ms[0].get('nprocs')} | {f(med([m['startup_s'] for m in ms]), 2)} | "
                    f"{f(med([m['idle_cores'] for m in ms]), 3)} | {f(med([m['idle_rss_kb'] for m in ms]) / 1024, 1)} | "
                    f"{f(med([m['idle_pss_kb'] for m in ms]) / 1024, 1)} | "
                    f"{f(max(m.get('loaded_rss_kb', 0) for m in ms) / 1024, 1)} |")
    kw = [r for r in s.rows if r.get("metrics")]
    if kw:
        lines.append(f"\n#### {label}Keyway's own counters after each row (metrics on, key injection)\n")
        for r in kw:
            m = r["metrics"]
            kr = m["key_requests"]
            lines.append(
                f"- round {r['round']}, {r.get('upstream', 'nginx')} upstream: {m['requests_total']:,.0f} requests counted, "
                f"{len(kr)} keys used ({min(kr.values(), default=0):,.0f}–{max(kr.values(), default=0):,.0f} requests each), "
                f"{m['tokens_total']:,.0f} tokens counted from usage; key ids seen in 8 sanity requests: "
                f"{', '.join(r.get('key_ids_seen', []))}; upstream ports: {', '.join(r.get('upstream_ports_seen', []))}")
    errs = [r for r in s.rows if "error" in r]
    if errs:
        lines.append(f"\n#### {label}row errors\n")
        for r in errs:
            lines.append(f"- round {r['round']} {r['row']}: {r['error']}")


def criterion_results(d):
    out = []
    for bj in glob.glob(os.path.join(d, "*", "**", "new", "benchmark.json"), recursive=True):
        try:
            b = json.load(open(bj))
            e = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
        except (OSError, ValueError):
            continue
        if b.get("group_id") not in MICRO_GROUPS:
            continue
        ns = e["mean"]["point_estimate"]
        tp = b.get("throughput") or {}
        out.append({"group": b["group_id"], "function": b.get("function_id") or "", "value": b.get("value_str") or "",
                    "ns": ns, "elements": tp.get("Elements"), "bytes": tp.get("Bytes"),
                    "mtime": os.path.getmtime(bj)})
    return out


def micro_tables(res, lines):
    by = {}
    for r in res:
        by.setdefault(r["group"], []).append(r)
    key = lambda r: (r["function"], float(r["value"]) if r["value"].replace(".", "").isdigit() else 0, r["value"])
    for g in ("key_pick", "key_lease"):
        rs = by.get(g)
        if not rs:
            continue
        what = ("one `try_acquire` (the pick)" if g == "key_pick"
                else "`try_acquire` + `Lease::success` (a lease's whole life)")
        lines.append(f"\n**{g}**: {what}, per strategy and pool size; millions of picks per second on one core (ns each)\n")
        sizes = sorted({r["value"] for r in rs}, key=lambda v: int(v) if v.isdigit() else 0)
        lines.append("| strategy | " + " | ".join(f"{v} keys" for v in sizes) + " |")
        lines.append("|---|" + "---|" * len(sizes))
        for fn in sorted({r["function"] for r in rs}, key=lambda x: (x.endswith("cooling"), x)):
            cells = []
            for v in sizes:
                m = [r for r in rs if r["function"] == fn and r["value"] == v]
                cells.append(f"{1e3 / m[0]['ns']:.1f} M/s ({m[0]['ns']:.0f} ns)" if m else "–")
            lines.append(f"| {fn} | " + " | ".join(cells) + " |")
    for g, title in (("backend_pick", "backend selection (`Balancer::pick`), per strategy and backend count"),
                     ("route", "route matching (`Router::route`), pools with 2 routes each (+1 catch-all)")):
        rs = by.get(g)
        if not rs:
            continue
        vals = sorted({r["value"] for r in rs if r["value"]}, key=lambda v: int(v) if v.isdigit() else 0)
        lines.append(f"\n**{g}**: {title}; ns per call\n")
        for r in [r for r in rs if not r["value"]]:
            lines.append(f"- `{r['function']}` (one pool, no routes): {r['ns']:.1f} ns\n")
        rs = [r for r in rs if r["value"]]
        cols = vals or [""]
        lines.append("| case | " + " | ".join(f"{v}" for v in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for fn in sorted({r["function"] for r in rs}):
            cells = []
            for v in cols:
                m = [r for r in rs if r["function"] == fn and r["value"] == v]
                cells.append(f"{m[0]['ns']:.1f}" if m else "–")
            lines.append(f"| {fn} | " + " | ".join(cells) + " |")
    rest = by.get("affinity_hash", []) + by.get("sse_scan", []) + by.get("json_usage", [])
    if rest:
        lines.append("\n**usage parsing and hashing**\n")
        lines.append("| benchmark | time | throughput |")
        lines.append("|---|---|---|")
        for r in sorted(rest, key=lambda r: (r["group"], r["function"], r["value"])):
            name = "/".join(x for x in (r["group"], r["function"], r["value"]) if x)
            tp = (f"{r['bytes'] / r['ns'] * 1e9 / 2**20:,.0f} MiB/s" if r["bytes"]
                  else f"{r['elements'] / r['ns'] * 1e3:,.1f} M/s" if r["elements"] else "–")
            t = f"{r['ns'] / 1e3:.2f} µs" if r["ns"] >= 1000 else f"{r['ns']:.1f} ns"
            lines.append(f"| {name} | {t} | {tp} |")


def cp_table(cp, lines):
    lines.append("| scenario | namespaces | affected proxies | pools per snapshot | snapshot bytes | index rebuild ms p50 "
                 "| push → all ACKed ms p50 / p99 | change → all ACKed ms p50 / p99 / max |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for o in cp:
        lines.append(f"| {o['scenario']} | {o['namespaces']} | {o['affected']} of {o['proxies']} | {o['pools_per_snapshot']} | "
                     f"{o['snapshot_bytes']:,} | {o['build_ms_p50']:.2f} | {o['fanout_ms_p50']:.2f} / {o['fanout_ms_p99']:.2f} | "
                     f"{o['total_ms_p50']:.2f} / {o['total_ms_p99']:.2f} / {o['total_ms_max']:.2f} |")
    lines.append("\n| scenario | watched inputs MiB (heap) | index + last-good MiB (heap) | 50 sessions MiB (heap, both sides) "
                 "| process RSS before / with index / with sessions MiB |")
    lines.append("|---|---|---|---|---|")
    m = lambda b: b / 2**20
    for o in cp:
        lines.append(f"| {o['scenario']} | {m(o['heap_inputs_bytes']):.2f} | {m(o['heap_index_bytes']):.2f} | "
                     f"{m(o['heap_sessions_bytes']):.2f} | {m(o['rss_before_bytes']):.1f} / {m(o['rss_index_bytes']):.1f} / "
                     f"{m(o['rss_sessions_bytes']):.1f} |")


def targets(s, micro, cp, lines):
    rows = []

    def add(name, value, ok):
        rows.append(f"| {name} | {value} | {'–' if ok is None else ('met' if ok else '**missed**')} |")

    have = lambda r: any(x["row"] == r for x in s.raw)
    if have("keyway") and have("nginx"):
        for sc, label in (("json", "JSON"), ("stream", "SSE")):
            k, n = s.get("keyway", sc, 2, 64, "rps"), s.get("nginx", sc, 2, 64, "rps")
            if k and n:
                add(f"{label} throughput ≥ 1.0× nginx (-t{s.hi[0]} -c{s.hi[1]})", f"{k / n:.2f}× ({k:,.0f} vs {n:,.0f} rps)", k >= n)
            k, n = s.get("keyway", sc, 2, 64, "proxy_cpu_us_per_req"), s.get("nginx", sc, 2, 64, "proxy_cpu_us_per_req")
            if k and n:
                add(f"{label} CPU per request ≤ nginx's", f"{k:.1f} vs {n:.1f} µs ({k / n:.2f}×)", k <= n)
            k, n = s.get("keyway", sc, 1, 8, "p99_ms"), s.get("nginx", sc, 1, 8, "p99_ms")
            if k and n:
                add(f"{label} p99 at -c{s.lo[1]} ≤ nginx's", f"{k:.2f} vs {n:.2f} ms", k <= n)
    if any(x["row"] == "keyway" and x["scenario"] == "ttfb" for x in s.raw):
        fl, al, mx = s.ttfb("keyway", "first_lag_p99_ms"), s.ttfb("keyway", "lag_p99_ms"), s.ttfb("keyway", "lag_max_ms")
        dl = s.ttfb("direct", "lag_p50_ms")
        extra = f"; direct p50 {dl:.3f} ms" if dl is not None else ""
        add("SSE first event forwarded within 1 ms (p99 lag)", f"{fl:.3f} ms{extra}", fl <= 1.0)
        add("SSE every event forwarded within 1 ms (p99 lag; max shown)", f"{al:.3f} ms (max {mx:.3f}){extra}", al <= 1.0)
    idle, loaded = s.mem("keyway", "idle_rss_kb"), s.mem("keyway", "loaded_rss_kb", max)
    if idle is not None:
        add("idle RSS ≤ 15 MiB", f"{idle:.1f} MiB", idle <= 15)
    if loaded is not None:
        add("RSS after the load ≤ 30 MiB", f"{loaded:.1f} MiB", loaded <= 30)
    ks = [r for r in micro if r["group"] == "key_pick" and r["value"] == "10000"]
    if ks:
        worst = max(ks, key=lambda r: r["ns"])
        best = min(ks, key=lambda r: r["ns"])
        add("key selection ≥ 10 M picks/s per core with 10,000 keys (`key_pick`)",
            f"{1e3 / worst['ns']:.1f}–{1e3 / best['ns']:.1f} M/s (slowest: {worst['function']})",
            all(1e3 / r["ns"] >= 10 for r in ks))
    for o in cp or []:
        if o["affected"] >= 2:
            add(f"control plane: one change reaches all {o['affected']} proxies (ACKed) < 100 ms p99 ({o['scenario']})",
                f"p99 {o['total_ms_p99']:.1f} ms (p50 {o['total_ms_p50']:.1f})", o["total_ms_p99"] < 100)
    if rows:
        lines.append("| target | measured | |")
        lines.append("|---|---|---|")
        lines.extend(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("-o", dest="report")
    ap.add_argument("--criterion")
    ap.add_argument("--control-plane")
    a = ap.parse_args()
    raw, rows = load(a.out_dir, "raw.jsonl"), load(a.out_dir, "rows.jsonl")
    envs = [json.load(open(p)) for p in glob.glob(os.path.join(a.out_dir, "env-*.json"))]
    env = min(envs, key=lambda e: e.get("date_utc", "")) if envs else {}
    s = Side([r for r in raw if not r.get("tls")], [r for r in rows if not r.get("tls")])
    tls_sides = {t: Side([r for r in raw if r.get("tls") == t], [r for r in rows if r.get("tls") == t])
                 for t in ("h1", "h2") if any(r.get("tls") == t for r in raw + rows)}
    micro = criterion_results(a.criterion) if a.criterion and os.path.isdir(a.criterion) else []
    cp = json.load(open(a.control_plane)) if a.control_plane and os.path.exists(a.control_plane) else None

    L = [f"# Keyway benchmarks, {env.get('date_utc', time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}", ""]
    if env:
        cpu = env.get("cpu", "").replace("model name", "").strip(" :\t")
        mem = env.get("mem", "").split()
        mem = mem[1] if len(mem) > 1 and mem[0] == "Mem:" else env.get("mem")
        L.append(f"- machine: {cpu}, {env.get('nproc')} cores, {mem} RAM, {env.get('uname')}")
        tools = [env.get("nginx", ""), env.get("haproxy", "").split(" - ")[0],
                 env.get("wrk", "").split(" Copyright")[0],
                 "LiteLLM " + (env.get("litellm") or "not installed").replace("Version: ", ""), env.get("python", "")]
        L.append(f"- tools: {'; '.join(tools)}")
        L.append(f"- Keyway: commit {env.get('keyway_commit')}, binary `{env.get('keyway_bin')}`")
        counts = {}
        for r in raw:
            if r["scenario"] != "ttfb":
                k = (r["row"], r["scenario"], r["threads"], r["conns"], r.get("tls"))
                counts[k] = counts.get(k, 0) + 1
        per_row = {}
        for (row, *_), n in counts.items():
            per_row[row] = max(per_row.get(row, 0), n)
        runs = ", ".join(f"{row} {n}" for row, n in per_row.items())
        L.append(f"- runs: {env.get('duration_s')} s per load, rows interleaved over rounds (reversed every other "
                 f"round); runs per row and load: {runs}; medians over runs")
    debug = "/debug/" in env.get("keyway_bin", "")
    if debug:
        L += ["", "**Smoke run of a debug build: the figures check the harness, not Keyway's speed.**"]
    if s.raw or s.rows:
        L += ["", "## Side by side", "",
              "Same wrk load (`bench/wrk/post.lua`, a small chat request) against the fake upstream (nginx, two "
              "ports) directly and through each proxy; every proxy replaces the client's key with a pool key and "
              "balances over both ports. CPU per request is the proxy's own CPU (all its processes) / requests. "
              f"Medians over the runs during which the rest of the machine stayed below {QUIET_OTHER} busy cores "
              "(all runs, disturbed ones too, are in the details).", ""]
        main_table(s, L)
        L += ["", "## Streaming: time to first byte and event spacing", ""]
        ttfb_table(s, L)
    if tls_sides:
        L += ["", "## Side by side over TLS", "",
              "The same load, plain HTTP/1.1 from wrk to the proxy, but every proxy reaches the fake upstream "
              "over HTTPS (nginx, certificate from a private CA the proxies are given and verify): *HTTP/1.1 "
              "over TLS* = upstream ports offering only `http/1.1` by ALPN, *HTTP/2 over TLS* = ports offering "
              "`h2` (any HTTP/1.1 request there gets 426, so a row that fell back shows as errors). Ratios to "
              "nginx and haproxy are over the same upstream protocol; *× plain upstream* = the same row's JSON "
              f"rps in the plain side by side above. nginx has no HTTP/2 row: {NGINX_NO_H2}.", ""]
        tls_table(tls_sides, s, L)
    t = []
    if not debug:
        targets(s, micro, cp, t)
    if t:
        L += ["", "## Targets (Keyway, this run)", ""] + t
    if micro:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max(r["mtime"] for r in micro)))
        L += ["", f"## Micro-benchmarks (criterion, mean; measured {when})"]
        micro_tables(micro, L)
    if cp:
        c0 = cp[0]
        L += ["", f"## Control plane ({c0['pools']} pools, {c0['proxies']} simulated proxies, {c0['reps']} changes, "
                  f"{c0['threads']} runtime threads shared by controller and proxies)", ""]
        cp_table(cp, L)
    if raw or rows:
        L += ["", "## Details"]
        detail_tables(s, L)
        for t, ts in tls_sides.items():
            detail_tables(ts, L, f"{TLS_LABEL[t]}: ")
    text = "\n".join(L) + "\n"
    if a.report:
        with open(a.report, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
