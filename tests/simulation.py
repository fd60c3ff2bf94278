"""A deterministic simulation of the scheduler (tests/test_simulation.py runs it).

The real `Scheduler` and `ModelRuntime` run in-process against fakes of their Protocols
(scheduling/ports.py) under a virtual clock: an asyncio loop whose `time()` jumps to the next timer
when nothing is ready, so a 10-minute workload runs in milliseconds and every run of a seed takes
the same steps. The world (`World`) plays systemd, the backends and the clients from one seeded
random generator, and checks the invariants of docs/design.md after every step of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from llm_switch.config import Config, Model, PromptCacheSettings
from llm_switch.config.groups import AnyOf, check_pins
from llm_switch.errors import ConfigError, JobFailed, SwitchError
from llm_switch.events import EventBus, StateChanged
from llm_switch.scheduling import policy
from llm_switch.scheduling.policy import TURNAROUND
from llm_switch.scheduling.ports import Parts
from llm_switch.scheduling.scheduler import Scheduler
from llm_switch.units.systemd import ActiveState

GiB = 1 << 30
EPSILON = 1e-6


class Stuck(Exception):
    """Nothing is ready and no timer is set: every task waits for something that never comes."""


class Violation(AssertionError):
    """An invariant of docs/design.md does not hold."""


# -- the virtual clock ---------------------------------------------------------------------------

class _Selector(selectors.BaseSelector):
    """Nothing real is waited on: a wait for I/O with a timeout moves the clock to its end."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop, self._keys = loop, {}

    def register(self, fileobj, events, data=None):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj):
        return self._keys.pop(fileobj if isinstance(fileobj, int) else fileobj.fileno())

    def select(self, timeout=None):
        if timeout is None:
            raise Stuck("nothing is ready and no timer is set: a task waits forever")
        self._loop.now += timeout
        return []

    def get_map(self):
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """`time()` is virtual; `after_step()` runs after every iteration of the loop."""

    def __init__(self) -> None:
        self.now = 0.0
        self.after_step: Callable[[], None] | None = None
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now

    def _run_once(self) -> None:
        super()._run_once()
        if self.after_step is not None:
            self.after_step()


# -- the workload --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Behaviour:
    """How one model's unit behaves when started (drawn per start from the seed)."""

    load_s: float
    fail_p: float   # the start job fails
    die_p: float    # the process dies while loading


@dataclass(frozen=True)
class Request:
    at: float
    model: str
    serve_s: float
    leave_at: float | None  # the client disconnects then


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str  # kill, bus, reload, unload (/unload/{model}), load (/load/{model}), stray (started by hand)
    model: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Workload:
    config: Config
    behaviour: dict[str, Behaviour]
    requests: tuple[Request, ...]
    faults: tuple[Fault, ...]
    patient: bool  # max_wait is long enough that a queue_timeout means starvation
    learned: dict[str, int] = field(default_factory=dict)  # what a `memory: auto` model's breakdown says


FAULTS = ("kill", "kill", "bus", "reload", "unload", "load", "stray")


