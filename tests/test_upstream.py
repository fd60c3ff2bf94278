"""The relay's HTTP/1.1 client (`backends/upstream.py`) against a real socket server that answers
with raw bytes, sent in pieces split at awkward places: framing, errors, request bodies, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llm_switch.backends.upstream import BrokenOff, CannotConnect, NoAnswer, send

pytestmark = [pytest.mark.asyncio, pytest.mark.unit]


@contextlib.asynccontextmanager
async def raw_server(answer: bytes, *, pieces: int = 1, close: bool = True, seen: list | None = None):
    """A server on 127.0.0.1 that reads one request head (and its body, if any) and then writes
    `answer` in `pieces` writes with a pause between them; `seen` gets what it read."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        if b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in head.lower():
            body = await reader.readuntil(b"0\r\n\r\n")
        if seen is not None:
            seen.append((head, body))
        step = max(1, -(-len(answer) // pieces))
        for i in range(0, len(answer), step):
            writer.write(answer[i:i + step])
            await writer.drain()
            await asyncio.sleep(0.005)
        if close:
            writer.close()
        else:
            await asyncio.sleep(30)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def fetch(url: str, method: str = "POST", body: bytes = b"{}") -> tuple[int, str, dict, bytes]:
    async with await send(url, method, "/v1/x", {"Content-Type": "application/json"}, body) as answer:
        return answer.status, answer.reason, dict(answer.headers), await answer.read()


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"f\r\ndata: {\"a\":1}\n\n\r\n"
           b"10;ext=1\r\ndata: [DONE]\n\n\r\n\r\n"  # a chunk extension; then the 0-chunk
           b"0\r\nX-Trailer: t\r\n\r\n")


@pytest.mark.parametrize("pieces", [1, 3, 7, 40, len(CHUNKED)])
async def test_chunked_answer_read_whole_however_it_arrives(pieces):
    async with raw_server(CHUNKED, pieces=pieces) as url:
        status, _, headers, body = await fetch(url)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert body == b'data: {"a":1}\n\ndata: [DONE]\n\n\r\n'


@pytest.mark.parametrize("answer, status, reason, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "OK", b"hello"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}", 404, "Not Found", b"{}"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "OK", b""),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, "No Content", b""),
    (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, "OK", b"until the end"),  # no length: until EOF
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", 201, "Created", b"x"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", 200, "OK", b"abc"),  # more than it said: cut
    (b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", 200, "", b"x"),  # no reason phrase
])
async def test_answers_framed_every_way(answer, status, reason, body):
    async with raw_server(answer, pieces=2) as url:
        got = await fetch(url)
    assert (got[0], got[1], got[3]) == (status, reason, body)


async def test_head_request_has_no_body_whatever_its_length_says():
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n") as url:
        assert await fetch(url, "HEAD", b"") == (200, "OK", {"Content-Length": "99"}, b"")


async def test_repeated_headers_are_kept():
    async with raw_server(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n") as url:
        async with await send(url, "GET", "/", {}, b"") as answer:
            assert answer.headers.getall("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("answer, error", [
    (b"", NoAnswer),  # closed without a word
    (b"HTTP/1.1 200 OK\r\nContent-Len", NoAnswer),  # closed inside the head
    (b"SSH-2.0-OpenSSH\r\n\r\n", NoAnswer),  # not HTTP
    (b"HTTP/1.1 2000 OK\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", BrokenOff),  # closed before its length
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", BrokenOff),  # closed inside a chunk
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", BrokenOff),  # no hex size
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n", BrokenOff),  # too long
])
async def test_broken_answers_raise_what_broke(answer, error):
    async with raw_server(answer, pieces=2) as url:
        with pytest.raises(error):
            await fetch(url)


async def test_body_read_before_the_break_is_passed_on_first():
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n5\r\nhel"
    got = b""
    async with raw_server(answer, pieces=3) as url:
        async with await send(url, "POST", "/", {}, b"{}") as upstream:
            with pytest.raises(BrokenOff):
                async for chunk in upstream.chunks():
                    got += chunk
    assert got.startswith(b"data: ")


async def test_nothing_listening_is_cannot_connect():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(CannotConnect):
        await send(f"http://127.0.0.1:{port}", "POST", "/", {}, b"{}")


async def test_request_head_and_bodies_as_sent():
    seen: list = []
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(ok, seen=seen) as url:
        port = url.rsplit(":", 1)[1]
        headers = {"Content-Type": "application/json", "Content-Length": "999", "Host": "evil",
                   "X-Bad": "a\r\nInjected: yes", "X-Ok": "é", "X-Raw": "\udcff"}
        await (await send(url, "POST", "/v1/chat/completions?a=1", headers, b'{"m":1}')).read()

        async def pieces():
            yield b"ab"
            yield b""
            yield b"cde"
        await (await send(url, "POST", "/up", {}, pieces())).read()
        await (await send(url, "GET", "/", {"X-Lone": "\ud800"}, b"")).read()  # no bytes on the wire make this
        await (await send(url, "POST", "/upload", {"Content-Length": "5"}, pieces())).read()  # goes as it came
    head, body = seen[0]
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?a=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines and "Content-Length: 7" in lines and "Connection: close" in lines
    assert "X-Ok: é" in lines and b"X-Raw: \xff\r\n" in head.replace("é".encode(), b"")
    assert not any("Injected" in x or "evil" in x or "999" in x for x in lines)
    assert body == b'{"m":1}'
    head, body = seen[1]
    assert b"Transfer-Encoding: chunked" in head and body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    assert b"X-Lone: ?\r\n" in seen[2][0]
    head, body = seen[3]
    assert b"Content-Length: 5\r\n" in head and b"chunked" not in head and body == b"abcde"


async def test_a_slow_reader_stops_the_backend_instead_of_filling_memory():
    """The backend writes 64 MiB; nothing is read: the client holds a bounded amount, the rest waits
    in the kernel's buffers and the backend's writes block."""
    written = 0
    blocked = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        block = b"x" * (1 << 16)
        while written < 64 << 20:
            writer.write(block)
            written += len(block)
            drain = asyncio.ensure_future(writer.drain())
            if not blocked.is_set() and not (await asyncio.wait([drain], timeout=1.0))[0]:
                blocked.set()  # nothing read for a second: the client's window is shut
            await drain

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with await send(url, "POST", "/", {}, b"{}") as answer:
            await asyncio.wait_for(blocked.wait(), 20)
            assert answer._held <= (1 << 19) + (1 << 16)  # paused near _PAUSE_AT, not 64 MiB
            assert written < 32 << 20
            got = 0
            async for chunk in answer.chunks():  # reading again resumes it
                got += len(chunk)
                if got > 8 << 20:
                    break
            assert got > 8 << 20
    finally:
        server.close()
