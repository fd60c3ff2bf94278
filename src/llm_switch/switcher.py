"""Which model runs: the one owner of switching state.

Invariants (see DESIGN.md, "Switching semantics"):
- At most one operation (a switch, an unload, a config reload) runs at a time: `self._op`. Every
  decision to start or stop a unit is made inside it, from state read inside it.
- A request for a READY model with no operation pending is admitted at once, with no lock held
  while it is served. While an operation is pending, new requests for other models wait for it,
  so a switch is never starved by a stream of requests for the running model.
- Requests for the model an operation is starting join it; the operation admits them (counts
  them in flight) in the same step that marks the model ready, so no later switch can stop the
  model before they are served.
- A model is stopped only after its in-flight requests finish (drain, never cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp

from .config import Config, Model
from .errors import BackendUnreachable, HealthTimeout, StartFailed, SwitchError
from .proxy import Backends
from .systemd import JobFailed, Systemd, journal_tail

log = logging.getLogger(__name__)


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass
class ModelState:
    state: State = State.STOPPED
    since: float = field(default_factory=time.time)
    reason: str | None = None
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def set(self, state: State, reason: str | None = None) -> None:
        self.state, self.since, self.reason = state, time.time(), reason


@dataclass
class SwitchRecord:
    previous: str | None
    target: str
    stopped_s: float
    ready_s: float
    at: float
    ok: bool

    def as_json(self) -> dict:
        return {"from": self.previous, "to": self.target, "stopped_s": round(self.stopped_s, 3),
                "ready_s": round(self.ready_s, 3), "at": self.at, "ok": self.ok}


class _Seat:
    """A request that joined a starting model; `admitted` once the start succeeded."""

    admitted = False


@dataclass
class _Operation:
    target: str | None  # the model being started; None for unload / reload
    task: asyncio.Task
    seats: list[_Seat] = field(default_factory=list)


def _probe_interval(elapsed: float) -> float:
    """Tight polls while a small model is likely about to answer, looser during a long load."""
    return 0.005 if elapsed < 1 else 0.02 if elapsed < 30 else 0.1


class Switcher:
    def __init__(self, config: Config, systemd: Systemd, backends: Backends,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.systemd = systemd
        self.backends = backends
        self.on_change = on_change
        self.models: dict[str, ModelState] = {name: ModelState() for name in config.models}
        self.switches: deque[SwitchRecord] = deque(maxlen=20)
        self._op: _Operation | None = None

    # -- requests -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model: Model) -> AsyncIterator[None]:
        """Hold `model` running while the body runs: switch to it if needed, count it in flight."""
        await self._acquire(model)
        try:
            yield
        finally:
            self._release(model.name)

    async def _acquire(self, model: Model) -> None:
        while True:
            status = self.models[model.name]
            op = self._op
            if op is None:
                if status.state is State.READY:
                    self._admit(model.name)
                    return
                op = self._begin(model.name, self._switch_to(model))
            if op.target == model.name:
                seat = _Seat()
                op.seats.append(seat)
                try:
                    await asyncio.shield(op.task)
                except asyncio.CancelledError:
                    if seat.admitted:
                        self._release(model.name)
                    elif seat in op.seats:
                        op.seats.remove(seat)
                    raise
                return  # admitted by the operation
            await asyncio.wait([op.task])  # another model's turn first; then decide again

    def _admit(self, name: str) -> None:
        status = self.models[name]
        status.in_flight += 1
        status.idle.clear()

    def _release(self, name: str) -> None:
        status = self.models.get(name)
        if status is None:  # removed by a reload while the request ran
            return
        status.in_flight -= 1
        if status.in_flight == 0:
            status.idle.set()

    # -- the one owner ------------------------------------------------------------------------

    def _begin(self, target: str | None, work) -> _Operation:
        task = asyncio.get_running_loop().create_task(work, name=f"llm-switch operation ({target})")
        op = self._op = _Operation(target, task)

        def done(task: asyncio.Task) -> None:
            self._op = None
            # exception() also marks a failure as seen: its log line has reported it
            if not task.cancelled() and task.exception() is None and target is not None:
                for seat in op.seats:
                    seat.admitted = True
                    self._admit(target)
            self.on_change()

        # add_done_callback runs before any waiter resumes, so admission and clearing the slot
        # happen in one step
        task.add_done_callback(done)
        return op

    async def _run_exclusively(self, target: str | None, work) -> None:
        """Run an operation that is not a switch (unload, reload) once no other one is pending."""
        while True:
            op = self._op
            if op is None:
                op = self._begin(target, work)
                await asyncio.shield(op.task)
                return
            await asyncio.wait([op.task])

    async def _switch_to(self, model: Model) -> None:
        t0 = time.monotonic()
        others = [m for m in self.config.models.values() if m.name != model.name]
        running = await self._running_units(others)
        previous = ", ".join(m.name for m in running) or None
        try:
            await asyncio.gather(*(self._stop(m) for m in running))
        except SwitchError as e:
            self._record(previous, model.name, time.monotonic() - t0, 0.0, ok=False)
            raise StartFailed(f"{model.name}: could not stop {previous} first: {e.message}") from None
        stopped_s = time.monotonic() - t0

        t1 = time.monotonic()
        status = self.models[model.name]
        status.set(State.STARTING)
        self.on_change()
        try:
            await self._start(model)
        except SwitchError as e:
            ready_s = time.monotonic() - t1
            status.set(State.FAILED, e.message)
            self._record(previous, model.name, stopped_s, ready_s, ok=False)
            log.error("%s: start failed after %.2f s: %s", model.name, ready_s, e.message)
            with contextlib.suppress(SwitchError):
                await self.systemd.stop(model.unit)  # do not leave a half-loaded model on the GPU
            raise
        except asyncio.CancelledError:
            status.set(State.STOPPED)
            raise
        ready_s = time.monotonic() - t1
        status.set(State.READY)
        self._record(previous, model.name, stopped_s, ready_s, ok=True)
        if previous:
            log.info("switch %s → %s: stopped %s in %.2f s, %s ready in %.2f s",
                     previous, model.name, previous, stopped_s, model.name, ready_s)
        else:
            log.info("switch → %s: %s ready in %.2f s", model.name, model.name, ready_s)

    async def _running_units(self, models: Iterable[Model]) -> list[Model]:
        """The models whose units systemd runs, or that we believe are up."""
        models = list(models)
        if not models:
            return []
        states = await self.systemd.active_states([m.unit for m in models])
        return [m for m in models
                if (s := states.get(m.unit)) is not None and s.running
                or self.models[m.name].state in (State.STARTING, State.READY, State.STOPPING)]

    async def _stop(self, model: Model) -> None:
        status = self.models[model.name]
        if status.in_flight:
            log.info("%s: waiting for %d request(s) to finish before stopping", model.name, status.in_flight)
            await status.idle.wait()
        status.set(State.STOPPING)
        self.on_change()
        t0 = time.monotonic()
        await self.backends.close(model.url)
        try:
            await self.systemd.stop(model.unit)
        except SwitchError:
            status.set(State.FAILED, "stop failed")
            raise
        status.set(State.STOPPED)
        log.info("%s: stopped %s in %.2f s", model.name, model.unit, time.monotonic() - t0)

    async def _start(self, model: Model) -> None:
        try:
            if model.cmd is not None:
                await self.systemd.start_transient(model.unit, model.cmd, f"llm-switch model {model.name}")
            else:
                await self.systemd.start(model.unit)
        except JobFailed as e:
            raise StartFailed(await self._why_failed(model, f"start job ended with result '{e.result}'")) from None
        await self._wait_healthy(model)

    async def _wait_healthy(self, model: Model) -> None:
        t0 = last_asked = time.monotonic()
        deadline = t0 + model.health_timeout
        first = True
        while True:
            probe_at = time.monotonic()
            status = await self._health(model, min(2.0, max(0.05, deadline - probe_at)))
            if status == 200:
                await self._check_identity(model)
                return
            now = time.monotonic()
            if now >= deadline:
                raise HealthTimeout(f"{model.name}: not healthy at {model.url}/health within "
                                    f"{model.health_timeout:g} s (health_timeout); unit {model.unit} was stopped")
            # nothing listening: has the unit died? (a 503 means it is alive and loading) Asked at
            # most every 50 ms: a D-Bus round trip per 5 ms probe would slow the probes down.
            if status is None and (first or now - last_asked >= 0.05):
                first, last_asked = False, now
                state = (await self.systemd.active_states([model.unit])).get(model.unit)
                if state is None or not state.running:
                    raise StartFailed(await self._why_failed(model, "exited while loading"))
            # probes at a steady rate: the time a probe and a D-Bus question took is not added
            await asyncio.sleep(max(0.0, probe_at + _probe_interval(now - t0) - time.monotonic()))

    async def _health(self, model: Model, timeout: float) -> int | None:
        """The status of the model's /health, or None when nothing answered."""
        try:
            async with self.backends.session(model.url).get(
                    f"{model.url}/health", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _check_identity(self, model: Model) -> None:
        """A stale server of another model on a shared port must not be taken for this one."""
        sharing = [m for m in self.config.models.values() if m.url == model.url and m.name != model.name]
        if not sharing:
            return
        try:
            async with self.backends.session(model.url).get(
                    f"{model.url}/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
                data = await r.json(content_type=None)
            ids = {str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)}
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
            return  # the backend does not tell its model id
        ours = {model.name, *model.aliases}
        if ids & ours:
            return
        for other in sharing:
            if ids & {other.name, *other.aliases}:
                raise BackendUnreachable(f"{model.name}: {model.url} answers as model {other.name!r}, not "
                                         f"{model.name!r}; is another server still bound to that port?")

    async def _why_failed(self, model: Model, what: str) -> str:
        detail = await self.systemd.failure(model.unit)
        if model.cmd is not None and not (os.path.isfile(model.cmd[0]) and os.access(model.cmd[0], os.X_OK)):
            detail += f"; {model.cmd[0]} is not an executable file"  # a transient unit is gone at once
        lines = await journal_tail(model.unit)
        text = f"{model.name}: unit {model.unit} {what} ({detail})"
        if lines:
            text += "; last log lines:\n" + "\n".join(lines)
        else:
            text += f"; see `journalctl --user -u {model.unit}`"
        return text

    def _record(self, previous: str | None, target: str, stopped_s: float, ready_s: float, ok: bool) -> None:
        self.switches.append(SwitchRecord(previous, target, stopped_s, ready_s, time.time(), ok))

    # -- lifecycle and other operations --------------------------------------------------------

    async def adopt(self) -> None:
        """Take configured units that are already running as they are: no restart."""
        models = list(self.config.models.values())
        states = await self.systemd.active_states([m.unit for m in models])
        for m in models:
            state = states.get(m.unit)
            if state is not None and state.running and await self._health(m, 2.0) == 200:
                self.models[m.name].set(State.READY)
                log.info("%s: adopted %s, already running", m.name, m.unit)
            elif state is not None and state.running:
                # still loading, or not answering: the first request waits for it without a restart
                log.info("%s: %s is %s but not healthy yet; the first request will wait for it", m.name, m.unit, state)
        self.on_change()

    async def unload(self, names: list[str] | None = None) -> list[str]:
        """Stop the given models (default: all running), each after its requests finish."""
        stopped: list[str] = []

        async def work() -> None:
            chosen = [self.config.models[n] for n in names] if names else list(self.config.models.values())
            running = await self._running_units(chosen)
            await asyncio.gather(*(self._stop(m) for m in running))
            stopped.extend(m.name for m in running)
            if stopped:
                log.info("unloaded %s", ", ".join(stopped))

        await self._run_exclusively(None, work())
        return stopped

    async def reload(self, new: Config) -> None:
        """Use a new config: running models still configured (same unit) keep running; the others
        are stopped after draining."""

        async def work() -> None:
            gone = [m for name, m in self.config.models.items()
                    if name not in new.models or new.models[name].unit != m.unit]
            running = await self._running_units(gone)
            await asyncio.gather(*(self._stop(m) for m in running))
            for m in gone:
                if self.models[m.name].in_flight == 0:
                    del self.models[m.name]
            for name in new.models:
                self.models.setdefault(name, ModelState())
            self.config = new
            log.info("config reloaded from %s: %d models%s", new.path, len(new.models),
                     f"; stopped {', '.join(m.name for m in running)}" if running else "")

        await self._run_exclusively(None, work())

    async def forget_if_stopped(self, model: Model) -> bool:
        """After a refused connection: True (and state stopped) when systemd no longer runs the unit,
        so that the next request starts it again."""
        for _ in range(25):  # a crashed process may take systemd a moment to notice
            state = (await self.systemd.active_states([model.unit])).get(model.unit)
            if state is None or not state.running:
                break
            await asyncio.sleep(0.02)
        else:
            return False
        status = self.models[model.name]
        if status.state is State.READY:
            status.set(State.STOPPED)
            self.on_change()
        return True

    async def close(self) -> None:
        """Cancel a pending operation; units are left as they are."""
        if self._op is not None:
            self._op.task.cancel()
            with contextlib.suppress(BaseException):
                await self._op.task

    # -- views --------------------------------------------------------------------------------

    def running(self) -> list[dict]:
        return [
            {"model": name, "unit": self.config.models[name].unit, "state": str(s.state),
             "url": self.config.models[name].url, "since": s.since, "in_flight": s.in_flight}
            for name, s in self.models.items()
            if s.state in (State.STARTING, State.READY, State.STOPPING) and name in self.config.models
        ]

    def state_of(self, name: str) -> ModelState:
        return self.models[name]
