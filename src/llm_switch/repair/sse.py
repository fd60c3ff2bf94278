"""Server-sent events framing: split a byte stream into events, keep each event's exact bytes.

Pure code, no I/O. Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; an
empty line ends an event; `data:` lines join with "\\n"; lines starting with ":" are comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Event", "SSEParser", "format_event"]

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its bytes exactly as received (terminator included) and its parsed fields."""

    raw: bytes
    data: str | None = None  # joined data lines; None when the event has no data field
    fields: tuple[tuple[str, str], ...] = field(default=())  # other fields (event, id, retry, ...)
    complete: bool = True  # False only for a tail left unterminated when the stream ended
    eol: bytes = b"\n"  # the line terminator this event used


def _parse(raw: bytes, complete: bool) -> Event:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Event(raw=raw, complete=complete)
    m = _EOL.search(raw)
    eol = m.group() if m else b"\n"
    data: list[str] | None = None
    fields: list[tuple[str, str]] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line or line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            (data := data if data is not None else []).append(value)
        else:
            fields.append((name, value))
    return Event(
        raw=raw,
        data="\n".join(data) if data is not None else None,
        fields=tuple(fields),
        complete=complete,
        eol=eol,
    )


class SSEParser:
    """Incremental event splitter: feed bytes in any split, get whole events back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._line_start = 0  # where the current (unterminated) line begins
        self._scan = 0  # where to look for the next line terminator

    @property
    def empty(self) -> bool:
        """True between events: the next byte starts a new event."""
        return not self._buf

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes; return the events completed by them."""
        self._buf += data
        return self._split(final=False)

    def close(self) -> list[Event]:
        """End of stream: return what is left (an unterminated tail comes back with complete=False)."""
        events = self._split(final=True)
        if self._buf:
            events.append(_parse(bytes(self._buf), complete=False))
        self._buf.clear()
        self._line_start = self._scan = 0
        return events

    def _split(self, final: bool) -> list[Event]:
        events: list[Event] = []
        buf = self._buf
        while True:
            m = _EOL.search(buf, self._scan)
            if m is None:
                self._scan = len(buf)
                break
            if m.group() == b"\r" and m.end() == len(buf) and not final:
                self._scan = m.start()  # a CR at the very end may be the first half of a CRLF
                break
            if m.start() == self._line_start:  # empty line: the event ends here
                events.append(_parse(bytes(buf[: m.end()]), complete=True))
                del buf[: m.end()]
                self._line_start = self._scan = 0
            else:
                self._line_start = self._scan = m.end()
        return events


def format_event(data: str, eol: bytes = b"\n", fields: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Encode one event with a single-line `data` value (JSON has no raw newlines)."""
    head = b"".join(f"{k}: {v}".encode() + eol for k, v in fields)
    return head + b"data: " + data.encode("utf-8") + eol + eol
