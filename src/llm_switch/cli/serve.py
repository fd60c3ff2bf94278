"""`llm-switch serve`: a Server that starts up, runs until SIGTERM, and shuts down, owning every
task it starts (the SIGHUP reload, the preload)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import replace

from aiohttp import web

from ..config import Config
from ..errors import SwitchError
from ..events import EventBus
from ..http.app import build_app
from ..http.keys import INFLIGHT, SCHEDULER
from ..observe.notify import notify
from ..observe.status import status_line
from ..scheduling.scheduler import Scheduler

log = logging.getLogger("llm_switch")


class Server:
    def __init__(self, config: Config, explicit_path: str | None) -> None:
        self.config = config
        self.explicit_path = explicit_path
        self.events = EventBus()
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        app = build_app(self.config, self.events)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5)
        await runner.setup()  # connects to the bus and adopts running units; raises before listening
        try:
            site = web.TCPSite(runner, self.config.listen_host, self.config.listen_port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                raise SwitchError(f"cannot listen on {self.config.listen}: {e.strerror or e}") from None
            scheduler = app[SCHEDULER]
            log.info("listening on http://%s/v1 — models: %s", self.config.listen, ", ".join(self.config.models))
            notify("READY=1", f"STATUS={status_line(scheduler)}")

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
        for name in self.config.preload:
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
            if (new.listen, new.max_body_bytes) != (current.listen, current.max_body_bytes):
                log.warning("reload: listen and max_body_bytes take effect on restart; keeping %s and %d bytes",
                            current.listen, current.max_body_bytes)
                new = replace(new, listen_host=current.listen_host, listen_port=current.listen_port,
                              max_body_bytes=current.max_body_bytes)
            await scheduler.reload(new)
        except SwitchError as e:
            log.error("reload refused, the running config stays in force: %s", e.message)
        finally:
            notify("READY=1", f"STATUS={status_line(scheduler)}")
