"""`llm-switch serve`: a Server that builds the application's parts (systemd, the backends, the
GPU, the prompt cache, the scheduler) and the app over them, runs until SIGTERM, and shuts down,
owning every task it starts (the reload on SIGHUP or POST /reload, the preload).

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
from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from ..backends.llama_server import Backends
from ..config import Config
from ..config.keys import check_exposure, exposure_warning
from ..errors import SwitchError
from ..events import EventBus
from ..http.app import build_app
from ..http.keys import INFLIGHT, SCHEDULER
from ..http.reload import RELOADER, Outcome, Reloader
from ..learned.store import LearnedStore
from ..observe.logging import Throttle
from ..observe.notify import keep_status, notify
from ..observe.status import status_line
from ..scheduling.memory import Gpu
from ..scheduling.ports import Parts
from ..scheduling.prompt_cache import PromptCache
from ..scheduling.readahead import ReadAhead
from ..scheduling.scheduler import Scheduler
from ..units.systemd import Systemd

log = logging.getLogger("llm_switch")

# request heads: aiohttp's limits for a request line and one header, and how many headers
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 64
_REFUSED_LOG_EVERY = 10.0  # s: at most one warning about refused connections this often


class Server:
    """`config` is what it starts with (listen and the connection limits keep it); the newest,
    after a SIGHUP, is the scheduler's: the one source of every other setting."""

    def __init__(self, config: Config, explicit_path: str | None) -> None:
        self.config = config
        self.explicit_path = explicit_path
        self.events = EventBus()
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()

    async def run(self) -> None:
        async with self._scheduler() as scheduler:  # raises before listening
            await self._serve(scheduler)

    @contextlib.asynccontextmanager
    async def _scheduler(self) -> AsyncIterator[Scheduler]:
        """The application's parts (systemd, the backends, the GPU, the prompt cache, the
        scheduler), connected to the bus with running units adopted; closed once served."""
        systemd, backends = Systemd(), Backends()
        cache = PromptCache(lambda: scheduler.config.prompt_cache, backends)  # a reload may change it
        readahead = ReadAhead(lambda: scheduler.config, systemd)  # a reload may change the margin
        scheduler = Scheduler(self.config, Parts(systemd, backends, self.events, Gpu()),
                              hooks=cache.attach, cache=cache.snapshot, store=LearnedStore(), readahead=readahead)
        unsubscribe = keep_status(self.events, lambda: status_line(scheduler.snapshot()))
        try:
            await systemd.connect()
            await scheduler.adopt()
            yield scheduler
        finally:
            unsubscribe()
            await scheduler.close()
            await backends.close()
            await systemd.close()

    async def _serve(self, scheduler: Scheduler) -> None:
        app = build_app(self.events, scheduler)
        app[RELOADER] = Reloader(lambda: self._reload(app))
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5,
                               keepalive_timeout=self.config.header_timeout, max_line_size=MAX_LINE_SIZE,
                               max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS)
        await runner.setup()
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
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload(app), "reload"))
            if self.config.preload or self.config.pinned:
                self._spawn(self._preload(scheduler), "preload")
            await self._stop.wait()
            log.info("stopping; requests in flight get up to %g s (shutdown_grace); units are left as they are",
                     scheduler.config.shutdown_grace)
            notify("STOPPING=1")
            # requests in flight get shutdown_grace to finish (keep it under the unit's
            # TimeoutStopSec); those still going then end with a 503 or an SSE error event
            await app[INFLIGHT].stop(scheduler.config.shutdown_grace)
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

    async def _preload(self, scheduler: Scheduler, names: tuple[str, ...] | None = None) -> None:
        """The pinned models, then those of `preload`, started once the switch listens (`names`:
        those a reload pinned); each next one is read ahead while one loads."""
        config = scheduler.config
        order = list(dict.fromkeys(names if names is not None else config.pinned + config.preload))
        for i, name in enumerate(order):
            if i + 1 < len(order):
                scheduler.read_ahead(order[i + 1])
            try:
                await scheduler.load(name)
                log.info("%s: %s", name, "pinned: started" if name in config.pinned else "preloaded")
            except SwitchError as e:
                log.error("%s: preload failed: %s", name, e.message)

    async def _reload(self, app: web.Application) -> Outcome:
        """SIGHUP or POST /reload (http/reload.py), one at a time; GET /reload shows the last outcome."""
        async with self._reloading:
            scheduler = app[SCHEDULER]
            notify("RELOADING=1")
            try:
                outcome = await self._read_config_again(scheduler)
            finally:
                notify("READY=1", f"STATUS={status_line(scheduler.snapshot())}")
            app[RELOADER].last = outcome
            return outcome

    async def _read_config_again(self, scheduler: Scheduler) -> Outcome:
        """Use the config file anew; a bad one is refused and the running one stays."""
        from . import load_config

        current = scheduler.config  # the one source: a reload replaces it there
        path = self.explicit_path or current.path
        notes: tuple[str, ...] = ()
        try:
            new = load_config(path)
            at_start = ("listen", "max_body_bytes", "max_connections", "header_timeout")
            if changed := [k for k in at_start if getattr(new, k) != getattr(current, k)]:
                notes = (f"{', '.join(changed)} take effect on restart; keeping "
                         f"{', '.join(f'{k}={getattr(current, k)}' for k in changed)}",)
                log.warning("reload: %s", notes[0])
                new = replace(new, listen_host=current.listen_host, listen_port=current.listen_port,
                              **{k: getattr(current, k) for k in at_start[1:]})
                check_exposure(new)  # the listen kept may need the keys the new file dropped
            await scheduler.reload(new)
        except SwitchError as e:
            log.error("reload refused, the running config stays in force: %s", e.message)
            return Outcome(False, time.time(), str(path) if path else None, e.message)
        if pinned := tuple(n for n in new.pinned if n not in current.pinned):
            self._spawn(self._preload(scheduler, pinned), "pin")
        in_force = f"{len(new.models)} models: {', '.join(new.models)}"
        return Outcome(True, time.time(), str(new.path), in_force, notes)


class ConnectionLimit:
    """The listening socket's protocol factory: aiohttp's own (`server`) for at most `limit`
    client connections at once. Past it, a new connection gets a 503 and is closed at once."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit = server, limit
        self.open = 0
        self._refused = Throttle(_REFUSED_LOG_EVERY)

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def refuse(self, transport: asyncio.Transport) -> None:
        transport.write(_BUSY)
        transport.close()
        if (more := self._refused.next_line()) is not None:
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