def workload(seed: int) -> Workload:
    rng = random.Random(seed)
    models, behaviour = _models(rng)
    names = list(models)
    requests = _requests(rng, names)
    end = requests[-1].at + 5
    faults = [Fault(rng.uniform(0, end), rng.choice(FAULTS), rng.choice(names), rng.uniform(0.01, 3.0))
              for _ in range(rng.choice((0, 0, 1, 2)))]
    declared = [m.memory for m in models.values() if m.memory]
    budget = None if rng.random() < 0.2 or not declared else rng.randint(max(declared), sum(declared))
    models = _pin_one(rng, models, budget)
    any_of = _any_of(rng, names)
    requests = tuple(replace(r, model="any") if any_of and rng.random() < 0.25 else r for r in requests)
    faults += [Fault(0.0, "load", n) for n, m in models.items() if m.pin]  # a pinned model starts with the switch
    longest = max(b.load_s for b in behaviour.values())
    window = max([5.0, 3 * longest] + [m.min_loaded or 0.0 for m in models.values()])
    slowest = max(r.serve_s for r in requests)
    bound = (len(names) + 1) * (window + slowest + TURNAROUND + longest + 5.0)  # the most a turn may take
    patient = rng.random() < 0.7
    config = Config("127.0.0.1", 3002, models, names={m: m for m in names}, memory_budget=budget,
                    prompt_cache=PromptCacheSettings("/nonexistent"),  # no hooks here: never read
                    max_wait=2 * bound if patient else rng.uniform(0.5, 20.0), max_queue=rng.choice((4, 256)),
                    any_of=any_of, any_of_names={n: n for n in any_of})
    # a pinned model beside one of unknown size is left to the warning at its first start (scheduler.py)
    auto = budget is not None and not any(m.pin for m in models.values())
    models, learned = _auto(random.Random(rng.random()), models) if auto else (models, {})
    return Workload(replace(config, models=models), behaviour, requests, tuple(sorted(faults, key=lambda f: f.at)),
                    patient, learned)


def _pin_one(rng: random.Random, models: dict[str, Model], budget: int | None) -> dict[str, Model]:
    """A third of the workloads pin a model, where the config allows it (config/groups.py)."""
    if rng.random() >= 0.3:
        return models
    pinned = {**models, (name := rng.choice(list(models))): replace(models[name], pin=True)}
    try:
        check_pins(pinned, budget)
    except ConfigError:
        return models
    return pinned


def _any_of(rng: random.Random, names: list[str]) -> dict[str, AnyOf]:
    """Half the workloads have a virtual model `any` over two or more of the models."""
    if len(names) < 2 or rng.random() < 0.5:
        return {}
    return {"any": AnyOf("any", tuple(rng.sample(names, rng.randint(2, len(names)))))}


def _auto(rng: random.Random, models: dict[str, Model]) -> tuple[dict[str, Model], dict[str, int]]:
    """Some models with a size become `memory: auto`: their units print it in a memory breakdown.
    (Drawn from a generator of their own, so that the rest of each seed's workload stays as it was.)"""
    learned = {n: m.memory for n, m in models.items() if m.memory is not None and rng.random() < 0.3}
    return {n: replace(m, memory=None, memory_auto=True) if n in learned else m for n, m in models.items()}, learned


def _models(rng: random.Random) -> tuple[dict[str, Model], dict[str, Behaviour]]:
    """1 to 4 models, some on one URL, some without `memory`; their windows and how they load."""
    n = rng.randint(1, 4)
    models, behaviour = {}, {}
    for i in range(n):
        name, port = f"m{i}", 3004 + rng.randrange(max(1, n - rng.randint(0, 1)))
        memory = None if rng.random() < 0.15 else rng.randint(1, 8) * GiB
        min_loaded = None if rng.random() < 0.5 else rng.choice((0.0, rng.uniform(0.0, 10.0)))
        idle_unload = None if rng.random() < 0.6 else rng.uniform(0.5, 20.0)
        priority = 0 if rng.random() < 0.6 else rng.randint(-1, 2)
        models[name] = Model(name, f"{name}.service", f"http://127.0.0.1:{port}", memory=memory,
                             min_loaded=min_loaded, idle_unload=idle_unload, health_timeout=60.0, priority=priority)
        behaviour[name] = Behaviour(rng.uniform(0.05, 6.0), rng.choice((0.0, 0.0, 0.1, 0.4)),
                                    rng.choice((0.0, 0.0, 0.1)))
    return models, behaviour


def _requests(rng: random.Random, names: list[str]) -> tuple[Request, ...]:
    """3 to 18 requests, in bursts or apart, a third of them for one favourite model."""
    requests, t = [], 0.0
    favourite = rng.choice(names)
    for _ in range(rng.randint(3, 18)):
        t += rng.expovariate(1 / rng.choice((0.05, 0.5, 3.0)))
        model = favourite if rng.random() < 0.3 else rng.choice(names)
        leave = t + rng.uniform(0.0, 15.0) if rng.random() < 0.1 else None
        requests.append(Request(t, model, rng.choice((0.01, rng.uniform(0.01, 4.0))), leave))
    return tuple(requests)


