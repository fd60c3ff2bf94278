"""Which model runs next: pure decisions, no I/O, no logging, no clock of its own.

The scheduler hands `decide()` a snapshot of every model and the queue of waiting requests and
carries out the `Plan` it gets back. The rules, with worked examples, are in docs/design.md:

- A model runs beside others when the declared memory of all running models fits the budget and
  their URLs differ. A model without `memory`, or any model when there is no budget, runs alone.
- Starting a model that does not fit stops running models, least recently used first (one
  serving requests counts as used now); one stopped on the way that would still fit stays.
- Waiting requests are served by model, oldest first: A B A B waiting becomes A A B B.
- For `min_loaded` after it became ready, a model keeps taking new requests even while another
  model's requests wait. After that, a waiting switch makes its new requests queue behind it.
- An idle model (nothing in flight, nothing waiting) is swapped out at once for a request that
  arrived while it was idle. One that just finished a request which a waiting switch sat behind
  is held for `TURNAROUND`, so the client that keeps it busy can send its next request.
- A pinned model is never stopped to make room, nor unloaded for idleness.
- Waiting models of higher `priority` go first; a waiting request of higher priority ends a
  lower-priority model's min_loaded window at once.
- A start that no request waits for any more gives way to a waiting request that needs its memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

TURNAROUND = 0.5        # s: how long a busy client has to send its next request (see above)
MIN_LOADED_FLOOR = 5.0  # s: the least default min_loaded
MIN_LOADED_FACTOR = 3   # default min_loaded: this many times the model's last load time


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"

    @property
    def up(self) -> bool:
        """The model's unit runs (or is about to): it holds memory."""
        return self in (State.STARTING, State.READY, State.STOPPING)


@dataclass(frozen=True)
class ModelView:
    """What the policy knows of one model. Times are monotonic seconds."""

    name: str
    url: str
    memory: int | None          # bytes the budget counts: declared, else learned (learning.py); None runs alone
    state: State
    in_flight: int = 0
    waiting: int = 0            # requests queued for it
    draining: bool = False      # chosen to stop: takes no new requests
    last_used: float = 0.0      # the least recently used is stopped first
    ready_at: float = 0.0
    idle_since: float | None = None  # None while requests are in flight
    min_loaded: float = MIN_LOADED_FLOOR
    idle_unload: float | None = None
    pin: bool = False           # never evicted, never unloaded for idleness
    priority: int = 0           # higher goes first


@dataclass(frozen=True)
class Waiter:
    """The oldest waiting request of one model."""

    model: str
    since: float
    priority: int = 0


@dataclass(frozen=True)
class Plan:
    admit: frozenset[str] = frozenset()  # models whose waiting requests go in now
    hold: frozenset[str] = frozenset()   # ready models whose new requests must queue: a switch needs them gone
    start: str | None = None             # the next model to start ...
    stop: tuple[str, ...] = ()           # ... once these have drained and stopped
    unload: tuple[str, ...] = ()         # idle past their idle_unload: stop them
    abandon: tuple[str, ...] = ()        # starts no request waits for, in the way of a waiting one
    give_way_to: str | None = None       # ... the model whose request waits for their memory
    upcoming: str | None = None          # the model whose switch waits for a drain or a min_loaded window
    wake_at: float | None = None         # decide again then, if nothing happens before


def default_min_loaded(last_load_s: float | None) -> float:
    return max(MIN_LOADED_FLOOR, MIN_LOADED_FACTOR * (last_load_s or 0.0))


def fits(target: ModelView, running: Iterable[ModelView], budget: int | None) -> bool:
    """Whether `target` may run beside all of `running`."""
    running = list(running)
    if not running:
        return True
    if budget is None or target.memory is None:
        return False
    if any(m.memory is None or m.url == target.url for m in running):
        return False
    return sum(m.memory for m in running) + target.memory <= budget  # type: ignore[misc]


def _recency(m: ModelView) -> tuple[bool, float]:
    """Sort key, least recently used first; a model serving requests now counts as used now."""
    return m.in_flight > 0, m.last_used


