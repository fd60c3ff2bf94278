"""The queue of requests waiting for their model: tickets in arrival order. The rules of who goes
next are in policy.py (docs/design.md, "Who goes next"); this only keeps the tickets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from .policy import Waiter


@dataclass(eq=False)
class Ticket:
    """A request waiting for its model; `admitted` is resolved once it may go."""

    model: str
    since: float  # the scheduler's clock
    priority: int = 0  # its model's
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WaitQueue:
    def __init__(self) -> None:
        self._tickets: list[Ticket] = []

    def __len__(self) -> int:
        return len(self._tickets)

    def __iter__(self) -> Iterator[Ticket]:
        return iter(list(self._tickets))

    def add(self, ticket: Ticket) -> None:
        self._tickets.append(ticket)

    def remove(self, ticket: Ticket) -> bool:
        """Take `ticket` out; False when it was no longer there."""
        if ticket not in self._tickets:
            return False
        self._tickets.remove(ticket)
        return True

    def take(self, model: str) -> list[Ticket]:
        """Take out every ticket of `model`, oldest first."""
        taken = [t for t in self._tickets if t.model == model]
        self._tickets = [t for t in self._tickets if t.model != model]
        return taken

    def heads(self) -> list[Waiter]:
        """The oldest ticket of each model, oldest first: what policy.decide() looks at."""
        heads: dict[str, Waiter] = {}
        for t in self._tickets:
            heads.setdefault(t.model, Waiter(t.model, t.since, t.priority))
        return list(heads.values())

    def positions(self) -> dict[str, int]:
        """1 for the model whose requests are served next, 2 after one other model's, …: the higher
        priority first, then the oldest."""
        heads = sorted(self.heads(), key=lambda w: (-w.priority, w.since))
        return {w.model: i for i, w in enumerate(heads, 1)}
