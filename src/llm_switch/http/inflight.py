"""The requests being served, so that a stopping switch gives them `shutdown_grace` to finish and
then ends the rest cleanly: a 503 before an answer started, an SSE error event in a stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


class InFlight:
    def __init__(self) -> None:
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    async def stop(self, grace: float) -> None:
        """Let requests in flight finish for up to `grace` seconds, then end them."""
        self.stopping = True
        if self._tasks:
            log.info("waiting up to %g s for %d request(s) in flight", grace, len(self._tasks))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        if self._tasks:
            log.warning("ending %d request(s) still in flight after shutdown_grace", len(self._tasks))
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5)
