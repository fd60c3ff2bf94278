"""One model's lifecycle: its state, the requests it serves, start (health, identity, hooks),
drain and stop. The scheduler decides *when*; this object does it and keeps its own books."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from ..config import Model, format_size
from ..errors import BackendUnreachable, HealthTimeout, JobFailed, StartFailed, SwitchError
from ..events import LoadProgress, MemoryMeasured, StateChanged
from .memory import rss_of
from .ports import Parts
from .policy import ModelView, State, default_min_loaded
from .snapshot import CacheSnapshot, ModelSnapshot

log = logging.getLogger(__name__)

Hook = Callable[["ModelRuntime"], Awaitable[None]]


MAX_BACKOFF = 60.0  # s: the longest wait before starting a failing model again

# The lifecycle of docs/design.md ("States of a model"), as the only state changes allowed.
# STOPPED/FAILED → STOPPING: a unit systemd runs that the switch did not start is stopped too.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.READY, State.STOPPING}),
    State.FAILED: frozenset({State.STARTING, State.READY, State.STOPPING}),
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPED}),
    State.READY: frozenset({State.STOPPING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
}
DRAINABLE = frozenset({State.READY, State.STOPPED, State.FAILED})  # chosen to stop: takes no new requests


class IllegalTransition(RuntimeError):
    """A change of a model's books that its lifecycle does not allow: a bug in the switch."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old} → {new} is not a state change a model makes")


def backoff(failures: int) -> float:
    """Seconds before the next start after `failures` failed starts in a row: the first failure is
    retried by the next request (the unit may have been fixed), then 1, 2, 4 … 60 s."""
    return 0.0 if failures <= 1 else min(MAX_BACKOFF, 2.0 ** (failures - 2))


def _probe_interval(elapsed: float) -> float:
    """Tight polls while a small model is likely about to answer, looser during a long load."""
    return 0.005 if elapsed < 1 else 0.02 if elapsed < 30 else 0.1


