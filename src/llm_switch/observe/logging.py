"""Logging fit for journald: `<N>` priority prefixes when stderr is the journal stream."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp.http_exceptions import HttpProcessingError

# syslog priorities journald reads from a `<N>` prefix on each stdout/stderr line
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class Throttle:
    """At most one log line of a kind per `every` seconds, so that a scan or a page that keeps
    trying cannot flood the journal; the lines held back are counted into the next one."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last, self._held = -every, 0

    def next_line(self) -> str | None:
        """None while the line is held back; else what to append to it (the count held back)."""
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return None
        more = f" ({self._held} more since the last such line)" if self._held else ""
        self._last, self._held = now, 0
        return more


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald stamps time itself and filters on the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # every line of a multi-line message keeps the priority
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would print every request; the switch logs what matters itself
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, QuietMalformedRequests)]
    server.addFilter(QuietMalformedRequests())


class QuietMalformedRequests(logging.Filter):
    """aiohttp answers malformed HTTP (bare CR/LF, duplicate Content-Length, …) with a 400, as it
    should, but logs each one as an ERROR with a traceback: any local process could flood the
    journal. Make those one info line, at most one per `every` seconds, counting the rest."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self._throttle = Throttle(every)

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if (more := self._throttle.next_line()) is None:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args, record.exc_info, record.exc_text = (
            "answered 400 to a malformed HTTP request from %s: %s%s", (remote, _reason(exc), more), None, None)
        return True


def _reason(exc: HttpProcessingError) -> str:
    message = exc.message or str(exc)
    return message.splitlines()[0][:200] if message else type(exc).__name__
