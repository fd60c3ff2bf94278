"""The relay's HTTP/1.1 client: one request on a new connection, the answer read as it arrives.

The relay opens a new connection to the backend for each request (see `Backends`), sends a body
of bytes or of chunks, and passes the answer on chunk by chunk. aiohttp's client session does
much more per request (a connector and its pool, happy eyeballs, request and response objects,
cookies, redirects): about a quarter of the relay's CPU time per request, the largest single part
of what the relay adds to a request. This is the part the relay needs, on the event loop's own
transports; the answer is parsed by llhttp (`httptools`) and held to RFC 9112's framing rules
(docs/design.md, "Backend framing").

Errors: `CannotConnect` (nothing listens: the unit may have stopped), `NoAnswer` (no valid
status line and headers), `BrokenOff` (the body ended early or was malformed)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from functools import lru_cache
from ipaddress import ip_address
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

CONNECT_TIMEOUT = 10.0  # s; generation may take minutes, so only connecting is bounded
_PAUSE_AT, _RESUME_AT = 1 << 18, 1 << 16  # bytes of answer held: stop reading from the backend, read again
_MAX_FRAMING = 1 << 16  # bytes of a head, a chunk's size line or the trailers (one read more at most)
_MAX_INTERIM = 32  # interim (1xx) answers before the final one
_OWN_HEADERS = frozenset({"host", "connection", "transfer-encoding"})


class CannotConnect(Exception):
    pass


class NoAnswer(Exception):
    pass


class BrokenOff(Exception):
    pass


class _Refused(Exception):
    """Stops llhttp from within a callback; the reason is the answer's error by then."""


class Target(NamedTuple):
    host: str
    port: int
    tls: bool
    host_header: str


@lru_cache(maxsize=64)
def target_of(url: str) -> Target:
    """`http(s)://host[:port]` (a checked config value) as where to connect."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    try:
        bracketed = f"[{host}]" if ip_address(host).version == 6 else host
    except ValueError:
        bracketed = host
    return Target(host, port, tls, bracketed if parts.port is None else f"{bracketed}:{port}")


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def send(url: str, method: str, target: str, headers: dict[str, str],
               body: bytes | AsyncIterable[bytes]) -> Answer:
    """Send `method target` with `headers` and `body` to the backend at `url`; returns once the
    answer's status line and headers are in. Close the answer (`async with`) when done with it."""
    where = target_of(url)
    loop = asyncio.get_running_loop()
    answer = Answer(loop, head_only=method == "HEAD")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await loop.create_connection(lambda: answer, where.host, where.port,
                                         ssl=_tls_context() if where.tls else None)
    except TimeoutError:
        raise NoAnswer(f"no connection within {CONNECT_TIMEOUT:g} s") from None
    except OSError as e:
        raise CannotConnect(str(e)) from None
    try:
        await answer.send(*_head(method, target, where.host_header, headers, body), body)
    except BaseException:
        answer.close()
        raise
    return answer