class ModelRuntime:
    """The running side of one configured model. It alone changes its books (state, in_flight,
    waiting, draining), each change checked against TRANSITIONS and the rules beside it; the
    scheduler asks, on the event loop. Readers outside scheduling get `snapshot()`."""

    def __init__(self, model: Model, parts: Parts, sharing: Callable[[Model], list[Model]]) -> None:
        self.model = model
        self._parts = parts
        self._systemd, self._backends, self._events = parts.units, parts.backends, parts.events
        self._clock = parts.clock
        self._sharing = sharing  # other configured models on the same URL
        self._state = State.STOPPED
        self.since = time.time()
        self.reason: str | None = None
        self._in_flight = 0
        self._waiting = 0
        self._draining = False
        self.last_used = 0.0
        self.ready_at = 0.0
        self.idle_since: float | None = self._clock()
        self.load_s: float | None = None  # the last successful load, start to ready
        self.failures = 0  # failed starts in a row
        self.retry_at = 0.0  # monotonic: no new start before, after a failure (no hot restart loop)
        self.error: SwitchError | None = None  # why the last start failed
        self.memory: MemoryMeasured | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.after_ready: list[Hook] = []  # run before requests waiting for the model are admitted
        self.before_stop: list[Hook] = []  # run after the model drained, before its unit stops

    @property
    def name(self) -> str:
        return self.model.name

    # the books: read anywhere in scheduling, changed only through the methods below

    @property
    def state(self) -> State:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def draining(self) -> bool:
        return self._draining

    def view(self) -> ModelView:
        return ModelView(
            name=self.name, url=self.model.url, memory=self.model.memory, state=self.state,
            in_flight=self.in_flight, waiting=self.waiting, draining=self.draining, last_used=self.last_used,
            ready_at=self.ready_at, idle_since=self.idle_since, min_loaded=self.min_loaded,
            idle_unload=self.model.idle_unload, pin=self.model.pin, priority=self.model.priority)

    def snapshot(self, queue_position: int | None, cache: CacheSnapshot | None, now: float) -> ModelSnapshot:
        wait = self.retry_at - now
        return ModelSnapshot(
            name=self.name, unit=self.model.unit, url=self.model.url, aliases=tuple(self.model.aliases),
            declared=self.model.memory, state=self.state, since=self.since, reason=self.reason,
            in_flight=self.in_flight, waiting=self.waiting, draining=self.draining, queue_position=queue_position,
            load_s=self.load_s, failures=self.failures, retry_in_s=wait if wait > 0 else None,
            ready_at=self.ready_at, idle_since=self.idle_since, idle_unload=self.model.idle_unload,
            measured=self.memory, prompt_cache=cache, pin=self.model.pin, priority=self.model.priority)

    @property
    def min_loaded(self) -> float:
        return self.model.min_loaded if self.model.min_loaded is not None else default_min_loaded(self.load_s)

    def _set(self, state: State, reason: str | None = None) -> None:
        check_transition(self.state, state)
        old, self._state, self.since, self.reason = self._state, state, time.time(), reason
        if state is not State.READY:
            self._draining = False
        self._events.publish(StateChanged(self.name, str(old), str(state), reason))

    def drain(self) -> None:
        """Chosen to stop: take no new requests from now on."""
        if self.state not in DRAINABLE:
            raise IllegalTransition(f"{self.name}: cannot drain while {self.state}")
        self._draining = True

    # -- requests -----------------------------------------------------------------------------

    def enqueue(self) -> None:
        self._waiting += 1

    def dequeue(self) -> None:
        if self.waiting <= 0:
            raise IllegalTransition(f"{self.name}: no request waits")
        self._waiting -= 1

    def admit(self) -> None:
        if self.state is not State.READY or self.draining:
            raise IllegalTransition(f"{self.name}: a request admitted while {self.state}"
                                    + (", draining" if self.draining else ""))
        self._in_flight += 1
        self.last_used = self._clock()
        self.idle_since = None
        self._idle.clear()

    def release(self) -> None:
        if self.in_flight <= 0:
            raise IllegalTransition(f"{self.name}: a request released that was not in flight")
        self._in_flight -= 1
        self.last_used = self._clock()
        if self.in_flight == 0:
            self.idle_since = self.last_used
            self._idle.set()

    # -- start --------------------------------------------------------------------------------

    async def start(self) -> float:
        """Start the unit and wait until it serves; returns the seconds it took. On failure the
        unit is stopped again, the state is FAILED with the reason, and the error is raised."""
        t0 = self._clock()
        self._set(State.STARTING)
        try:
            await self._start_unit()
            await self._wait_healthy()
            await self._run_hooks(self.after_ready, "after_ready")
        except SwitchError as e:
            self.failures += 1
            self.retry_at = self._clock() + backoff(self.failures)
            self.error = e
            self._set(State.FAILED, e.message)
            log.error("%s: start failed after %.2f s: %s", self.name, self._clock() - t0, e.message)
            with contextlib.suppress(SwitchError):
                await self._systemd.stop(self.model.unit)  # do not leave a half-loaded model on the GPU
            raise
        except asyncio.CancelledError:
            self._set(State.STOPPED)
            raise
        self.load_s = self._clock() - t0
        self.ready_at = self.idle_since = self._clock()
        self.clear_backoff()
        self._set(State.READY)
        return self.load_s

    def clear_backoff(self) -> None:
        self.failures, self.retry_at = 0, 0.0

    def backing_off(self) -> SwitchError | None:
        """The last start's failure while the next start must wait, else None."""
        wait = self.retry_at - self._clock()
        if self.state is not State.FAILED or self.error is None or wait <= 0:
            return None
        e = self.error
        again = type(e) if type(e) in (StartFailed, HealthTimeout, BackendUnreachable) else StartFailed
        return again(f"{e.message}\n(failed {self.failures} time(s) in a row; not started again for {wait:.0f} s. "
                     f"Fix the unit, then `llm-switch load {self.name}` or reload the config to try at once)")

    async def adopt(self) -> bool:
        """Take a unit that already runs as it is, if it serves; False when it does not (yet)."""
        if await self._backends.health(self.model.url, 2.0) != 200:
            return False
        self.ready_at = self.idle_since = self._clock()
        self._set(State.READY)
        return True

    async def measure(self) -> MemoryMeasured:
        ram, pid = await self._systemd.memory(self.model.unit)
        if ram is None:
            ram = rss_of(pid)
        self.memory = MemoryMeasured(self.name, self.model.memory, ram, self._parts.gpu.vram_of(pid))
        self._events.publish(self.memory)
        return self.memory

    def memory_text(self) -> str:
        """`memory 6.8G declared, 412M RAM measured` for the log line of a start."""
        m = self.memory
        parts = [f"memory {format_size(self.model.memory)} declared" if self.model.memory else "memory not declared"]
        if m is not None and m.ram is not None:
            parts.append(f"{format_size(m.ram)} RAM")
        if m is not None and m.vram is not None:
            parts.append(f"{format_size(m.vram)} VRAM")
        return ", ".join(parts) + (" measured" if len(parts) > 1 else "")

    def measured_over_declared(self) -> bool:
        m, declared = self.memory, self.model.memory
        measured = (m.vram if m and m.vram else m.ram if m else None)
        return declared is not None and measured is not None and measured > declared

    async def _start_unit(self) -> None:
        model = self.model
        try:
            if model.cmd is not None:
                await self._systemd.start_transient(model.unit, model.cmd, f"llm-switch model {model.name}")
            else:
                await self._systemd.start(model.unit)
        except JobFailed as e:
            raise StartFailed(await self.why_failed(f"start job ended with result '{e.result}'")) from None

    async def _wait_healthy(self) -> None:
        model = self.model
        t0 = last_asked = self._clock()
        deadline = t0 + model.health_timeout
        first = True
        next_progress = t0 + 1.0
        while True:
            probe_at = self._clock()
            if probe_at >= next_progress:  # for loading progress in streams, metrics, the web page
                next_progress += 1.0
                self._events.publish(LoadProgress(self.name, probe_at - t0, "loading"))
            status = await self._backends.health(model.url, min(2.0, max(0.05, deadline - probe_at)))
            if status == 200:
                await self._check_identity()
                return
            now = self._clock()
            if now >= deadline:
                raise HealthTimeout(f"{model.name}: not healthy at {model.url}/health within "
                                    f"{model.health_timeout:g} s (health_timeout); unit {model.unit} was stopped")
            # nothing listening: has the unit died? (a 503 means it is alive and loading) Asked at
            # most every 50 ms: a D-Bus round trip per 5 ms probe would slow the probes down.
            if status is None and (first or now - last_asked >= 0.05):
                first, last_asked = False, now
                state = (await self._systemd.active_states([model.unit])).get(model.unit)
                if state is None or not state.running:
                    raise StartFailed(await self.why_failed("exited while loading"))
            # probes at a steady rate: the time a probe and a D-Bus question took is not added
            await asyncio.sleep(max(0.0, probe_at + _probe_interval(now - t0) - self._clock()))

    async def _check_identity(self) -> None:
        """A stale server of another model on a shared port must not be taken for this one."""
        sharing = self._sharing(self.model)
        if not sharing:
            return
        ids = await self._backends.model_ids(self.model.url)
        if not ids or ids & {self.name, *self.model.aliases}:
            return  # it does not tell, or it is us
        for other in sharing:
            if ids & {other.name, *other.aliases}:
                raise BackendUnreachable(f"{self.name}: {self.model.url} answers as model {other.name!r}, not "
                                         f"{self.name!r}; is another server still bound to that port?")

    async def why_failed(self, what: str) -> str:
        model = self.model
        detail = await self._systemd.failure(model.unit)
        if model.cmd is not None and not (os.path.isfile(model.cmd[0]) and os.access(model.cmd[0], os.X_OK)):
            detail += f"; {model.cmd[0]} is not an executable file"  # a transient unit is gone at once
        lines = await self._parts.journal(model.unit)
        text = f"{model.name}: unit {model.unit} {what} ({detail})"
        if lines:
            text += "; last log lines:\n" + "\n".join(lines)
        else:
            text += f"; see `journalctl --user -u {model.unit}`"
        return text

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self) -> float:
        """Take no new requests, let those in flight finish, run the before_stop hooks, stop the
        unit. Returns the seconds the stop took (the drain not counted)."""
        self.drain()
        if self.in_flight:
            log.info("%s: waiting for %d request(s) to finish before stopping", self.name, self.in_flight)
            await self._idle.wait()
        if self.state is State.READY:
            await self._run_hooks(self.before_stop, "before_stop")
        self._set(State.STOPPING)
        t0 = self._clock()
        try:
            await self._systemd.stop(self.model.unit)
        except SwitchError:
            self._set(State.FAILED, "stop failed")
            raise
        self._set(State.STOPPED)
        self.memory = None
        took = self._clock() - t0
        log.info("%s: stopped %s in %.2f s", self.name, self.model.unit, took)
        return took

    def forget(self) -> None:
        """The unit stopped behind the switch's back: the next request starts it again."""
        if self.state is State.READY:
            self._set(State.STOPPED)

    async def _run_hooks(self, hooks: list[Hook], what: str) -> None:
        """A hook that fails costs what it was for, never the switch."""
        for hook in hooks:
            try:
                await hook(self)
            except Exception:
                log.exception("%s: %s hook %s failed; going on without it", self.name, what,
                              getattr(hook, "__qualname__", hook))
