"""`llm-switch serve`: a Server that starts up, runs until SIGTERM, and shuts down, owning every
task it starts (the SIGHUP reload, the preload).

Connections are bounded where they are accepted, with aiohttp's own settings where it has them:
- a request line and each header at most 8190 bytes, at most 64 headers (aiohttp's
  max_line_size / max_field_size / max_headers): larger heads get a 400;
- a request's head must be complete within `header_timeout` of the connection opening or of the
  previous answer (aiohttp's keepalive_timeout, which it applies from the moment a connection
  opens; it also closes idle keep-alive connections then): slowloris clients are cut off;
- at most `max_connections` client connections at once (ConnectionLimit): past it a new
  connection gets a 503 and is closed at once;
- a client that reads an answer slowly holds up the relay, not memory: StreamResponse.write
  awaits the transport's drain once 64 KiB are pending, the relay then stops reading from the
  backend, and aiohttp's client stops reading its socket (about 64-128 KiB buffered each way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import json
import signal
import time
from dataclasses import replace

from aiohttp import web

from ..config import Config
from ..config.keys import check_exposure, exposure_warning
from ..errors import SwitchError
from ..events import EventBus
from ..http.app import build_app
from ..http.keys import INFLIGHT, SCHEDULER
from ..observe.notify import notify
from ..observe.status import status_line
from ..scheduling.scheduler import Scheduler

log = logging.getLogger("llm_switch")

# request heads: aiohttp's limits for a request line and one header, and how many headers
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 64
_REFUSED_LOG_EVERY = 10.0  # s: at most one warning about refused connections this often


class Server:
    def __init__(self, config: Config, explicit_path: str | None) -> None:
        self.config = config
        self.explicit_path = explicit_path
        self.events = EventBus()
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        app = build_app(self.config, self.events)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5,
                               keepalive_timeout=self.config.header_timeout, max_line_size=MAX_LINE_SIZE,
                               max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS)
        await runner.setup()  # connects to the bus and adopts running units; raises before listening
        listener = None
        try:
            assert runner.server is not None
            try:
                # aiohttp's protocol factory (what web.TCPSite listens with), behind a connection limit
                listener = await asyncio.get_running_loop().create_server(
                    ConnectionLimit(runner.server, self.config.max_connections),
                    self.config.listen_host, self.config.listen_port, reuse_address=True)
            except OSError as e:
                raise SwitchError(f"cannot listen on {self.config.listen}: {e.strerror or e}") from None
            scheduler = app[SCHEDULER]
            log.info("listening on http://%s/v1 — models: %s", self.config.listen, ", ".join(self.config.models))
            if self.config.api_keys:
                log.info("API keys required (except for GET /health%s): %s",
                         ", /metrics" if self.config.metrics_public else "",
                         ", ".join(k.name for k in self.config.api_keys))
            if warning := exposure_warning(self.config):
                log.warning("%s", warning)
            notify("READY=1", f"STATUS={status_line(scheduler.snapshot())}")

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload(scheduler), "reload"))
            if self.config.preload:
                self._spawn(self._preload(scheduler), "preload")
            await self._stop.wait()
            log.info("stopping; requests in flight get up to %g s (shutdown_grace); units are left as they are",
                     self.config.shutdown_grace)
            notify("STOPPING=1")
            # requests in flight get shutdown_grace to finish (keep it under the unit's
            # TimeoutStopSec); those still going then end with a 503 or an SSE error event
            await app[INFLIGHT].stop(self.config.shutdown_grace)
        finally:
            await self._cancel_tasks()
            if listener is not None:
                listener.close()  # no new connections; runner.cleanup() closes the open ones
            await runner.cleanup()

    def _spawn(self, coro, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"llm-switch {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _preload(self, scheduler: Scheduler) -> None:
        names = self.config.preload
        for i, name in enumerate(names):
            if i + 1 < len(names):
                scheduler.read_ahead(names[i + 1])  # read while this one loads
            try:
                await scheduler.load(name)
                log.info("%s: preloaded", name)
            except SwitchError as e:
                log.error("%s: preload failed: %s", name, e.message)

    async def _reload(self, scheduler: Scheduler) -> None:
        """SIGHUP: use the config file anew; a bad one is refused and the running one stays."""
        from . import load_config

        notify("RELOADING=1")
        current = self.config
        try:
            new = load_config(self.explicit_path or current.path)
            at_start = ("listen", "max_body_bytes", "max_connections", "header_timeout")
            if any(getattr(new, k) != getattr(current, k) for k in at_start):
                log.warning("reload: %s take effect on restart; keeping %s", ", ".join(at_start),
                            ", ".join(f"{k}={getattr(current, k)}" for k in at_start))
                new = replace(new, listen_host=current.listen_host, listen_port=current.listen_port,
                              **{k: getattr(current, k) for k in at_start[1:]})
                check_exposure(new)  # the listen kept may need the keys the new file dropped
            await scheduler.reload(new)
        except SwitchError as e:
            log.error("reload refused, the running config stays in force: %s", e.message)
        finally:
            notify("READY=1", f"STATUS={status_line(scheduler.snapshot())}")


class ConnectionLimit:
    """The listening socket's protocol factory: aiohttp's own (`server`) for at most `limit`
    client connections at once. Past it, a new connection gets a 503 and is closed at once."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit = server, limit
        self.open = 0
        self._logged, self._refused = -_REFUSED_LOG_EVERY, 0

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def refuse(self, transport: asyncio.Transport) -> None:
        transport.write(_BUSY)
        transport.close()
        now = time.monotonic()
        if now - self._logged < _REFUSED_LOG_EVERY:
            self._refused += 1
            return
        more = f" ({self._refused} more since the last such line)" if self._refused else ""
        self._logged, self._refused = now, 0
        log.warning("refused a connection: %d are open (max_connections)%s", self.limit, more)


_BUSY_BODY = json.dumps({"error": {"message": "llm-switch has max_connections client connections open; try again",
                                   "type": "server_error", "code": "too_many_connections"}}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class _Gate(asyncio.Protocol):
    """One connection: aiohttp's RequestHandler once a place is free, counted while it is open."""

    __slots__ = ("_limit", "_inner")

    def __init__(self, limit: ConnectionLimit) -> None:
        self._limit = limit
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limit.open >= self._limit.limit:
            self._limit.refuse(transport)  # type: ignore[arg-type]
            return
        self._limit.open += 1
        self._inner = self._limit.server()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limit.open -= 1
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