def _head(method: str, target: str, host: str, headers: dict[str, str],
          body: bytes | AsyncIterable[bytes]) -> tuple[bytes, bool]:
    """The request's head, and whether its body goes chunked: a streamed body goes as it came
    where the caller gives its Content-Length (an upload), else chunked."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    length = None
    for name, value in headers.items():
        lower = name.lower()
        if lower == "content-length":
            length = value
        # the rest of the framing is this client's to set; and never let a value end the head
        elif lower not in _OWN_HEADERS and "\n" not in value and "\r" not in value:
            lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    chunked = False
    if isinstance(body, (bytes, bytearray)):
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
    elif length is not None and length.isdigit():
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Transfer-Encoding: chunked")
        chunked = True
    lines += ["", ""]
    head = "\r\n".join(lines)
    try:
        return head.encode("utf-8", "surrogateescape"), chunked  # bytes as they came from the client
    except UnicodeEncodeError:
        return head.encode("utf-8", "replace"), chunked  # a lone surrogate that came from nowhere on the wire


def framing_of(status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str],
               head_only: bool) -> tuple[str, int | None]:
    """How a final answer's body is framed, as llhttp reads it (RFC 9112 §6.3): "none",
    "chunked", "length" or "eof" (until the connection closes); and the length to tell the client,
    None unless the length frames the body (or a HEAD answer gives it)."""
    # llhttp has checked Content-Length by now: digits only, once, never beside Transfer-Encoding
    length = headers.get("Content-Length")
    if head_only:
        return "none", None if length is None else int(length)
    if status in (204, 304):
        return "none", None
    if "Transfer-Encoding" in headers:
        last = ",".join(headers.getall("Transfer-Encoding")).rpartition(",")[2]
        return ("chunked" if last.strip().lower() == "chunked" else "eof"), None
    if length is not None:
        return "length", int(length)
    return "eof", None


class Answer(asyncio.Protocol):
    """One request's connection and its answer: `status`, `reason`, `headers`, `content_type`,
    `length` (set only when a length frames the body), then the body by `chunks()` (what has
    arrived, as it arrives) or `read()` (all of it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, head_only: bool = False) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.length: int | None = None
        self._loop = loop
        self._head_only = head_only
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._reason = bytearray()
        self._fields: CIMultiDict[str] = CIMultiDict()  # the head being read
        self._framing = ""  # "" until the final head is in; then as framing_of says
        self._framing_bytes = 0  # read since the last head, or chunk, ended (less the body in it)
        self._interim = 0
        self._body: deque[bytes] = deque()
        self._held = 0
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        self._can_write: asyncio.Future | None = None

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type")
        return value.partition(";")[0].strip().lower() if value else "application/octet-stream"

    # -- for the relay ---------------------------------------------------------------------------

    async def send(self, head: bytes, chunked: bool, body: bytes | AsyncIterable[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        if isinstance(body, (bytes, bytearray)):
            if len(body) < 1 << 16:
                transport.write(head + body)  # the usual small request: one write, one segment
            else:
                transport.write(head)
                transport.write(body)
        else:
            transport.write(head)
            async for piece in body:
                if self._error is not None or self.status:
                    break  # it answered (or went) before taking it all: the answer tells why
                if piece:
                    transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                    await self._writable()
            else:
                if chunked:
                    transport.write(b"0\r\n\r\n")
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each time, all that has arrived since the last."""
        while True:
            if self._body:
                data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._held = 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                await self._wait()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Drop the connection (at once: an answer still coming is not wanted any more)."""
        if self._transport is not None:
            self._transport.abort()

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done or self._error is not None or self._parser is None:
            return  # what follows the answer's end (or its fault) is not read
        self._framing_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self._done and self._error is None:
                self._fail(self._broken(f"a malformed answer: {e}"))
            return
        if self._framing_bytes > _MAX_FRAMING and not self._done and self._error is None:
            where = "chunk size line or trailers" if self.status else "head"
            self._fail(self._broken(f"an answer {where} of over {_MAX_FRAMING} bytes"))

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done or self._error is not None:
            pass
        elif not self.status:
            self._fail(NoAnswer(f"Server disconnected{f' ({exc})' if exc else ''}"))
        elif self._framing == "eof" and exc is None:
            self._finish()
        else:
            self._fail(BrokenOff(f"the connection closed before the answer was complete{f' ({exc})' if exc else ''}"))
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        # the parser holds this answer's callbacks: without it the answer goes at once, not at
        # the next garbage collection (per request, that collection cost more than the parsing)
        self._parser = None

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    # -- llhttp's callbacks ----------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # in pieces where a read ends inside it

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # trailers are read (and bounded) but not kept
            self._fields.add(name.decode("ascii"), value.strip(b" \t").decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        if self._done:
            return
        status = self._parser.get_status_code()
        self._framing_bytes = 0
        version = self._parser.get_http_version()
        if not 100 <= status <= 599 or status == 101 or version not in ("1.1", "1.0"):
            self._fail(NoAnswer(f"a status line of HTTP/{version} {status:03d}, which the relay cannot carry"))
            raise _Refused
        if status < 200:  # 100 Continue, 103 Early Hints and the like: the answer follows
            self._interim += 1
            self._reason.clear()
            self._fields = CIMultiDict()
            if self._interim > _MAX_INTERIM:
                self._fail(NoAnswer(f"over {_MAX_INTERIM} interim (1xx) answers"))
                raise _Refused
            return
        self._framing, self.length = framing_of(status, self._fields, self._head_only)
        self.status, self.headers = status, CIMultiDictProxy(self._fields)
        self.reason = self._reason.decode("utf-8", "surrogateescape")
        if self._framing == "none":
            self._finish()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        self._framing_bytes -= len(body)
        self._put(body)

    def on_chunk_complete(self) -> None:
        self._framing_bytes = 0

    def on_message_complete(self) -> None:
        if self.status:  # not an interim answer's end
            self._finish()

    # -- state -----------------------------------------------------------------------------------

    def _broken(self, what: str) -> Exception:
        """A fault in the head means no answer; in the body, one broken off after its head."""
        return BrokenOff(what) if self.status else NoAnswer(what)

    def _put(self, data: bytes) -> None:
        if not data:
            return
        self._body.append(data)
        self._held += len(data)
        if self._held > _PAUSE_AT and not self._paused and self._transport is not None:
            self._paused = True  # the client reads slower than the backend writes: let TCP hold it
            self._transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._wake()
        if self._transport is not None:
            self._transport.abort()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _writable(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            await self._can_write
