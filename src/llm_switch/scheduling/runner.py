"""One operation at a time: a switch, an unload or a reload runs as the runner's one task; the
scheduler is told when it ends (docs/design.md, "Invariants")."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

Work = Callable[[], Awaitable[None]]
Finished = Callable[[str | None, BaseException | None], None]  # (the model it started, its error)


class Runner:
    def __init__(self, finished: Finished) -> None:
        self._finished = finished
        self.current: asyncio.Task | None = None
        self._waiting: deque[tuple[Work, asyncio.Future]] = deque()  # operations other than a switch

    @property
    def busy(self) -> bool:
        return self.current is not None

    def begin(self, target: str | None, work: Work, done: asyncio.Future | None = None) -> None:
        """Run `work` now (the runner must be idle); `target` is the model it starts, if any."""
        assert self.current is None, "one operation at a time"
        task = asyncio.get_running_loop().create_task(work(), name=f"llm-switch operation ({target or 'admin'})")
        self.current = task
        task.add_done_callback(lambda task: self._end(task, target, done))

    def _end(self, task: asyncio.Task, target: str | None, done: asyncio.Future | None) -> None:
        self.current = None
        error = None if task.cancelled() else task.exception()
        if done is not None and not done.done():
            if task.cancelled():
                done.cancel()
            elif error is not None:
                done.set_exception(error)
            else:
                done.set_result(None)
        self._finished(target, error)

    def submit(self, work: Work) -> asyncio.Future:
        """Queue an operation that is not a switch (unload, reload); it runs before the next switch."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((work, done))
        return done

    def begin_submitted(self) -> bool:
        """Begin the oldest queued operation, if any."""
        if not self._waiting:
            return False
        work, done = self._waiting.popleft()
        self.begin(None, work, done)
        return True

    async def close(self) -> None:
        """Cancel the operation in progress and wait for it to end."""
        for _, done in self._waiting:
            done.cancel()
        if self.current is not None:
            self.current.cancel()
            with contextlib.suppress(BaseException):
                await self.current
