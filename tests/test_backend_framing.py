"""Malformed answers from a backend, end to end (issue 18): each one is a 502 with an
OpenAI-shaped error, or, where the fault shows only after the answer's head went to the client,
an answer visibly cut (no last chunk, or short of its Content-Length); soon, and in bounded memory.

The backend is a raw TCP server in this process, so that the bytes on the wire are exactly the
ones in the table (no HTTP library would send them); the model's unit only keeps it `running`.
The switch, systemd and the client are real. The request names its answer in `X-Answer`."""

from __future__ import annotations

import contextlib
import json
import socketserver
import sys
import threading
from pathlib import Path

import aiohttp
import pytest

from support import harness

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"

# a 502 before anything went to the client
REFUSED = {
    "te-and-cl": OK + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "cl-and-te": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "status-000": b"HTTP/1.1 000 OK\r\nContent-Length: 1\r\n\r\nx",
    "status-600": b"HTTP/1.1 600 OK\r\nContent-Length: 1\r\n\r\nx",
    "status-abc": b"HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\nx",
    "length-negative": OK + b"Content-Length: -5\r\n\r\nhello",
    "length-twice": OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "length-list": OK + b"Content-Length: 5, 5\r\n\r\nhello",
    "interim-5000": b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + OK + b"Content-Length: 2\r\n\r\nok",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    "folded-header": OK + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
}
# 200 and part of the body went out: the client's answer must end visibly cut
CUT = {
    "chunk-size-0x": CHUNKED + b"0x2\r\nab\r\n0\r\n\r\n",
    "chunk-size-plus": CHUNKED + b"+2\r\nab\r\n0\r\n\r\n",
    "chunk-too-long": CHUNKED + b"2\r\nabc\r\n0\r\n\r\n",
    "closed-in-chunks": CHUNKED + b"5\r\nwor",
    "closed-short-of-length": OK + b"Content-Length: 10\r\n\r\nhello",
}
# the head, then this filler until the switch hangs up (trailers were buffered without limit)
# well framed: passed on as they came, with a Content-Length only where a length framed the body
PASSED = {  # name: (answer, the body the client gets, its Content-Length)
    "length": (OK + b"Content-Length: 5\r\n\r\nhello", b"hello", "5"),
    "chunked": (CHUNKED + b"0\r\nX-Trailer: t\r\n\r\n", b"hello", None),
    "to-the-close": (OK + b"\r\nhello", b"hello", None),
    # any coding but chunked last: read to the close, never de-chunked
    "notchunked": (OK + b"Transfer-Encoding: notchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                   b"5\r\nhello\r\n0\r\n\r\n", None),
    "chunked-then-gzip": (OK + b"Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                          b"5\r\nhello\r\n0\r\n\r\n", None),
}
ANSWERS = {**REFUSED, **CUT, **{name: answer for name, (answer, _, _) in PASSED.items()}}
ENDLESS = {
    "endless-trailer": (CHUNKED + b"0\r\nX-Big: ", b"a" * 65536),
    "endless-trailers": (CHUNKED + b"0\r\n", b"X-Many: 1\r\n" * 6000),
    "endless-head": (OK + b"X-Big: ", b"a" * 65536),
}
ANSWER_TIMEOUT = 30  # s: a hang (HTTP/1.1 000 hung forever) fails here


class RawBackend(socketserver.ThreadingTCPServer):
    """Answers /health; any other request with the bytes its `X-Answer` names, then closes.
    `written[name]` is how many bytes an endless answer wrote before the switch hung up."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.written: dict[str, int] = {}
        self.done = threading.Condition()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.StreamRequestHandler):
    server: RawBackend

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline(65536)
            if not line:
                return
            head += line
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        self.rfile.read(int(fields.get(b"content-length", b"0")))
        name = fields.get(b"x-answer", b"").decode()
        if head.startswith(b"GET /health "):
            self.wfile.write(OK + b'Content-Length: 15\r\n\r\n{"status":"ok"}')
        elif name in ENDLESS:
            self._flood(name, *ENDLESS[name])
        else:
            self.wfile.write(ANSWERS.get(name, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    def _flood(self, name: str, head: bytes, filler: bytes) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            self.wfile.write(head)
            while sent < 256 << 20:  # far past any bound, short of forever
                self.wfile.write(filler)
                sent += len(filler)
        with self.server.done:
            self.server.written[name] = sent
            self.server.done.notify_all()


@pytest.fixture(scope="module")
def raw(user_manager, llama_server, tmp_path_factory):
    backend = RawBackend()
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    d = harness.Deployment(user_manager, tmp_path_factory.mktemp("framing"), "framing", llama=llama_server)
    try:
        keeper = d.command_unit("raw", [sys.executable, "-c", "import time; time.sleep(1e9)"])
        daemon = d.up({"raw": {"unit": keeper.unit, "url": backend.url}})
        yield daemon, backend
    finally:
        d.close()
        backend.shutdown()
        backend.server_close()


async def ask(daemon, name: str) -> tuple[int, dict, bytes | Exception]:
    """POST /v1/completions answered with `name`: (status, headers, body or how reading it broke)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)) as http:
        async with http.post(daemon.url + "/v1/completions", json={"model": "raw", "prompt": "x"},
                             headers={"X-Answer": name}) as resp:
            try:
                body: bytes | Exception = await resp.read()
            except aiohttp.ClientPayloadError as e:
                body = e
            return resp.status, dict(resp.headers), body


def peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to VmRSS


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_a_malformed_head_is_a_502(raw, name):
    daemon, _ = raw
    status, headers, body = await ask(daemon, name)
    assert status == 502, body
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("backend_error", "backend_unreachable"), error
    assert "raw:" in error["message"] and "did not answer" in error["message"], error


@pytest.mark.parametrize("name", sorted(CUT))
async def test_a_fault_after_the_head_went_out_cuts_the_answer_visibly(raw, name):
    daemon, _ = raw
    status, headers, body = await ask(daemon, name)
    assert status == 200
    assert isinstance(body, aiohttp.ClientPayloadError), body  # no last chunk, or short of its length
    if name == "closed-short-of-length":
        assert headers["Content-Length"] == "10"
    else:
        assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked"


@pytest.mark.parametrize("name", sorted(ENDLESS))
async def test_endless_heads_and_trailers_end_soon_in_bounded_memory(raw, name):
    daemon, backend = raw
    pid = daemon.proc.pid
    peak_rss_reset(pid)
    before = kib(pid, "VmRSS")
    status, headers, body = await ask(daemon, name)
    assert status == (502 if name == "endless-head" else 200)
    if status == 200:
        assert isinstance(body, aiohttp.ClientPayloadError), body
    with backend.done:
        assert backend.done.wait_for(lambda: name in backend.written, ANSWER_TIMEOUT)
    assert backend.written[name] < 32 << 20  # it was cut off, not read to the 256 MiB
    assert kib(pid, "VmHWM") - before < 16 << 10, "the switch held what it was sent"


@pytest.mark.parametrize("name", sorted(PASSED))
async def test_content_length_only_where_a_length_framed_the_body(raw, name):
    daemon, _ = raw
    _, body, length = PASSED[name]
    status, headers, got = await ask(daemon, name)
    assert (status, got) == (200, body)
    assert headers.get("Content-Length") == length
