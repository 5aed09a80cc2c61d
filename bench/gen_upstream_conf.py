#!/usr/bin/env python3
"""Generate the fake OpenAI-style upstream's nginx config (to the path given, default
$RUN_DIR/upstream-nginx.conf).

nginx (1 worker) answers on 127.0.0.1:18000 and 127.0.0.1:18001:
  POST /v1/chat/completions                -> fixed ~300 B chat.completion JSON
  POST /v1/chat/completions + X-Fake-Stream -> fixed SSE body (20 chunks + [DONE])
  POST /sse/v1/chat/completions            -> same SSE body (for LiteLLM, which
                                              does not forward client headers)
Every request must carry `Authorization: Bearer sk-upstream-...`; anything else
gets 401, so a proxy that fails to inject the pool key shows up as non-2xx.
The SSE body is sent by nginx in one write (Content-Length, not chunked): this upstream
measures SSE *throughput*; pacing is paced_upstream.py's job.

With `--tls DIR` the same server is also served over HTTPS, with a private CA made in DIR
(openssl; ca.pem is what the proxies trust, server.pem/server.key nginx's certificate for
`localhost` and 127.0.0.1; kept if already there):
  127.0.0.1:18443, :18444   TLS, ALPN http/1.1 only (`tls-h1`)
  127.0.0.1:18445, :18446   TLS, ALPN h2 (`tls-h2`); any request that is not HTTP/2 gets 426
Their responses carry X-Upstream-Proto ($server_protocol) and X-Upstream-TLS ($ssl_protocol),
which the harness checks before the load.
"""
import json
import os
import subprocess
import sys

TLS_PORTS = {"h1": (18443, 18444), "h2": (18445, 18446)}

body = {
    "id": "chatcmpl-bench1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0,
                 "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}
JSON = json.dumps(body, separators=(",", ":"))

chunks = []
for i in range(20):
    delta = {"content": f"tok{i:02d} "}
    if i == 0:
        delta = {"role": "assistant", "content": "tok00 "}
    c = {"id": "chatcmpl-bench1", "object": "chat.completion.chunk", "created": 1700000000,
         "model": "gpt-4o-mini-2024-07-18",
         "choices": [{"index": 0, "delta": delta, "finish_reason": ("stop" if i == 19 else None)}]}
    chunks.append("data: " + json.dumps(c, separators=(",", ":")) + "\\n\\n")
SSE = "".join(chunks) + "data: [DONE]\\n\\n"

for s in (JSON, SSE):
    assert "'" not in s and "$" not in s



def make_ca(d):
    """A private CA and a server certificate for localhost/127.0.0.1 (ECDSA P-256, 30 days),
    made once: the files are kept when all are there."""
    files = [os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key")]
    if all(os.path.exists(f) for f in files):
        return
    os.makedirs(d, exist_ok=True)
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
        "-subj", "/CN=Keyway bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(os.path.join(d, "server-ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "30", "-extfile", "server-ext.cnf")


def server(listens, headers, extra=""):
    """One server block with the fake API; `headers` are added to every response."""
    listen = "".join(f"        listen {l} backlog=4096;\n" for l in listens)
    hdr = "".join(f"            add_header {h} always;\n" for h in headers)
    return f"""    server {{
{listen}{extra}{hdr.replace("            ", "        ")}        location = /v1/chat/completions {{
            if ($auth_ok = 0) {{ return 401; }}
            if ($http_x_fake_stream) {{ rewrite ^ /sse/v1/chat/completions last; }}
            default_type application/json;
            return 200 '{JSON}';
        }}
        location = /sse/v1/chat/completions {{
            if ($auth_ok = 0) {{ return 401; }}
            default_type text/event-stream;
            add_header Cache-Control no-cache always;
{hdr}            return 200 '{SSE}';
        }}
        location / {{ return 404; }}
    }}
"""


args = sys.argv[1:]
tls_dir = None
if "--tls" in args:
    i = args.index("--tls")
    tls_dir = os.path.abspath(args[i + 1])
    del args[i:i + 2]
out = args[0] if args else os.path.join(
    os.environ.get("RUN_DIR", "/tmp/keyway-bench-run"), "upstream-nginx.conf")

servers = server(["127.0.0.1:18000", "127.0.0.1:18001"], ["X-Upstream-Port $server_port"])
tls = ""
if tls_dir:
    make_ca(tls_dir)
    tls = f"""    ssl_certificate {tls_dir}/server.pem;
    ssl_certificate_key {tls_dir}/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:upstream_tls:1m;
"""
    hdrs = ["X-Upstream-Port $server_port", "X-Upstream-Proto $server_protocol",
            "X-Upstream-TLS $ssl_protocol"]
    h1, h2 = TLS_PORTS["h1"], TLS_PORTS["h2"]
    servers += server([f"127.0.0.1:{p} ssl" for p in h1], hdrs)
    # nginx 1.22: http2 is a parameter of `listen` (1.25+: the `http2 on;` directive). Only
    # these sockets offer h2 by ALPN; a client that falls back to HTTP/1.1 here gets 426.
    servers += server([f"127.0.0.1:{p} ssl http2" for p in h2], hdrs,
                      '        if ($server_protocol != "HTTP/2.0") { return 426; }\n')

conf = f"""# GENERATED by gen_upstream_conf.py -- do not edit by hand.
# JSON body {len(JSON)} bytes; SSE body 20 chunks + [DONE].
worker_processes 1;
pid upstream.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path tmp_body;
    proxy_temp_path tmp_proxy;
    map $http_authorization $auth_ok {{
        "~^Bearer sk-upstream-" 1;
        default 0;
    }}
{tls}{servers}}}
"""
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    f.write(conf)
print(f"wrote {out} (json body {len(JSON)} bytes)")
