"""The relay's HTTP/1.1 client (`backends/upstream.py`) against a real socket server that answers
with raw bytes, sent in pieces split at awkward places: framing, errors, request bodies, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from multidict import CIMultiDict

from llm_switch.backends.upstream import BrokenOff, CannotConnect, NoAnswer, framing_of, send

pytestmark = pytest.mark.unit


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


# -- framing held to RFC 9112 (llhttp): each malformed answer is an error, soon, in bounded memory --


@contextlib.asynccontextmanager
async def endless_server(head: bytes, filler: bytes, written: list[int]):
    """A server that answers `head`, then writes `filler` until the client hangs up (or 256 MiB);
    `written` gets how many bytes it wrote."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        sent = len(head)
        try:
            while sent < 256 << 20:
                writer.write(filler)
                sent += len(filler)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            written.append(sent)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


OK_HEAD = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("answer, error", [
    (OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", NoAnswer),
    (OK_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", NoAnswer),
    (OK_HEAD + b"Content-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc", NoAnswer),
    (b"HTTP/1.1 000 OK\r\nContent-Length: 1\r\n\r\nx", NoAnswer),  # hung forever before
    (b"HTTP/1.1 099 OK\r\nContent-Length: 1\r\n\r\nx", NoAnswer),
    (b"HTTP/1.1 600 OK\r\nContent-Length: 1\r\n\r\nx", NoAnswer),
    (b"HTTP/1.1 999 OK\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 20 OK\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw", NoAnswer),
    (b"HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", NoAnswer),
    (OK_HEAD + b"Content-Length: -5\r\n\r\nx", NoAnswer),  # passed through before
    (OK_HEAD + b"Content-Length: 5, 5\r\n\r\nhello", NoAnswer),
    (OK_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", NoAnswer),
    (OK_HEAD + b"Content-Length: 99999999999999999999999\r\n\r\nx", NoAnswer),
    (OK_HEAD + b"Content-Length: \r\n\r\nx", NoAnswer),
    (OK_HEAD + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n", NoAnswer),
    (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", NoAnswer),  # bare LF
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n", BrokenOff),  # int(_, 16) took it before
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n", BrokenOff),
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n", BrokenOff),
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n", BrokenOff),
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab0\r\n\r\n", BrokenOff),  # no CRLF after the data
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nno colon\r\n\r\n", BrokenOff),  # a bad trailer
])
async def test_malformed_answers_are_errors_not_hangs(answer, error):
    async with raw_server(answer, pieces=2) as url:
        with pytest.raises(error):
            await asyncio.wait_for(fetch(url), 10)


@pytest.mark.parametrize("te", [b"notchunked", b"gzip", b"chunked, gzip", b"chunked;q=1", b"chunked,",
                                b"x chunked", b"chunked\r\nTransfer-Encoding: gzip"])
async def test_a_transfer_coding_other_than_chunked_last_is_read_to_the_close_as_it_came(te):
    raw = b"5\r\nhello\r\n0\r\n\r\n"
    async with raw_server(OK_HEAD + b"Transfer-Encoding: " + te + b"\r\n\r\n" + raw, pieces=3) as url:
        async with await send(url, "POST", "/", {}, b"{}") as answer:
            assert answer.length is None
            assert await asyncio.wait_for(answer.read(), 10) == raw


@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b" chunked", b"gzip, chunked", b",chunked",
                                b"gzip\r\nTransfer-Encoding: chunked"])
async def test_chunked_last_is_unchunked(te):
    async with raw_server(OK_HEAD + b"Transfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n") as url:
        async with await send(url, "POST", "/", {}, b"{}") as answer:
            assert answer.length is None
            assert await asyncio.wait_for(answer.read(), 10) == b"hello"


@pytest.mark.parametrize("method, answer, length, body", [
    ("POST", OK_HEAD + b"Content-Length: 5\r\n\r\nhello", 5, b"hello"),
    ("POST", OK_HEAD + b"Content-Length: 0\r\n\r\n", 0, b""),
    ("POST", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None, b"hello"),
    ("POST", OK_HEAD + b"\r\nhello", None, b"hello"),  # to the close
    ("POST", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", None, b""),  # no body, whatever it says
    ("POST", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", None, b""),
    ("HEAD", OK_HEAD + b"Content-Length: 99\r\n\r\n", 99, b""),  # the length of what a GET would get
])
async def test_length_is_set_only_where_a_length_frames_the_body(method, answer, length, body):
    async with raw_server(answer) as url:
        async with await send(url, method, "/", {}, b"") as upstream:
            assert upstream.length == length
            assert await asyncio.wait_for(upstream.read(), 10) == body


async def test_interim_answers_are_read_in_a_loop_up_to_a_cap():
    final = OK_HEAD + b"Content-Length: 2\r\n\r\nok"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with raw_server(interim * 31 + b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + final, pieces=5) as url:
        assert await asyncio.wait_for(fetch(url), 10) == (200, "OK", {"Content-Length": "2"}, b"ok")
    async with raw_server(interim * 5000 + final, pieces=7) as url:  # overflowed the recursion before
        with pytest.raises(NoAnswer, match="interim"):
            await asyncio.wait_for(fetch(url), 10)


@pytest.mark.parametrize("head, filler, error", [
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Big: ", b"a" * 65536, BrokenOff),
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n", b"X-Many: 1\r\n" * 6000, BrokenOff),
    (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;", b"e" * 65536, BrokenOff),  # a chunk extension
    (OK_HEAD + b"X-Big: ", b"a" * 65536, NoAnswer),
    (OK_HEAD, b"X-Many: 1\r\n" * 6000, NoAnswer),
    (b"HTTP/1.1 200 ", b"reason " * 10000, NoAnswer),
])
async def test_endless_head_or_trailers_are_cut_off_in_bounded_memory(head, filler, error):
    """Trailers were buffered without limit, with quadratic copying (200 MiB never ended)."""
    written: list[int] = []
    async with endless_server(head, filler, written) as url:
        with pytest.raises(error, match="over 65536 bytes"):
            await asyncio.wait_for(fetch(url), 20)
        async with asyncio.timeout(20):
            while not written:
                await asyncio.sleep(0.01)
    assert written[0] < 32 << 20  # the rest waited in the sockets' buffers until the client hung up


@pytest.mark.parametrize("status, head_only, fields, framing", [
    (200, False, {}, ("eof", None)),
    (200, False, {"Content-Length": "12"}, ("length", 12)),
    (200, False, {"Transfer-Encoding": "chunked"}, ("chunked", None)),
    (200, False, {"Transfer-Encoding": "CHUNKED "}, ("chunked", None)),
    (200, False, {"Transfer-Encoding": "gzip, chunked"}, ("chunked", None)),
    (200, False, {"Transfer-Encoding": "chunked, gzip"}, ("eof", None)),
    (200, False, {"Transfer-Encoding": "notchunked"}, ("eof", None)),
    (200, False, {"Transfer-Encoding": "chunked,"}, ("eof", None)),
    (204, False, {"Content-Length": "3"}, ("none", None)),
    (304, False, {"Transfer-Encoding": "chunked"}, ("none", None)),
    (200, True, {"Content-Length": "7"}, ("none", 7)),
    (200, True, {"Transfer-Encoding": "chunked"}, ("none", None)),
])
def test_framing_of(status, head_only, fields, framing):
    assert framing_of(status, CIMultiDict(fields), head_only) == framing
