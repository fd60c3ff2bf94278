"""How an answer is changed on its way to the client: a `Transform` looks at the answer's head
and returns a `Rewrite` (or None: the bytes pass as they came). docs/design.md, "One request
pipeline", has the rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Head(NamedTuple):
    """What a transform may know of an answer before its body."""

    status: int
    content_type: str | None

    @property
    def event_stream(self) -> bool:
        return self.content_type == "text/event-stream"


class Rewrite(NamedTuple):
    """`feed` each chunk, `close` at the end; `cut` instead of `close` when the stream is cut
    short (held parts, repaired, but no end of answer; `close` when None); `content_type`, when
    set, replaces the backend's (a translated answer)."""

    feed: Callable[[bytes], bytes]
    close: Callable[[], bytes]
    content_type: str | None = None
    cut: Callable[[], bytes] | None = None

    def cut_short(self) -> bytes:
        return (self.cut or self.close)()


Transform = Callable[[Head], Rewrite | None]


def hold_whole(finish: Callable[[bytes], bytes], content_type: str | None = None) -> Rewrite:
    """A rewrite that holds the whole body and sends `finish(body)` at the end."""
    held = bytearray()
    return Rewrite(lambda chunk: held.extend(chunk) or b"", lambda: finish(bytes(held)), content_type)


def then(first: Rewrite | None, second: Rewrite) -> Rewrite:
    """`first`'s output fed through `second`; the content type the last one set."""
    if first is None:
        return second
    return Rewrite(lambda chunk: second.feed(first.feed(chunk)),
                   lambda: second.feed(first.close()) + second.close(), second.content_type or first.content_type,
                   lambda: second.feed(first.cut_short()) + second.cut_short())
