#!/usr/bin/env python3
"""Paced fake upstream for the streaming (TTFB and chunk spacing) scenario.

Same API as the nginx fake upstream (gen_upstream_conf.py), but SSE events are written one
by one, CHUNK_DELAY_MS apart (HTTP/1.1 chunked encoding, one HTTP chunk per event), like an
LLM emitting tokens. Every event carries its send time: CLOCK_MONOTONIC (shared by every process
on the machine) taken just before the event is handed to the socket, in its token text
(`tok03@<ns> `), so a client on the same machine can tell how long each event took to reach
it, with or without a proxy between.
Python standard library only (asyncio); slow: use it for low-concurrency scenarios only.

usage: paced_upstream.py PORT [PORT...]   env: CHUNK_DELAY_MS (default 20), CHUNKS (20)
"""
import asyncio
import json
import os
import sys
import time

DELAY = float(os.environ.get("CHUNK_DELAY_MS", "20")) / 1000
NCHUNK = int(os.environ.get("CHUNKS", "20"))
MODEL = "gpt-4o-mini-2024-07-18"
JSON = json.dumps({
    "id": "chatcmpl-bench1", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}, separators=(",", ":")).encode()


def event(i):
    # The send time rides in the token text, which proxies that re-encode events keep.
    text = f"tok{i:02d}@{time.monotonic_ns()} "
    delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
    c = {"id": "chatcmpl-bench1", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
         "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == NCHUNK - 1 else None}]}
    return ("data: " + json.dumps(c, separators=(",", ":")) + "\n\n").encode()


def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)


async def read_body(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def handle(reader, writer):
    port = writer.get_extra_info("sockname")[1]
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            _method, path, _ = line.decode("latin1").split(" ", 2)
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, v = h.decode("latin1").split(":", 1)
                headers[k.strip().lower()] = v.strip()
            body = await read_body(reader, headers)
            close = headers.get("connection", "").lower() == "close"
            if not headers.get("authorization", "").startswith("Bearer sk-upstream-"):
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            elif path.startswith("/sse/") or "x-fake-stream" in headers or b'"stream":true' in body:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                             b"X-Upstream-Port: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % port)
                for i in range(NCHUNK):
                    if i:
                        await asyncio.sleep(DELAY)
                    writer.write(chunk(event(i)))  # the transport sends at once when idle
                    await writer.drain()
                writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream-Port: %d\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (port, len(JSON), JSON))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main(ports):
    servers = [await asyncio.start_server(handle, "127.0.0.1", p, backlog=1024) for p in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main([int(p) for p in sys.argv[1:]] or [18000, 18001]))