def evict_for(target: ModelView, running: Sequence[ModelView], budget: int | None) -> list[ModelView]:
    """The running models that must stop before `target` can start, least recently used first.
    Pinned models stay: the config allows no model that could not fit beside them."""
    others = sorted((m for m in running if m.name != target.name and not m.pin), key=_recency)
    if budget is None or target.memory is None:
        return others
    evict = [m for m in others if m.memory is None or m.url == target.url]
    kept = [m for m in others if m not in evict]
    pinned = sum(m.memory or 0 for m in running if m.pin and m.name != target.name)
    used = pinned + sum(m.memory for m in kept)  # type: ignore[misc]
    dropped: list[ModelView] = []
    for m in kept:  # least recently used first, until it fits
        if used + target.memory <= budget:
            break
        dropped.append(m)
        used -= m.memory  # type: ignore[operator]
    for m in reversed(dropped):  # one dropped on the way that still fits beside the target stays
        if used + m.memory + target.memory <= budget:  # type: ignore[operator]
            dropped.remove(m)
            used += m.memory  # type: ignore[operator]
    return sorted(evict + dropped, key=_recency)


def _window_over(m: ModelView, w: Waiter, now: float) -> bool:
    """Whether `m`'s min_loaded window no longer protects it from `w`: it ran out, or `w` has the
    higher priority."""
    return now - m.ready_at >= m.min_loaded or w.priority > m.priority


def _releasable(m: ModelView, w: Waiter, now: float) -> bool:
    """Whether `m` may be stopped now for the request `w`."""
    if m.state is not State.READY or m.draining:
        return m.state is not State.STARTING  # stopping already; a starting model is loading for its waiters
    if _window_over(m, w, now):
        return True  # drain it and go
    if m.in_flight or m.waiting or m.idle_since is None:
        return False
    return m.idle_since <= w.since or now - m.idle_since >= TURNAROUND


def _abandonable(m: ModelView) -> bool:
    """A start nobody waits for any more (the clients left), asked for by no pin, preload or /load."""
    return m.state is State.STARTING and not m.waiting and not m.pin


def _release_at(m: ModelView) -> float | None:
    """When `m`, not releasable now, may become so by time alone."""
    if m.state is not State.READY:
        return None
    times = [m.ready_at + m.min_loaded]
    if m.idle_since is not None and not m.in_flight and not m.waiting:
        times.append(m.idle_since + TURNAROUND)
    return min(times)


def _order(w: Waiter) -> tuple[int, float]:
    """Who goes first: the higher priority, then the oldest request."""
    return -w.priority, w.since


def decide(models: Mapping[str, ModelView], queue: Sequence[Waiter], budget: int | None, now: float) -> Plan:
    """What to do now. `queue` holds each waiting model's oldest request."""
    up = [m for m in models.values() if m.state.up]
    hold: set[str] = set()
    wake: list[float] = []
    start: str | None = None
    stop: tuple[str, ...] = ()
    abandon: tuple[str, ...] = ()
    give_way_to: str | None = None
    blocked = False  # a switch waits for a model's min_loaded window: later ones keep their place
    upcoming: str | None = None
    for w in sorted(queue, key=_order):
        target = models[w.model]
        if target.state.up and not target.draining and target.state is not State.STOPPING:
            continue  # ready (admitted below unless held) or starting (joins that start)
        evict = evict_for(target, [m for m in up if m.name != target.name], budget)
        if blocked and evict:
            continue  # only a model that fits beside the running ones may go ahead of a waiting switch
        if gone := tuple(m.name for m in evict if _abandonable(m)):
            abandon, give_way_to = gone, target.name
            break
        waiting_on = [m for m in evict if not _releasable(m, w, now)]
        hold.update(m.name for m in evict if m.state is State.READY and _window_over(m, w, now))
        if waiting_on:
            blocked = True
            upcoming = upcoming or target.name
            wake.extend(t for m in waiting_on if (t := _release_at(m)) is not None)
            continue
        start, stop = target.name, tuple(m.name for m in evict)
        hold.update(stop)
        break

    admit = frozenset(n for n, m in models.items()
                      if m.waiting and m.state is State.READY and not m.draining and n not in hold)
    unload = _idle_unload(up, stop, now, wake)
    return Plan(admit=admit, hold=frozenset(hold), start=start, stop=stop, unload=unload, abandon=abandon,
                give_way_to=give_way_to, upcoming=upcoming, wake_at=min(wake) if wake else None)


def _idle_unload(up: list[ModelView], stop: tuple[str, ...], now: float, wake: list[float]) -> tuple[str, ...]:
    """The models idle past their idle_unload (pinned ones never); when the next one is due goes to `wake`."""
    unload: list[str] = []
    for m in up:
        if m.idle_unload is None or m.pin or m.state is not State.READY or m.draining or m.name in stop:
            continue
        if m.in_flight or m.waiting:
            continue
        due = max(m.last_used, m.ready_at) + m.idle_unload
        if now >= due:
            unload.append(m.name)
        else:
            wake.append(due)
    return tuple(unload)
