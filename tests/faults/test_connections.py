"""Bounded connections, adversarially: slow request heads (slowloris), oversized heads, more
connections than max_connections, and a client that reads a long stream very slowly.

Bounds asserted here (2-core machine, other tests beside): with 200 slow-header connections
open, normal requests keep a p50 under 100 ms and the slow ones are cut at header_timeout; a
client reading a 64 MiB stream at ~200 KiB/s raises the switch's RSS by less than 16 MiB, and
the backend is held back (it cannot run ahead of the client by more than the sockets' buffers).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from support import harness
from support.factories import module_deployment
from support.harness import chat_body, post_json

KEY = "conn-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT = 4.0
EVENT = {"x": "a" * 16000}  # ~16 KB per SSE event
EVENTS = 4096  # ~64 MiB in all


@module_deployment("conn")
def bounded(d):
    s = d.scripted_unit("s", {"routes": {
        "/v1/chat/completions": {"sse": {"repeat": EVENT, "count": EVENTS}},
        "/v1/completions": {"json": {"ok": True}}}})
    daemon = d.up({"s": {"unit": s.unit, "url": s.url}}, api_keys=[KEY], header_timeout=HEADER_TIMEOUT)
    return daemon, s


def _addr(daemon) -> tuple[str, int]:
    host, port = daemon.listen.rsplit(":", 1)
    return host, int(port)


async def _slow_head(host: str, port: int, stop: asyncio.Event, heads: list) -> tuple[float, float | None]:
    """A slowloris client: a request head one byte every 0.5 s (counted in `heads` once begun).
    (opened at, closed by the server at)"""
    reader, writer = await asyncio.open_connection(host, port)
    opened = time.monotonic()
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    heads.append(opened)

    async def trickle():
        while not stop.is_set():
            await asyncio.sleep(0.5)
            writer.write(b"a")
            try:
                await writer.drain()
            except ConnectionError:
                return

    task = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 10)
        assert data == b"", data  # cut off without an answer
        return opened, time.monotonic()
    except (asyncio.TimeoutError, ConnectionError):
        return opened, None
    finally:
        task.cancel()
        writer.close()


async def test_slow_headers_do_not_slow_normal_requests_and_are_cut(bounded):
    daemon, _ = bounded
    host, port = _addr(daemon)
    async with aiohttp.ClientSession() as http:
        status, _, _ = await post_json(http, daemon.url + "/v1/completions", {"model": "s"}, headers=AUTH)
        assert status == 200  # the model is up before timing starts
        stop, heads = asyncio.Event(), []
        slow = [asyncio.create_task(_slow_head(host, port, stop, heads)) for _ in range(200)]
        await harness.wait_for_async(lambda: len(heads) == 200 and harness.accept_queue(port) == 0, 30,
                                     what="all 200 slow heads begun and accepted by the switch")
        times = []
        for i in range(40):
            t0 = time.monotonic()
            if i % 2:
                async with http.get(daemon.url + "/v1/models", headers=AUTH) as resp:
                    assert resp.status == 200
                    await resp.read()
            else:
                status, _, _ = await post_json(http, daemon.url + "/v1/completions", {"model": "s"}, headers=AUTH)
                assert status == 200
            times.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*slow)
        stop.set()
    p50 = statistics.median(times)
    print(f"p50 {p50 * 1000:.1f} ms, max {max(times) * 1000:.1f} ms with 200 slow-header connections")
    assert p50 < 0.1, times
    lived = [closed - opened for opened, closed in results if closed is not None]
    assert len(lived) == 200, f"{200 - len(lived)} slow connections were never cut"
    assert HEADER_TIMEOUT - 0.5 < min(lived) and max(lived) < HEADER_TIMEOUT + 3, (min(lived), max(lived))


def _raw(daemon, data: bytes) -> bytes:
    """Send `data` as is; the first bytes of the answer."""
    with socket.create_connection(_addr(daemon), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


@pytest.mark.parametrize("what, head", [
    ("a 10 KB header", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"),
    ("a 9 KB request line", b"GET /health?" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    ("100 headers", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(100))
     + b"\r\n"),
])
def test_oversized_heads_are_refused(bounded, what, head):
    daemon, _ = bounded
    answer = _raw(daemon, head)
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), (what, answer[:200])


def test_large_but_allowed_heads_pass(bounded):
    daemon, _ = bounded
    head = (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nX-Big: "
            + b"a" * 8000 + b"\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(50)) + b"Connection: close\r\n\r\n")
    assert _raw(daemon, head).startswith(b"HTTP/1.1 200")


def test_connections_past_max_connections_are_refused_at_once(deploy):
    daemon = deploy.up({"a": "a.service"}, max_connections=20)
    held = [socket.create_connection(_addr(daemon), timeout=10) for _ in range(20)]
    try:
        harness.wait_for(lambda: harness.accept_queue(_addr(daemon)[1]) == 0, 10, what="all 20 accepted")
        t0 = time.monotonic()
        answer = _raw(daemon, b"")
        took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"too_many_connections" in answer
        assert took < 1.0, took
    finally:
        for sock in held[:10]:
            sock.close()
    try:
        harness.wait_for(lambda: harness.http_get(daemon.url + "/health")[0] == 200, 5, what="a free place")
    finally:
        for sock in held[10:]:
            sock.close()
    assert "refused a connection: 20 are open (max_connections)" in daemon.log()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_slow_reader_does_not_grow_the_switchs_memory(bounded):
    daemon, s = bounded
    pid = daemon.proc.pid
    body = chat_body("s", stream=True)
    async with aiohttp.ClientSession() as http:  # once at full speed: the baseline includes a whole stream
        status, raw, _ = await post_json(http, daemon.url + "/v1/chat/completions", body, headers=AUTH)
        assert status == 200 and len(raw) > EVENTS * 16000
    base = _rss(pid)
    n = len(s.records("request"))

    import json
    payload = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(_addr(daemon))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    read, peak = 0, base
    try:
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            read += len(sock.recv(4096))
            peak = max(peak, _rss(pid))
            await asyncio.sleep(0.02)  # ~200 KB/s
        chunks = [r for r in s.records("chunk") if r["n"] == n + 1]
    finally:
        sock.close()
    written = len(chunks) * (len(json.dumps(EVENT)) + 8)
    grew = peak - base
    print(f"slow reader: read {read >> 10} KiB, backend wrote {written >> 20} MiB of {EVENTS * 16000 >> 20}, "
          f"switch RSS {base >> 20} MiB -> peak {peak >> 20} MiB (+{grew >> 10} KiB)")
    assert grew < 16 << 20, grew
    assert written - read < 24 << 20, (written, read)  # held back: not the whole 64 MiB
