"""The one owner of which models run: it decides (policy.py) and hands the operations to the
runner (runner.py); the waiting requests are in the queue (queue.py); each model keeps its own
books (model.py); readers get a snapshot (snapshot.py).

Invariants (docs/design.md has the rules with worked examples):
- Every decision to start or stop a unit is made by `_schedule()`, from the state of that moment,
  and carried out by at most one operation at a time (the runner): a switch, an unload, a reload.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from ..config import Config, Model, format_size
from ..errors import QueueFull, QueueTimeout, StartFailed, SwitchError, UnknownModel
from ..events import SwitchDone
from ..learned.store import LearnedStore
from ..units.systemd import ActiveState
from . import any_of, policy, waiting
from .learning import Learning
from .model import ModelRuntime
from .policy import State
from .ports import Parts
from .readahead import ReadAhead
from .queue import Ticket, WaitQueue
from .runner import Runner, Work
from .snapshot import CacheSnapshot, Snapshot

log = logging.getLogger(__name__)

Decide = Callable[..., policy.Plan]  # policy.decide's signature


class Scheduler:
    """`parts` are the units, backends, events and clock every model works with; `hooks(runtime)`
    attaches a new model's after_ready/before_stop hooks (the prompt cache's); `cache(name)` is
    its prompt cache's snapshot; `decide` is policy.decide (a test may break it on purpose);
    `store` keeps learned memory across restarts (learning.py); `readahead` reads the next
    model's files ahead of its start (none: no read-ahead, as in the simulation)."""

    def __init__(self, config: Config, parts: Parts, *, hooks: Callable[[ModelRuntime], None] | None = None,
                 cache: Callable[[str, bool], CacheSnapshot] | None = None, decide: Decide = policy.decide,
                 store: LearnedStore | None = None, readahead: ReadAhead | None = None) -> None:
        self.config = config
        self.parts = parts
        self.systemd, self.backends, self.events = parts.units, parts.backends, parts.events
        self._clock = parts.clock
        self._hooks, self._cache, self._decide = hooks, cache, decide
        self.learning = Learning(config, parts.start_log, store, parts.gpu.total_of)
        self._learning_tasks: set[asyncio.Task] = set()
        self.readahead = readahead
        self.models: dict[str, ModelRuntime] = {name: self._runtime(m) for name, m in config.models.items()}
        self.backends.use_keys(_backend_keys(config))
        self.switches: deque[SwitchDone] = deque(maxlen=20)
        self._phases = waiting.LoadPhases()
        self._queue = WaitQueue()
        self._runner = Runner(self._operation_ended)
        self._hold: frozenset[str] = frozenset()
        self._warned_pins: set[str] = set()  # `memory: auto` models found too large beside the pinned ones
        self._abandoned: set[str] = set()  # starts cancelled for a waiting request: their units stop next
        self._timer: asyncio.TimerHandle | None = None
        self._resync_task: asyncio.Task | None = None
        self._closed = False
        self.systemd.watch_units(self._unit_changed)
        self.systemd.on_reconnect(self._resync_soon)

    def _runtime(self, model: Model) -> ModelRuntime:
        self.learning.recall(model)
        runtime = ModelRuntime(model, self.parts, self._sharing)
        if self._hooks is not None:
            self._hooks(runtime)
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
        ticket = Ticket(name, self._clock(), runtime.model.priority)
        self._queue.add(ticket)
        runtime.enqueue()
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

    def _leave(self, ticket: Ticket) -> None:
        if self._queue.remove(ticket):
            if (runtime := self.models.get(ticket.model)) is not None:
                runtime.dequeue()
            ticket.admitted.cancel()
            self._schedule()

    def chosen(self, name: object) -> object:
        """The model that serves a request naming `name`: a member for an `any_of` virtual model
        (scheduling/any_of.py), else `name` as it is."""
        group = self.config.group(name) if isinstance(name, str) else None
        if group is None:
            return name
        return any_of.choose(group.members, {n: self._view(r) for n, r in self.models.items()},
                             self.learning.budget()[0])

    def snapshot(self) -> Snapshot:
        """Every model as of now, for http and observe (scheduling/snapshot.py)."""
        now, config, positions, cache = self._clock(), self.config, self._queue.positions(), self._cache
        learning = self.learning
        models = {name: replace(r.snapshot(positions.get(name), cache(name, r.model.prompt_cache) if cache else None,
                                           now), learned=learning.learned(name), device=learning.device,
                                counted=learning.counted(r.model), learned_from=learning.source(name))
                  for name, r in self.models.items()}
        budget, budget_from = learning.budget()
        return Snapshot.of(models, at=now, config_path=config.path, listen=config.listen, memory_budget=budget,
                           memory_budget_from=budget_from, vram_note=self.parts.gpu.note,
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
        now = self._clock()
        plan = self._decide({n: self._view(r) for n, r in self.models.items()}, self._queue.heads(),
                            self.learning.budget()[0], now)
        self._hold = plan.hold
        self.read_ahead(plan.upcoming if plan.start is None else plan.start if plan.stop else None)
        for name in sorted(plan.admit):  # sorted: the same order in every run (a seed replays)
            self._admit_waiting(name)
        if plan.abandon:
            self._abandon(plan.abandon, plan.give_way_to)
        elif not self._runner.busy and not self._runner.begin_submitted():
            if plan.start is not None:
                target = plan.start
                self._runner.begin(target, lambda: self._switch(target, plan.stop))
            elif plan.unload:
                names = plan.unload
                self._runner.begin(None, lambda: self._stop_idle(names))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, plan.wake_at - now) + 0.001, self._schedule)

    def _view(self, runtime: ModelRuntime) -> policy.ModelView:
        """The policy's view, with the memory the budget counts (a declared or a learned figure)."""
        return replace(runtime.view(), memory=self.learning.counted(runtime.model))

    def _abandon(self, names: tuple[str, ...], waiting: str | None) -> None:
        """Cancel a start nobody waits for any more; its unit is stopped once the start ended."""
        for name in names:
            if name in self._abandoned or self.models[name].state is not State.STARTING:
                continue
            self._abandoned.add(name)
            log.info("%s: load abandoned: its clients left, and a request for %s waits for the memory", name, waiting)
            if self._runner.current is not None:
                self._runner.current.cancel()

    def read_ahead(self, name: str | None) -> None:
        """`name`'s files into the page cache ahead of its start (scheduling/readahead.py)."""
        if self.readahead is not None and name is not None and (runtime := self.models.get(name)) is not None:
            self.readahead.next(runtime.model)

    def _admit_waiting(self, name: str) -> None:
        runtime = self.models[name]
        for ticket in self._queue.take(name):
            runtime.dequeue()
            if not ticket.admitted.done():
                runtime.admit()
                ticket.admitted.set_result(None)

    def _fail_waiting(self, name: str, error: BaseException) -> None:
        runtime = self.models.get(name)
        for ticket in self._queue.take(name):
            if runtime is not None:
                runtime.dequeue()
            if not ticket.admitted.done():
                ticket.admitted.set_exception(error)
                ticket.admitted.exception()  # a waiter that left meanwhile must not warn "never retrieved"

    def _operation_ended(self, target: str | None, error: BaseException | None) -> None:
        if target in self._abandoned:
            self._abandoned.discard(target)
            abandoned = self.models[target]
            if not self._closed:  # on exit units are left as they are
                self._runner.begin(None, lambda: self._stop_abandoned(abandoned))
        elif target is not None and error is not None:
            self._fail_waiting(target, error)  # the next request tries again
        elif target is not None and (r := self.models.get(target)) and r.state is State.READY and not r.draining:
            # the target's waiters go in before anything else is decided: with min_loaded 0 the
            # policy would otherwise stop it at once for the next switch, having served none
            self._admit_waiting(target)
        self._schedule()

    async def _run_exclusively(self, work: Work) -> None:
        """Queue an operation that is not a switch (unload, reload); return once it ran."""
        done = self._runner.submit(work)
        self._schedule()
        await done

    # -- operations ---------------------------------------------------------------------------

    async def _switch(self, name: str, stop: tuple[str, ...]) -> None:
        target = self.models[name]
        t0 = self._clock()
        stopping: list[ModelRuntime] = []
        try:
            await self._make_room(target, stop, stopping)
        except SwitchError as e:
            previous = tuple(r.name for r in stopping)
            self._record(previous, name, self._clock() - t0, 0.0, ok=False)
            raise StartFailed(f"{name}: could not stop {', '.join(previous)} first: {e.message}") from None
        previous = tuple(r.name for r in stopping)
        stopped_s = self._clock() - t0
        self.learning.recall(target.model)  # the file or the arguments may have changed since
        started = time.time()
        if self.readahead is not None:
            self.readahead.started(name)
        try:
            ready_s = await target.start()
        except SwitchError:
            self._record(previous, name, stopped_s, self._clock() - t0 - stopped_s, ok=False)
            raise
        await self._measure(target)
        self._learn_soon(target, started)
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

    def _warn_beside_pins(self, target: ModelRuntime) -> None:
        """A `memory: auto` model that learned a size too large to run beside the pinned ones:
        warned once (config/groups.py refuses declared sizes that do not fit at load)."""
        budget, learned = self.learning.budget()[0], self.learning.learned(target.name)
        pinned = [r.model for r in self.models.values() if r.model.pin and r is not target]
        if (not target.model.memory_auto or budget is None or learned is None or not pinned
                or target.name in self._warned_pins):
            return
        sizes = {p.name: self.learning.counted(p) or 0 for p in pinned}
        if learned + sum(sizes.values()) > budget:
            self._warned_pins.add(target.name)
            log.warning("models.%s: %s learned + %s exceed memory_budget %s; it cannot run beside the pinned "
                        "models", target.name, format_size(learned),
                        " + ".join(f"pinned {n} {format_size(b)}" for n, b in sizes.items()), format_size(budget))

    async def _make_room(self, target: ModelRuntime, stop: tuple[str, ...], stopping: list[ModelRuntime]) -> None:
        """Drain and stop the planned models (`stop`), then the strays in the way, each added to
        `stopping` as it is chosen. Strays are looked for once the drain is over: a unit started
        by hand during a long drain counts."""
        await self._drain_and_stop([self.models[n] for n in stop], stopping)
        await self._drain_and_stop(await self._strays(target, stop), stopping)

    @staticmethod
    async def _drain_and_stop(chosen: list[ModelRuntime], stopping: list[ModelRuntime]) -> None:
        stopping.extend(chosen)
        for r in chosen:
            r.drain()  # all at once: none takes new requests while another drains
        await asyncio.gather(*(r.stop() for r in chosen))

    async def _strays(self, target: ModelRuntime, planned: tuple[str, ...]) -> list[ModelRuntime]:
        """Units systemd runs that the switch did not start (by hand, or left by a crash) and that
        would not leave room for `target` beside the models that keep running."""
        others = [r for r in self.models.values() if r is not target and r.name not in planned]
        if not others:
            return []
        states = await self.systemd.active_states([r.model.unit for r in others])
        strays = [r for r in others if not r.state.up and (s := states.get(r.model.unit)) is not None and s.running]
        if not strays:
            return []
        kept = [self._view(r) for r in others if r.state.up]
        as_running = [policy.ModelView(r.name, r.model.url, self.learning.counted(r.model), State.READY)
                      for r in strays]
        evict = {m.name for m in policy.evict_for(self._view(target), kept + as_running, self.learning.budget()[0])}
        return [r for r in strays if r.name in evict]

    def _learn_soon(self, runtime: ModelRuntime, started: float) -> None:
        """Read what the start taught in the background (the journal may lag); decide again after."""
        async def learn() -> None:
            try:
                await self.learning.learn(runtime.model, started, runtime.memory)
            except Exception:  # costs the figure (the model runs alone), never the switch
                log.exception("%s: memory not learned", runtime.name)
                return
            self._warn_beside_pins(runtime)
            self._schedule()

        task = asyncio.get_running_loop().create_task(learn(), name=f"llm-switch learn {runtime.name}")
        self._learning_tasks.add(task)
        task.add_done_callback(self._learning_tasks.discard)

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
            r.drain()
        await asyncio.gather(*(r.stop() for r in running))
        return running

    async def _stop_abandoned(self, runtime: ModelRuntime) -> None:
        stopped = await self._stop_running([runtime])
        log.info("%s: %s after its load was abandoned", runtime.name,
                 f"stopped {runtime.model.unit}" if stopped else "its unit had already stopped")

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
                self._runner.begin(r.name, r.start)
                with contextlib.suppress(SwitchError):
                    await asyncio.shield(self._runner.current)
            if r.state is State.READY and self.learning.learned(r.name) is None:
                self._learn_soon(r, 0.0)  # not kept from an earlier run: its journal's last breakdown tells

    async def load(self, name: str) -> ModelRuntime:
        """Start a model as a request would (same queue, same rules), without sending it anything.
        A model whose starts failed is tried again at once."""
        if (runtime := self.models.get(name)) is not None:
            runtime.clear_backoff()
        # the load goes on when its caller leaves (a /load client that hung up): it was asked for,
        # so it never gives way as a load nobody waits for would (docs/design.md, "Who goes next")
        acquiring = asyncio.ensure_future(self.acquire(name))
        acquiring.add_done_callback(
            lambda t: t.cancelled() or t.exception() is not None or self.release(t.result()))
        return await asyncio.shield(acquiring)

    async def unload(self, names: list[str] | None = None) -> list[str]:
        """Stop the given models (default: all running), each after its requests finish."""
        stopped: list[str] = []

        async def work() -> None:
            # a reload queued before this one may have dropped a named model meanwhile
            chosen = [self.models[n] for n in names if n in self.models] if names else list(self.models.values())
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
                self.learning.forget(r.name)
                del self.models[r.name]
            self.learning.config = new
            for name, model in new.models.items():
                if name in self.models:
                    self.learning.recall(model)  # the file or the arguments may have changed
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
        if self.readahead is not None:
            self.readahead.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._resync_task is not None:
            self._resync_task.cancel()
        for task in self._learning_tasks:
            task.cancel()
        for ticket in self._queue:
            ticket.admitted.cancel()
        await self._runner.close()


def _backend_keys(config: Config) -> dict[str, str]:
    return {m.url: m.backend_api_key for m in config.models.values() if m.backend_api_key}