# -- the fakes -----------------------------------------------------------------------------------

@dataclass
class Unit:
    """One fake unit: its state as systemd says it, and its backend's."""

    name: str
    model: str
    state: ActiveState = ActiveState.INACTIVE
    ready_at: float | None = None  # the backend answers 200 from then on
    dies_at: float | None = None   # the process exits while loading then
    started: int = 0
    by_hand: bool = False          # started outside the switch (a stray)
    running: bool = False          # state.running, kept beside it: read after every step
    probes: list[asyncio.Future] = field(default_factory=list)  # /health polls waiting for the load

    def set(self, state: ActiveState) -> None:
        self.state, self.running = state, state.running
        for probe in self.probes:  # a process that exits closes its connections
            if not probe.done():
                probe.set_result(None)
        self.probes.clear()


class FakeUnits:
    """systemd as the scheduler sees it (ports.Units): jobs take virtual time; a start fails or
    the process dies while loading as the seed says; units are killed behind the switch's back;
    while the bus is down calls wait and signals are lost."""

    JOB_S = 0.01

    def __init__(self, world: World) -> None:
        self.world = world
        self.units: dict[str, Unit] = {}
        self._watchers: list[Callable[[str, ActiveState], None]] = []
        self._reconnect: list[Callable[[], None]] = []
        self.bus_back_at = 0.0

    def unit(self, name: str) -> Unit:
        if name not in self.units:
            self.units[name] = Unit(name, name.removesuffix(".service"))
        return self.units[name]

    async def _bus(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self.bus_back_at:
            await asyncio.sleep(self.bus_back_at - loop.time())

    def _set(self, unit: Unit, state: ActiveState) -> None:
        unit.set(state)
        self.world.changed = True
        if asyncio.get_running_loop().time() >= self.bus_back_at:  # a signal while the bus is down is lost
            for watch in list(self._watchers):
                watch(unit.name, state)

    async def start(self, name: str) -> None:
        await self._bus()
        unit, world = self.unit(name), self.world
        world.on_start(unit)
        await asyncio.sleep(self.JOB_S)
        if unit.running:  # started by hand meanwhile: systemd's job is done at once
            unit.by_hand = False
            return
        b, rng, now = world.load.behaviour[unit.model], world.rng, asyncio.get_running_loop().time()
        if rng.random() < b.fail_p:
            self._set(unit, ActiveState.FAILED)
            world.note("start job of %s failed", name)
            raise JobFailed(name, "start", "failed")
        unit.started += 1
        unit.ready_at = now + b.load_s * rng.uniform(0.5, 1.5)
        unit.dies_at = now + rng.uniform(0, unit.ready_at - now) if rng.random() < b.die_p else None
        if unit.dies_at is not None:
            asyncio.get_running_loop().call_at(unit.dies_at, self.tick, unit, unit.started)
        self._set(unit, ActiveState.ACTIVE)

    async def start_transient(self, unit: str, argv: tuple[str, ...], description: str) -> None:
        await self.start(unit)

    async def stop(self, name: str) -> None:
        await self._bus()
        unit = self.unit(name)
        self.world.on_stop(unit)
        if unit.running:
            self._set(unit, ActiveState.DEACTIVATING)
            await asyncio.sleep(self.JOB_S)
        self._set(unit, ActiveState.INACTIVE)
        unit.ready_at = unit.dies_at = None
        unit.by_hand = False

    def tick(self, unit: Unit, run: int) -> None:
        """A process that dies while loading does so at its time (if this run of it still runs)."""
        if unit.started == run and unit.dies_at is not None and unit.running:
            unit.dies_at = unit.ready_at = None
            self.world.note("%s died while loading", unit.name)
            self._set(unit, ActiveState.FAILED)

    def start_by_hand(self, name: str) -> None:
        """`systemctl --user start` outside the switch."""
        unit = self.unit(name)
        if not unit.running:
            unit.started += 1
            unit.by_hand, unit.dies_at = True, None
            unit.ready_at = asyncio.get_running_loop().time() + self.world.load.behaviour[unit.model].load_s
            self._set(unit, ActiveState.ACTIVE)

    def kill(self, name: str) -> None:
        unit = self.unit(name)
        if unit.running:
            unit.ready_at = unit.dies_at = None
            self.world.on_killed(unit)
            self._set(unit, ActiveState.FAILED)

    def drop_bus(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.bus_back_at = loop.time() + seconds
        loop.call_at(self.bus_back_at, lambda: [cb() for cb in list(self._reconnect)])

    async def active_states(self, units: list[str]) -> dict[str, ActiveState]:
        await self._bus()
        return {u: self.unit(u).state for u in units}

    async def memory(self, unit: str) -> tuple[int | None, int | None]:
        return self.world.load.config.models[self.unit(unit).model].memory, None

    async def failure(self, unit: str) -> str:
        return f"{self.unit(unit).state}, result 'exit-code'"

    def watch_units(self, callback: Callable[[str, ActiveState], None]) -> None:
        self._watchers.append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect.append(callback)


class FakeBackends:
    """The backends' /health (ports.Health): 503 while loading, 200 once ready, None when nothing
    listens. A probe while loading answers at once when the load ends (or after `timeout`): the
    virtual clock then needs few steps for a long load."""

    def __init__(self, units: FakeUnits) -> None:
        self._units = units

    def _serving(self, url: str) -> Unit | None:
        config = self._units.world.scheduler_config()
        for unit in self._units.units.values():
            model = config.models.get(unit.model)
            if unit.running and model is not None and model.url == url:
                return unit
        return None

    async def health(self, url: str, timeout: float) -> int | None:
        loop = asyncio.get_running_loop()
        unit = self._serving(url)
        if unit is None or unit.ready_at is None:
            await asyncio.sleep(0.001)
            return None
        if loop.time() < unit.ready_at:  # answers when the load is done, the unit exits, or at timeout
            probe = loop.create_future()
            unit.probes.append(probe)
            timer = loop.call_at(min(unit.ready_at, loop.time() + timeout), probe.set_result, None)
            try:
                await probe
            finally:
                timer.cancel()
        if not unit.running or unit.ready_at is None:
            return None
        return 200 if loop.time() >= unit.ready_at else 503

    async def model_ids(self, url: str, timeout: float = 5.0) -> set[str] | None:
        unit = self._serving(url)
        return {unit.model} if unit is not None else None

    def use_keys(self, keys: dict[str, str]) -> None:
        pass


async def _no_journal(unit: str) -> list[str]:
    return []


def breakdown(size: int) -> list[str]:
    """What llama-server at log verbosity 4 logs of a model taking `size` bytes on Host."""
    mib = size >> 20
    return ["common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   "
            "compute    unaccounted |",
            f"common_memory_breakdown_print: |   - Host               |  {mib} = {mib} + 0 + 0                |",
            "main: server is listening on http://127.0.0.1:3004"]


# -- the world -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    request: Request
    admitted_at: float | None = None
    result: str = "pending"   # answered, refused (with the error), left


@dataclass
class World:
    """Runs one seed (or a workload written by hand): the scheduler, the fakes, the clients and
    the faults; checks after every step."""

    seed: int
    decide: Callable[..., policy.Plan] = policy.decide
    load: Workload | None = None  # None: drawn from the seed
    trace: list[tuple[float, str, tuple]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.load = self.load or workload(self.seed)
        self.rng = random.Random(self.seed * 7919 + 1)
        self.units = FakeUnits(self)
        self.serving: dict[tuple[str, int], int] = {}  # (unit, which run of it) → requests it serves
        self.last_ready: dict[str, float] = {}  # model → when its backend last became ready
        self.again: dict[str, bool] = {}        # model → a start of it is warranted again
        self.outcomes: list[Outcome] = []
        self.scheduler: Scheduler | None = None
        self.changed = False  # a unit changed state since the last check
        self.explicit = 0  # unloads and reloads under way: they may stop a pinned model
        self.loop = VirtualLoop()

    # -- the record -----------------------------------------------------------------------------

    def now(self) -> float:
        return self.loop.now

    def note(self, text: str, *args) -> None:
        self.trace.append((self.now(), text, args))

    def fail(self, text: str, *args) -> None:
        self.note("VIOLATION: " + text, *args)
        self.violations.append(text % args)

    def text(self) -> str:
        c = self.load.config
        lines = [f"seed {self.seed}: memory_budget {c.memory_budget}, max_wait {c.max_wait:.1f}, "
                 f"max_queue {c.max_queue}"]
        lines += [f"  {m.name}: {m.url} memory {m.memory or f'auto ({self.load.learned.get(m.name)})'} "
                  f"min_loaded {m.min_loaded} idle_unload {m.idle_unload} pin {m.pin} priority {m.priority}; "
                  f"{self.load.behaviour[m.name]}" for m in c.models.values()]
        lines += [f"  {g.name}: any_of {list(g.members)}" for g in c.any_of.values()]
        lines += [f"{t:10.3f}  {text % args}" for t, text, args in self.trace]
        return "\n".join(lines)

    async def start_log(self, unit: str, since: float) -> list[str]:
        size = self.load.learned.get(self.units.unit(unit).model)
        return breakdown(size) if size is not None else []

    def size(self, model: Model) -> int | None:
        """What the budget may count: the declared size, or the breakdown's once it was printed."""
        if model.memory is not None or model.name not in self.last_ready:
            return model.memory
        return self.load.learned.get(model.name)

    def scheduler_config(self) -> Config:
        return self.scheduler.config if self.scheduler is not None else self.load.config

    # -- invariants -----------------------------------------------------------------------------

    def check(self) -> None:
        """After every step (that changed a unit): never over budget, never two models on one URL."""
        if not self.changed:
            return
        self.changed = False
        self._may_run_together([u for u in self.units.units.values() if u.running and not u.by_hand])

    def _may_run_together(self, running: list[Unit]) -> None:
        """docs/design.md, "Who may run together"."""
        if len(running) < 2:
            return
        config, names = self.load.config, ", ".join(u.name for u in running)
        models = [config.models[u.model] for u in running]
        urls = [m.url for m in models]
        if len(set(urls)) < len(urls):
            self.fail("two models on one URL: %s", names)
        elif config.memory_budget is None or any(self.size(m) is None for m in models):
            self.fail("a model that runs alone runs beside others: %s", names)
        elif (used := sum(self.size(m) for m in models)) > config.memory_budget:
            self.fail("over budget: %s use %d of %d", names, used, config.memory_budget)

    def _may_start_beside(self, unit: Unit, others: list[Unit]) -> None:
        """The same rule for a start, with the units started by hand counted: the target must fit
        beside every unit that runs (two strays in each other's way are the hand's doing)."""
        if not others:
            return
        config, names = self.load.config, ", ".join(u.name for u in others)
        target, running = config.models[unit.model], [config.models[u.model] for u in others]
        if any(m.url == target.url for m in running):
            self.fail("two models on one URL: %s started beside %s", unit.name, names)
        elif config.memory_budget is None or any(self.size(m) is None for m in [target, *running]):
            self.fail("a model that runs alone runs beside others: %s started beside %s", unit.name, names)
        elif (used := sum(self.size(m) for m in [target, *running])) > config.memory_budget:
            self.fail("over budget: %s started beside %s, %d of %d", unit.name, names, used, config.memory_budget)

    def on_start(self, unit: Unit) -> None:
        """Collation: a model is loaded again only for a request the last load could not serve."""
        self.note("start %s", unit.name)
        configured = self.scheduler_config().models  # a unit of a model not configured is not the switch's
        others = [u for u in self.units.units.values()
                  if u.running and u is not unit and (not u.by_hand or u.model in configured)]
        self._may_start_beside(unit, others)
        if unit.model in self.last_ready and not self.again.get(unit.model, True):
            self.fail("collation: %s loaded again with no request since it was last ready at %.3f", unit.model,
                      self.last_ready[unit.model])
        self.again[unit.model] = False

    def on_stop(self, unit: Unit) -> None:
        self.note("stop %s", unit.name)
        if unit.running and (n := self.serving.get((unit.name, unit.started))):
            self.fail("stop of %s with %d request(s) in flight", unit.name, n)

    def on_killed(self, unit: Unit) -> None:
        self.note("killed %s behind the switch's back", unit.name)
        self.again[unit.model] = True

    def on_state(self, event: StateChanged) -> None:
        self.note("%s: %s → %s", event.model, event.old, event.new)
        model = self.scheduler_config().models.get(event.model)
        if model is not None and model.pin and (event.old, event.new) == ("ready", "stopping") and not self.explicit:
            self.fail("pinned %s stopped, though no unload or reload asked for it", event.model)
        if event.new == "ready":
            self.last_ready[event.model] = self.now()
        elif event.new == "failed":
            self.again[event.model] = True

    # -- the clients and the faults ------------------------------------------------------------

    async def client(self, request: Request) -> None:
        await asyncio.sleep(request.at - self.now())
        outcome = Outcome(request)
        self.outcomes.append(outcome)
        task = asyncio.current_task()
        if request.leave_at is not None:
            asyncio.get_running_loop().call_at(request.leave_at, task.cancel)
        try:
            await self._ask(request, outcome)
            outcome.result = "answered"
        except SwitchError as e:
            outcome.result = f"refused: {type(e).__name__} {e.status}: {e.message}"
            if not e.message or e.status < 400:
                self.fail("a refusal without a reason: %r", e)
            if type(e).__name__ == "QueueTimeout" and self.load.patient:
                self.fail("starvation: %s waited %.1f s (max_wait) for its turn", request.model,
                          self.load.config.max_wait)
        except asyncio.CancelledError:
            outcome.result = "left"
        self.note("request for %s (at %.3f): %s", request.model, request.at, outcome.result)

    async def _ask(self, request: Request, outcome: Outcome) -> None:
        """What http/pipeline.py does: use the model; a backend found gone is forgotten and used again."""
        scheduler = self.scheduler
        model = scheduler.config.models.get(scheduler.chosen(request.model))
        if model is None:
            raise UnknownModelHere(f"{request.model} is not configured now")
        runtime = scheduler.models.get(model.name)
        if runtime is not None and str(runtime.state) != "starting":
            self.again[model.name] = True
        for attempt in (1, 2):
            async with scheduler.use(model) as runtime:
                self._admitted(request, outcome)
                unit = self.units.unit(model.unit)
                if unit.running and unit.ready_at is not None and self.now() >= unit.ready_at:
                    return await self._serve(request, unit)
            if attempt == 1 and await scheduler.forget_if_stopped(runtime):
                continue
            raise BackendGoneHere(f"{model.unit} does not serve")

    def _admitted(self, request: Request, outcome: Outcome) -> None:
        waited = self.now() - request.at
        outcome.admitted_at = self.now()
        if waited > self.load.config.max_wait + EPSILON:
            self.fail("%s waited %.3f s, past max_wait %.3f", request.model, waited, self.load.config.max_wait)

    async def _serve(self, request: Request, unit: Unit) -> None:
        """Served by this run of the unit; one killed meanwhile breaks the answer off."""
        key = (unit.name, unit.started)
        self.serving[key] = self.serving.get(key, 0) + 1
        try:
            await asyncio.sleep(request.serve_s)
        finally:
            self.serving[key] -= 1
        if (unit.name, unit.started) != key or not unit.running:
            raise BackendGoneHere(f"{unit.name} was killed while it answered")

    async def fault(self, fault: Fault) -> None:
        await asyncio.sleep(fault.at - self.now())
        self.note("fault: %s %s %.3f", fault.kind, fault.model, fault.seconds)
        if fault.kind == "kill":
            self.units.kill(f"{fault.model}.service")
        elif fault.kind == "stray":
            self.units.start_by_hand(f"{fault.model}.service")
        elif fault.kind == "bus":
            self.units.drop_bus(fault.seconds)
        elif fault.kind == "unload":
            self.again[fault.model] = True
            if fault.model in self.scheduler.models:
                self.explicit += 1
                try:
                    await self.scheduler.unload([fault.model])
                finally:
                    self.explicit -= 1
        elif fault.kind == "load":
            self.again[fault.model] = True
            if fault.model in self.scheduler.models:
                with contextlib.suppress(SwitchError):  # refused like a request: the reason was checked there
                    await self.scheduler.load(fault.model)
        else:
            self.explicit += 1
            try:
                await self.reload(fault.model)
            finally:
                self.explicit -= 1

    async def reload(self, name: str) -> None:
        """A reload that drops `name` (or adds it back) and draws its windows anew."""
        config = self.scheduler.config
        models = dict(config.models)
        if name in models and len(models) > 1:
            del models[name]
        else:
            original = self.load.config.models[name]
            models[name] = replace(original, min_loaded=self.rng.choice((None, self.rng.uniform(0, 5))))
        for m in models:
            self.again[m] = True
        await self.scheduler.reload(replace(config, models=models, names={m: m for m in models}))

    # -- a run ----------------------------------------------------------------------------------

    async def main(self) -> None:
        events = EventBus()
        events.subscribe(StateChanged, self.on_state)
        parts = Parts(self.units, FakeBackends(self.units), events, clock=asyncio.get_running_loop().time,
                      journal=_no_journal, start_log=self.start_log)
        self.scheduler = Scheduler(self.load.config, parts, decide=self.decide)
        try:
            await asyncio.gather(*(self.client(r) for r in self.load.requests),
                                 *(self.fault(f) for f in self.load.faults))
            self._finished()
        finally:
            await self.scheduler.close()

    def _finished(self) -> None:
        """Every request answered or refused with a reason; nothing left waiting or in flight."""
        for outcome in self.outcomes:
            if outcome.result == "pending":
                self.fail("a request for %s got no answer", outcome.request.model)
        if len(self.outcomes) != len(self.load.requests):
            self.fail("%d of %d requests ran", len(self.outcomes), len(self.load.requests))
        for name, r in self.scheduler.models.items():
            if r.in_flight or r.waiting:
                self.fail("%s: %d in flight and %d waiting after every request ended", name, r.in_flight, r.waiting)

    def run(self) -> World:
        loop = self.loop
        loop.set_exception_handler(lambda _, context: self.fail("unhandled: %s", context.get("exception")
                                                                  or context.get("message")))

        loop.after_step = self.check
        try:
            loop.run_until_complete(asyncio.wait_for(self.main(), 100_000))
        except Exception as e:  # a bug in the switch surfaces here (IllegalTransition, Stuck, ...)
            self.fail("%s: %s", type(e).__name__, e)
        finally:
            loop.close()
        return self


class UnknownModelHere(SwitchError):
    """The model is not configured (a reload dropped it): what the http layer answers with a 404."""
    status = 404


class BackendGoneHere(SwitchError):
    """Admitted, but the backend did not serve (killed behind the switch's back): a 502."""
    status = 502


def run_seed(seed: int, decide: Callable[..., policy.Plan] = policy.decide, load: Workload | None = None) -> World:
    logging.getLogger("llm_switch").setLevel(logging.CRITICAL + 1)  # thousands of runs: log lines cost time
    return World(seed, decide, load).run()
