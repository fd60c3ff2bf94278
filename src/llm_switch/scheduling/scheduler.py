"""The one owner of which models run.

Invariants (docs/design.md has the rules with worked examples):
- Every decision to start or stop a unit is made by `_schedule()`, from the state of that moment,
  and carried out by at most one operation at a time (`self._op`): a switch, an unload, a reload.
- A request is admitted (counted in flight) in the same step that decides it may go, so no
  later operation can stop its model before it is served. No lock is held while it is served.
- Requests for a model being started wait for that start and are admitted in the step that
  follows its success, before any other decision.
- A model is stopped only after its in-flight requests finish (drain, never cut).
- No request waits longer than `max_wait`; no more than `max_queue` wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..backends.llama_server import Backends
from ..config import Config, Model
from ..errors import QueueFull, QueueTimeout, StartFailed, SwitchError, UnknownModel
from ..events import EventBus, SwitchDone
from ..units.systemd import ActiveState, Systemd
from . import policy, waiting
from .memory import Gpu
from .model import ModelRuntime
from .policy import State
from .prompt_cache import PromptCache
from .readahead import ReadAhead
from .snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Ticket:
    """A request waiting for its model; `admitted` is resolved once it may go."""

    model: str
    since: float = field(default_factory=time.monotonic)
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    def __init__(self, config: Config, systemd: Systemd, backends: Backends, events: EventBus | None = None) -> None:
        self.config = config
        self.systemd = systemd
        self.backends = backends
        self.events = events or EventBus()
        self.gpu = Gpu()
        self.prompt_cache = PromptCache(lambda: self.config.prompt_cache, backends)
        self.readahead = ReadAhead(lambda: self.config, systemd)
        self.models: dict[str, ModelRuntime] = {name: self._runtime(m) for name, m in config.models.items()}
        backends.use_keys(_backend_keys(config))
        self.switches: deque[SwitchDone] = deque(maxlen=20)
        self._phases = waiting.LoadPhases()
        self._queue: list[_Ticket] = []
        self._hold: frozenset[str] = frozenset()
        self._op: asyncio.Task | None = None
        self._admin: deque[tuple[Callable[[], Awaitable[None]], asyncio.Future]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._resync_task: asyncio.Task | None = None
        self._closed = False
        systemd.watch_units(self._unit_changed)
        systemd.on_reconnect(self._resync_soon)

    def _runtime(self, model: Model) -> ModelRuntime:
        runtime = ModelRuntime(model, self.systemd, self.backends, self.events, self.gpu, self._sharing)
        self.prompt_cache.attach(runtime)
        return runtime

    def _sharing(self, model: Model) -> list[Model]:
        return [m for m in self.config.models.values() if m.url == model.url and m.name != model.name]

    # -- requests -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model: Model, on_wait: Callable[[], None] | None = None) -> AsyncIterator[ModelRuntime]:
        """Hold `model` running while the body runs: switch to it if needed, count it in flight.
        `on_wait()` is called once if the request has to wait (for a load, or for its turn)."""
        runtime = await self.acquire(model.name, on_wait)
        try:
            yield runtime
        finally:
            self.release(runtime)

    async def acquire(self, name: str, on_wait: Callable[[], None] | None = None) -> ModelRuntime:
        runtime = self.models.get(name)
        if runtime is None:
            raise UnknownModel.named(name, self.config.known())
        if not self._queue and runtime.state is State.READY and not runtime.draining and name not in self._hold:
            runtime.admit()  # the common case: nothing waits, the model serves
            return runtime
        if (failure := runtime.backing_off()) is not None:
            raise failure
        if len(self._queue) >= self.config.max_queue:
            raise QueueFull(f"{name}: {len(self._queue)} requests are already waiting (max_queue); try again later",
                            retry_after=self._retry_after())
        ticket = _Ticket(name)
        self._queue.append(ticket)
        runtime.waiting += 1
        self._schedule()
        if on_wait is not None and not ticket.admitted.done():
            on_wait()
        try:
            await asyncio.wait([ticket.admitted], timeout=self.config.max_wait)
        except asyncio.CancelledError:
            self._leave(ticket)
            if ticket.admitted.done() and not ticket.admitted.cancelled() and ticket.admitted.exception() is None:
                self.release(runtime)
            raise
        if not ticket.admitted.done():
            self._leave(ticket)
            raise QueueTimeout(f"{name}: waited {self.config.max_wait:g} s (max_wait) for its turn; other models' "
                               "requests held the memory", retry_after=self._retry_after())
        ticket.admitted.result()  # raises the start's failure
        return self.models.get(name, runtime)

    def release(self, runtime: ModelRuntime) -> None:
        runtime.release()
        if self._queue or runtime.model.idle_unload is not None:
            self._schedule()

    def _leave(self, ticket: _Ticket) -> None:
        if ticket in self._queue:
            self._queue.remove(ticket)
            if (runtime := self.models.get(ticket.model)) is not None:
                runtime.waiting -= 1
            ticket.admitted.cancel()
            self._schedule()

    def queue_position(self, name: str) -> int | None:
        """1 when `name`'s waiting requests are served next, 2 after one other model's, …; None
        when none of its requests wait."""
        order: list[str] = []
        for t in self._queue:
            if t.model not in order:
                order.append(t.model)
        return order.index(name) + 1 if name in order else None

    def snapshot(self) -> Snapshot:
        """Every model as of now, for http and observe (scheduling/snapshot.py)."""
        now, config, cache = time.monotonic(), self.config, self.prompt_cache
        models = {name: r.snapshot(self.queue_position(name), cache.snapshot(name, r.model.prompt_cache), now)
                  for name, r in self.models.items()}
        return Snapshot.of(models, at=now, config_path=config.path, listen=config.listen,
                           memory_budget=config.memory_budget, vram_note=self.gpu.note,
                           switches=tuple(self.switches), queued=len(self._queue))

    async def waiting_for(self, name: str, label: str, waited: float) -> tuple[str, float]:
        """What a request for `name` (called `label` by its client) that has waited `waited`
        seconds waits for now, and for how long (scheduling/waiting.py)."""
        return await waiting.describe(self.snapshot(), name, label, waited, self._phases)

    def _retry_after(self) -> float:
        loads = [r.load_s for r in self.models.values() if r.load_s]
        return max(1.0, round(max(loads, default=5.0) * 2))

    # -- decisions ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Decide from the state of this moment and act: admit, start an operation, set a timer."""
        if self._closed:
            return
        now = time.monotonic()
        heads: dict[str, policy.Waiter] = {}
        for t in self._queue:
            heads.setdefault(t.model, policy.Waiter(t.model, t.since))
        plan = policy.decide({n: r.view() for n, r in self.models.items()}, list(heads.values()),
                             self.config.memory_budget, now)
        self._hold = plan.hold
        self.read_ahead(plan.upcoming if plan.start is None else plan.start if plan.stop else None)
        for name in plan.admit:
            self._admit_waiting(name)
        if self._op is None:
            if self._admin:
                work, done = self._admin.popleft()
                self._begin(None, work, done)
            elif plan.start is not None:
                target = plan.start
                self._begin(target, lambda: self._switch(target, plan.stop))
            elif plan.unload:
                names = plan.unload
                self._begin(None, lambda: self._stop_idle(names))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, plan.wake_at - now) + 0.001, self._schedule)

    def read_ahead(self, name: str | None) -> None:
        """`name`'s files into the page cache ahead of its start (scheduling/readahead.py)."""
        if name is not None and (runtime := self.models.get(name)) is not None:
            self.readahead.next(runtime.model)

    def _admit_waiting(self, name: str) -> None:
        runtime = self.models[name]
        for ticket in [t for t in self._queue if t.model == name]:
            self._queue.remove(ticket)
            runtime.waiting -= 1
            if not ticket.admitted.done():
                runtime.admit()
                ticket.admitted.set_result(None)

    def _fail_waiting(self, name: str, error: BaseException) -> None:
        runtime = self.models.get(name)
        for ticket in [t for t in self._queue if t.model == name]:
            self._queue.remove(ticket)
            if runtime is not None:
                runtime.waiting -= 1
            if not ticket.admitted.done():
                ticket.admitted.set_exception(error)
                ticket.admitted.exception()  # a waiter that left meanwhile must not warn "never retrieved"

    def _begin(self, target: str | None, work: Callable[[], Awaitable[None]],
               done: asyncio.Future | None = None) -> None:
        task = asyncio.get_running_loop().create_task(work(), name=f"llm-switch operation ({target or 'admin'})")
        self._op = task

        def finished(task: asyncio.Task) -> None:
            self._op = None
            error = None if task.cancelled() else task.exception()
            if done is not None and not done.done():
                if task.cancelled():
                    done.cancel()
                elif error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(None)
            if target is not None and error is not None:
                self._fail_waiting(target, error)  # the next request tries again
            self._schedule()  # admits the target's waiters before anything else is decided

        task.add_done_callback(finished)

    async def _run_exclusively(self, work: Callable[[], Awaitable[None]]) -> None:
        """Queue an operation that is not a switch (unload, reload); return once it ran."""
        done = asyncio.get_running_loop().create_future()
        self._admin.append((work, done))
        self._schedule()
        await done

    # -- operations ---------------------------------------------------------------------------

    async def _switch(self, name: str, stop: tuple[str, ...]) -> None:
        target = self.models[name]
        t0 = time.monotonic()
        stopping = [self.models[n] for n in stop] + await self._strays(target, stop)
        previous = tuple(r.name for r in stopping)
        for r in stopping:
            r.draining = True
        try:
            await asyncio.gather(*(r.stop() for r in stopping))
        except SwitchError as e:
            self._record(previous, name, time.monotonic() - t0, 0.0, ok=False)
            raise StartFailed(f"{name}: could not stop {', '.join(previous)} first: {e.message}") from None
        stopped_s = time.monotonic() - t0
        self.readahead.started(name)
        try:
            ready_s = await target.start()
        except SwitchError:
            self._record(previous, name, stopped_s, time.monotonic() - t0 - stopped_s, ok=False)
            raise
        await self._measure(target)
        self._record(previous, name, stopped_s, ready_s, ok=True)
        beside = [r.name for r in self.models.values() if r.state is State.READY and r is not target]
        if previous:
            text = (f"switch {', '.join(previous)} → {name}: stopped {', '.join(previous)} in {stopped_s:.2f} s, "
                    f"{name} ready in {ready_s:.2f} s")
        else:
            text = f"switch → {name}: {name} ready in {ready_s:.2f} s"
        if beside:
            text += f" (beside {', '.join(beside)})"
        log.info("%s; %s", text, target.memory_text())
        if target.measured_over_declared():
            log.warning("%s: measured memory exceeds the declared %s; raise models.%s.memory in config.yaml",
                        name, target.memory_text(), name)

    async def _strays(self, target: ModelRuntime, planned: tuple[str, ...]) -> list[ModelRuntime]:
        """Units systemd runs that the switch did not start (by hand, or left by a crash) and that
        would not leave room for `target`: stopped with the planned ones."""
        others = [r for r in self.models.values() if r is not target and r.name not in planned]
        if not others:
            return []
        states = await self.systemd.active_states([r.model.unit for r in others])
        strays = [r for r in others if not r.state.up and (s := states.get(r.model.unit)) is not None and s.running]
        if not strays:
            return []
        kept = [r.view() for r in others if r.state.up]
        as_running = [policy.ModelView(r.name, r.model.url, r.model.memory, State.READY) for r in strays]
        evict = {m.name for m in policy.evict_for(target.view(), kept + as_running, self.config.memory_budget)}
        return [r for r in strays if r.name in evict]

    async def _measure(self, runtime: ModelRuntime) -> None:
        try:
            await runtime.measure()
        except SwitchError as e:
            log.debug("%s: memory not measured: %s", runtime.name, e.message)

    async def _stop_running(self, chosen: list[ModelRuntime]) -> list[ModelRuntime]:
        """Stop those of `chosen` that run, as the switch or systemd sees it, each after draining."""
        if not chosen:
            return []
        states = await self.systemd.active_states([r.model.unit for r in chosen])
        running = [r for r in chosen if r.state.up or ((s := states.get(r.model.unit)) is not None and s.running)]
        for r in running:
            r.draining = True
        await asyncio.gather(*(r.stop() for r in running))
        return running

    async def _stop_idle(self, names: tuple[str, ...]) -> None:
        await self._stop_running([self.models[n] for n in names if n in self.models])
        log.info("unloaded %s: idle longer than idle_unload", ", ".join(names))

    def _record(self, previous: tuple[str, ...], target: str, stopped_s: float, ready_s: float, ok: bool) -> None:
        record = SwitchDone(previous, target, stopped_s, ready_s, time.time(), ok)
        self.switches.append(record)
        self.events.publish(record)

    # -- lifecycle and other operations --------------------------------------------------------

    async def adopt(self) -> None:
        """Take configured units that already run as they are: no restart. One still loading is
        waited for as a start of its own."""
        states = await self.systemd.active_states([r.model.unit for r in self.models.values()])
        for r in self.models.values():
            state = states.get(r.model.unit)
            if state is None or not state.running:
                continue
            if await r.adopt():
                await self._measure(r)
                log.info("%s: adopted %s, already running; %s", r.name, r.model.unit, r.memory_text())
            else:
                log.info("%s: %s is %s but not healthy yet; waiting for it", r.name, r.model.unit, state)
                self._begin(r.name, r.start)
                with contextlib.suppress(SwitchError):
                    await asyncio.shield(self._op)

    async def load(self, name: str) -> ModelRuntime:
        """Start a model as a request would (same queue, same rules), without sending it anything.
        A model whose starts failed is tried again at once."""
        if (runtime := self.models.get(name)) is not None:
            runtime.clear_backoff()
        runtime = await self.acquire(name)
        self.release(runtime)
        return runtime

    async def unload(self, names: list[str] | None = None) -> list[str]:
        """Stop the given models (default: all running), each after its requests finish."""
        stopped: list[str] = []

        async def work() -> None:
            chosen = [self.models[n] for n in names] if names else list(self.models.values())
            stopped.extend(r.name for r in await self._stop_running(chosen))
            if stopped:
                log.info("unloaded %s", ", ".join(stopped))

        await self._run_exclusively(work)
        return stopped

    async def reload(self, new: Config) -> None:
        """Use a new config: running models still configured with the same unit keep running; the
        others are stopped after draining."""

        async def work() -> None:
            gone = [r for name, r in self.models.items()
                    if name not in new.models or new.models[name].unit != r.model.unit]
            running = await self._stop_running(gone)
            for r in gone:
                self._fail_waiting(r.name, UnknownModel.named(r.name, new.known()))
                del self.models[r.name]
            for name, model in new.models.items():
                if name in self.models:
                    self.models[name].model = model
                    self.models[name].clear_backoff()  # the unit may have been fixed
                else:
                    self.models[name] = self._runtime(model)
            self.config = new
            self.backends.use_keys(_backend_keys(new))
            log.info("config reloaded from %s: %d models%s", new.path, len(new.models),
                     f"; stopped {', '.join(r.name for r in running)}" if running else "")

        await self._run_exclusively(work)

    def _unit_changed(self, unit: str, state: ActiveState) -> None:
        """systemd says a unit changed state: one the switch believes ready that stops or fails was
        stopped behind its back (the switch's own stops go through STOPPING first)."""
        runtime = next((r for r in self.models.values() if r.model.unit == unit), None)
        if runtime is None or runtime.state is not State.READY or state.running:
            return
        log.info("%s: %s is %s: stopped outside the switch", runtime.name, unit, state)
        runtime.forget()
        self._schedule()

    def _resync_soon(self) -> None:
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync(), name="llm-switch resync")

    async def _resync(self) -> None:
        """After the bus came back: signals may have been missed, so read every unit's state again."""
        try:
            states = await self.systemd.active_states([r.model.unit for r in self.models.values()])
        except SwitchError as e:
            log.warning("could not read the units' states again: %s", e.message)
            return
        for r in list(self.models.values()):
            self._unit_changed(r.model.unit, states.get(r.model.unit, ActiveState.INACTIVE))

    async def forget_if_stopped(self, runtime: ModelRuntime) -> bool:
        """After a refused connection: True (and the model stopped) when systemd no longer runs its
        unit, so that the next request starts it again."""
        for _ in range(25):  # a crashed process may take systemd a moment to notice
            state = (await self.systemd.active_states([runtime.model.unit])).get(runtime.model.unit)
            if state is None or not state.running:
                break
            await asyncio.sleep(0.02)
        else:
            return False
        runtime.forget()
        return True

    async def close(self) -> None:
        """Cancel a pending operation and the waiting requests; units are left as they are."""
        self._closed = True
        self.readahead.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._resync_task is not None:
            self._resync_task.cancel()
        for ticket in self._queue:
            ticket.admitted.cancel()
        if self._op is not None:
            self._op.cancel()
            with contextlib.suppress(BaseException):
                await self._op


def _backend_keys(config: Config) -> dict[str, str]:
    return {m.url: m.backend_api_key for m in config.models.values() if m.backend_api_key}
