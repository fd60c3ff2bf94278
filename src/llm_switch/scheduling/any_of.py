"""Which member serves a request for an `any_of` virtual model: pure, over the policy's views
(docs/design.md, "Who goes next")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .policy import ModelView, State, fits


def choose(members: Sequence[str], models: Mapping[str, ModelView], budget: int | None) -> str:
    """The first member that is ready, else the first starting, else the first that fits beside
    the running models without stopping any, else the first listed."""
    views = [models[n] for n in members if n in models]
    for wanted in (State.READY, State.STARTING):
        if found := next((m for m in views if m.state is wanted and not m.draining), None):
            return found.name
    up = [m for m in models.values() if m.state.up]
    if found := next((m for m in views if fits(m, up, budget)), None):
        return found.name
    return members[0]
