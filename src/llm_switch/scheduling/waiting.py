"""What a waiting request waits for, in words, for the progress a stream shows while it waits
(http/progress.py). Read from the scheduler's snapshot, plus the loading unit's journal."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..units.journal import journal_tail, load_phase
from .policy import State
from .snapshot import Snapshot

JOURNAL_EVERY = 1.0  # s: a loading unit's journal is read at most this often (for all streams)

Phase = Callable[[str, float], Awaitable[str | None]]


def what(snap: Snapshot, name: str, label: str, waited: float) -> tuple[str, float] | None:
    """(what `name`'s request waits for, for how many seconds), or None while `name` loads (the
    caller adds the load's phase). `label` is the name the client used."""
    m = snap.models.get(name)
    if m is None:
        return f"waiting for {label}", waited
    if m.state is State.STARTING:
        return None
    others = [o for o in snap.models.values()
              if o.name != name and (o.state is State.STOPPING or (o.draining and o.state is State.READY))]
    if others:
        said = [f"{o.name} finishes {o.in_flight} request(s)" if o.state is State.READY and o.in_flight
                else f"stopping {o.name}" for o in others]
        return "; ".join(said) + f", then {label} loads", waited
    if m.queue_position is not None and m.queue_position > 1:
        return f"waiting in the queue: position {m.queue_position}", waited
    if m.state is State.READY:
        return f"{label} is loaded; waiting for its turn", waited
    return f"waiting to load {label}", waited


class LoadPhases:
    """A loading unit's phase from its journal lines since its start, read at most every
    JOURNAL_EVERY seconds for all the streams that wait for it."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, str | None]] = {}  # unit → (when read, the phase it showed)

    async def __call__(self, unit: str, since: float) -> str | None:
        now = time.monotonic()
        seen = self._seen.get(unit)
        if seen is not None and now - seen[0] < JOURNAL_EVERY:
            return seen[1]
        self._seen[unit] = (now, seen[1] if seen else None)  # one reader at a time
        phase = load_phase(await journal_tail(unit, 40, timeout=1.0, since=since - 0.5))
        self._seen[unit] = (time.monotonic(), phase)
        return phase


async def describe(snap: Snapshot, name: str, label: str, waited: float, phases: Phase) -> tuple[str, float]:
    """`what`, with the phase of a load (its journal) and the seconds since the load began."""
    said = what(snap, name, label, waited)
    if said is not None:
        return said
    m = snap.models[name]
    phase = await phases(m.unit, m.since)
    return f"loading {label}" + (f": {phase}" if phase else ""), max(0.0, time.time() - m.since)
