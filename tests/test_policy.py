"""The scheduling policy as tables: pure decisions, no systemd, no clock (times are given)."""

from __future__ import annotations

import pytest

from llm_switch.scheduling.any_of import choose
from llm_switch.scheduling.policy import (MIN_LOADED_FLOOR, TURNAROUND, ModelView, Plan, State, Waiter, decide,
                                          default_min_loaded, evict_for, fits)

pytestmark = pytest.mark.unit

G = 1 << 30
URL = "http://127.0.0.1:3004"


def m(name: str, state: State = State.STOPPED, memory: float | None = None, url: str | None = None,
      **kw) -> ModelView:
    return ModelView(name=name, url=url or f"http://127.0.0.1:{4000 + ord(name[0])}",
                     memory=int(memory * G) if memory is not None else None, state=state, **kw)


def names(views: list[ModelView]) -> list[str]:
    return [v.name for v in views]


@pytest.mark.parametrize("target, running, budget, expected", [
    # no budget: every model runs alone
    (m("a", memory=1), [m("b", State.READY, memory=1)], None, False),
    # a model without memory runs alone, and nothing runs beside it
    (m("a"), [m("b", State.READY, memory=1)], 8 * G, False),
    (m("a", memory=1), [m("b", State.READY)], 8 * G, False),
    # both declared and within the budget
    (m("a", memory=1), [m("b", State.READY, memory=6.8)], int(7.9 * G), True),
    # over the budget
    (m("a", memory=1.2), [m("b", State.READY, memory=6.8)], int(7.5 * G), False),
    # one URL: never together, whatever the budget
    (m("a", memory=1, url=URL), [m("b", State.READY, memory=1, url=URL)], 8 * G, False),
    # nothing runs
    (m("a"), [], None, True),
], ids=["no-budget", "target-exclusive", "running-exclusive", "fits", "over-budget", "same-url", "alone"])
def test_fits(target, running, budget, expected):
    assert fits(target, running, budget) is expected


@pytest.mark.parametrize("target, running, budget, expected", [
    # exclusive: everything else goes, least recently used first
    (m("a"), [m("b", State.READY, last_used=5), m("c", State.READY, last_used=1)], None, ["c", "b"]),
    # the embedding model stays while the chat models swap
    (m("coder", memory=6.8), [m("embed", State.READY, memory=1.2, last_used=9),
                              m("thinker", State.READY, memory=6.5, last_used=5)], int(8.2 * G), ["thinker"]),
    # least recently used first, until it fits
    (m("x", memory=3), [m("p", State.READY, memory=3, last_used=3), m("q", State.READY, memory=3, last_used=1),
                        m("r", State.READY, memory=3, last_used=2)], 9 * G, ["q"]),
    (m("x", memory=5), [m("p", State.READY, memory=3, last_used=3), m("q", State.READY, memory=3, last_used=1),
                        m("r", State.READY, memory=3, last_used=2)], 9 * G, ["q", "r"]),
    # a shared URL is evicted even when memory would fit
    (m("x", memory=1, url=URL), [m("y", State.READY, memory=1, url=URL, last_used=9),
                                 m("z", State.READY, memory=1, last_used=1)], 8 * G, ["y"]),
    # a running model without memory goes, whatever the budget
    (m("x", memory=1), [m("y", State.READY, last_used=9), m("z", State.READY, memory=1, last_used=1)], 8 * G, ["y"]),
    # the small model, least recently used, is passed over when stopping the big one is enough
    (m("thinker", memory=6.5), [m("embed", State.READY, memory=1.2, last_used=1),
                                m("coder", State.READY, memory=6.8, last_used=5)], int(8.2 * G), ["coder"]),
    # a model serving requests counts as used now
    (m("x", memory=3), [m("p", State.READY, memory=3, last_used=1, in_flight=1),
                        m("q", State.READY, memory=3, last_used=5)], 7 * G, ["q"]),
], ids=["exclusive-lru", "embed-stays", "lru-one", "lru-two", "same-url", "running-exclusive", "small-stays",
        "busy-is-recent"])
def test_evict_for(target, running, budget, expected):
    assert names(evict_for(target, running, budget)) == expected


def plan(models: list[ModelView], queue: list[tuple[str, float]], now: float, budget: int | None = None) -> Plan:
    return decide({v.name: v for v in models}, [Waiter(n, t) for n, t in queue], budget, now)


# A: a ready model that became ready at t=0 with min_loaded 10 s
def ready(name: str, **kw) -> ModelView:
    kw.setdefault("min_loaded", 10.0)
    kw.setdefault("ready_at", 0.0)
    return m(name, State.READY, **kw)


@pytest.mark.parametrize("models, queue, now, budget, start, stop, hold, admit", [
    # nothing runs: start the oldest waiting model
    ([m("a"), m("b")], [("b", 1.0), ("a", 2.0)], 3.0, None, "b", (), set(), set()),
    # a single user who alternates: a was idle when the request for b came, so a goes at once
    ([ready("a", idle_since=1.0), m("b")], [("b", 2.0)], 2.0, None, "b", ("a",), {"a"}, set()),
    # b came while a was busy: within a's min_loaded, b waits
    ([ready("a", in_flight=1), m("b")], [("b", 2.0)], 3.0, None, None, (), set(), set()),
    # a finished after b came: held for TURNAROUND so a's client can send its next request ...
    ([ready("a", idle_since=3.0), m("b")], [("b", 2.0)], 3.0 + TURNAROUND / 2, None, None, (), set(), set()),
    # ... and let go after it
    ([ready("a", idle_since=3.0), m("b")], [("b", 2.0)], 3.0 + TURNAROUND, None, "b", ("a",), {"a"}, set()),
    # past min_loaded: a drains and goes; new requests for a queue behind b
    ([ready("a", in_flight=2), m("b")], [("b", 2.0)], 10.0, None, "b", ("a",), {"a"}, set()),
    # requests for a that wait behind the switch are not admitted
    ([ready("a", in_flight=1, waiting=1), m("b")], [("b", 2.0), ("a", 11.0)], 11.0, None, "b", ("a",), {"a"}, set()),
    # collation: waiting a b a b is served a first (all of a's), then b
    ([m("a"), m("b")], [("a", 1.0), ("b", 1.5)], 2.0, None, "a", (), set(), set()),
    # a starting model's waiters join it; nothing else is decided over it
    ([m("a", State.STARTING), m("b")], [("a", 1.0), ("b", 1.5)], 2.0, None, None, (), set(), set()),
    # ready, not held: its waiters go in
    ([ready("a", waiting=2, in_flight=1)], [("a", 1.0)], 2.0, None, None, (), set(), {"a"}),
    # with a budget: the embedding model starts beside the busy coder, at once
    ([ready("coder", memory=6.8, in_flight=1), m("embed", memory=1.2)], [("embed", 1.0)], 1.0, 8 * G,
     "embed", (), set(), set()),
    # a model that fits may go ahead of a switch that waits for min_loaded
    ([ready("coder", memory=6.8, in_flight=1, last_used=1), m("thinker", memory=6.5), m("embed", memory=1.0)],
     [("thinker", 1.0), ("embed", 2.0)], 2.0, 8 * G, "embed", (), set(), set()),
], ids=["cold", "alternating-user", "busy-within-window", "turnaround-held", "turnaround-over", "window-over",
        "held-waiters", "collate", "join-start", "admit", "fits-beside", "fits-goes-ahead"])
def test_decide(models, queue, now, budget, start, stop, hold, admit):
    p = plan(models, queue, now, budget)
    assert (p.start, p.stop, set(p.hold), set(p.admit)) == (start, stop, hold, admit)


def test_decide_wakes_when_the_window_or_turnaround_ends():
    assert plan([ready("a", in_flight=1), m("b")], [("b", 2.0)], 3.0).wake_at == 10.0
    assert plan([ready("a", idle_since=3.0), m("b")], [("b", 2.0)], 3.1).wake_at == 3.0 + TURNAROUND


@pytest.mark.parametrize("models, queue, now, upcoming", [
    # b waits for a's window or turnaround: b is what starts next, to be read ahead
    ([ready("a", in_flight=1), m("b")], [("b", 2.0)], 3.0, "b"),
    ([ready("a", idle_since=3.0), m("b")], [("b", 2.0)], 3.1, "b"),
    # the oldest blocked switch is named, not a later one
    ([ready("a", in_flight=1), m("b"), m("c")], [("c", 1.0), ("b", 2.0)], 3.0, "c"),
    # a switch that goes now names no upcoming one (its start is the plan's `start`)
    ([ready("a", idle_since=1.0), m("b")], [("b", 2.0)], 2.0, None),
    ([ready("a")], [], 3.0, None),
], ids=["window", "turnaround", "oldest", "goes-now", "nothing-waits"])
def test_decide_names_the_switch_that_waits(models, queue, now, upcoming):
    assert plan(models, queue, now).upcoming == upcoming


@pytest.mark.parametrize("model, now, unload, wake_at", [
    (ready("a", idle_unload=60.0, last_used=10.0), 69.0, (), 70.0),
    (ready("a", idle_unload=60.0, last_used=10.0), 70.0, ("a",), None),
    (ready("a", idle_unload=60.0, last_used=10.0, in_flight=1), 500.0, (), None),
    (ready("a", last_used=10.0), 500.0, (), None),  # idle_unload off
], ids=["not-yet", "due", "busy", "off"])
def test_idle_unload(model, now, unload, wake_at):
    p = plan([model], [], now)
    assert (p.unload, p.wake_at) == (unload, wake_at)


@pytest.mark.parametrize("load_s, expected", [(None, MIN_LOADED_FLOOR), (0.2, MIN_LOADED_FLOOR), (4.0, 12.0)])
def test_default_min_loaded(load_s, expected):
    assert default_min_loaded(load_s) == expected


# pin, priority and a start nobody waits for (issue 20)

def waiter(model: str, since: float, priority: int = 0) -> Waiter:
    return Waiter(model, since, priority)


@pytest.mark.parametrize("target, running, budget, expected", [
    # the pinned embedding model stays, though least recently used
    (m("thinker", memory=6.5), [m("embed", State.READY, memory=1.2, last_used=0, pin=True),
                                m("coder", State.READY, memory=6.5, last_used=5)], 8 * G, ["coder"]),
    # exclusive target: every other model goes, except the pinned one
    (m("x"), [m("embed", State.READY, memory=1.2, pin=True), m("y", State.READY, last_used=1)], None, ["y"]),
    # the pinned model's memory counts: the least recently used other goes too
    (m("x", memory=4), [m("pin", State.READY, memory=4, pin=True), m("y", State.READY, memory=3, last_used=1)],
     int(9.5 * G), ["y"]),
], ids=["pinned-stays", "pinned-stays-exclusive", "pinned-counts"])
def test_evict_for_keeps_pinned(target, running, budget, expected):
    assert names(evict_for(target, running, budget)) == expected


@pytest.mark.parametrize("models, queue, now, start, stop, hold, abandon", [
    # higher priority goes first, though it came later
    ([m("a"), m("b", priority=1)], [waiter("a", 1.0), waiter("b", 2.0, 1)], 3.0, "b", (), set(), ()),
    # same priority: the oldest first
    ([m("a", priority=1), m("b", priority=1)], [waiter("b", 1.0, 1), waiter("a", 2.0, 1)], 3.0, "b", (), set(), ()),
    # a high-priority request ends a busy low model's window at once: it drains and goes
    ([ready("low", in_flight=1), m("high", priority=1)], [waiter("high", 2.0, 1)], 3.0,
     "high", ("low",), {"low"}, ()),
    # an equal priority still waits for the window
    ([ready("low", in_flight=1, priority=1), m("high", priority=1)], [waiter("high", 2.0, 1)], 3.0,
     None, (), set(), ()),
    # a lower priority waits for the window of a higher model
    ([ready("high", in_flight=1, priority=2), m("low")], [waiter("low", 2.0)], 3.0, None, (), set(), ()),
    # a start nobody waits for gives way to a waiting request that needs its memory
    ([m("a", State.STARTING), m("b")], [waiter("b", 2.0)], 3.0, None, (), set(), ("a",)),
    # ... not while a request still waits for it
    ([m("a", State.STARTING, waiting=1), m("b")], [waiter("a", 1.0), waiter("b", 2.0)], 3.0, None, (), set(), ()),
    # ... not a pinned one: the waiting one starts beside it (the config makes sure it fits)
    ([m("a", State.STARTING, pin=True, memory=1), m("b", memory=6)], [waiter("b", 2.0)], 3.0, "b", (), set(), ()),
    # ... not when the waiting one fits beside it: that one just starts next
    ([m("a", State.STARTING, memory=1), m("b", memory=1)], [waiter("b", 2.0)], 3.0, "b", (), set(), ()),
], ids=["priority-first", "priority-tie-oldest", "priority-ends-window", "equal-priority-waits",
        "lower-priority-waits", "abandon", "still-waited-for", "pinned-not-abandoned", "fits-beside"])
def test_decide_priority_and_abandon(models, queue, now, start, stop, hold, abandon):
    p = decide({v.name: v for v in models}, queue, 8 * G if any(v.memory for v in models) else None, now)
    assert (p.start, p.stop, set(p.hold), p.abandon) == (start, stop, hold, abandon)
    assert p.give_way_to == (queue[-1].model if abandon else None)


def test_pinned_is_never_unloaded_for_idleness():
    assert plan([ready("a", idle_unload=60.0, last_used=10.0, pin=True)], [], 500.0).unload == ()


@pytest.mark.parametrize("members, models, budget, expected", [
    # the first ready member, wherever listed
    (["big", "coder"], [m("big"), ready("coder")], None, "coder"),
    (["big", "coder"], [ready("big"), ready("coder")], None, "big"),
    # else the one starting
    (["big", "coder"], [m("big"), m("coder", State.STARTING)], None, "coder"),
    # else the first that fits beside the running ones without stopping any
    (["big", "coder"], [m("big", memory=6), m("coder", memory=2), ready("assist", memory=5)], 8 * G, "coder"),
    # else the first listed
    (["big", "coder"], [m("big", memory=6), m("coder", memory=4), ready("assist", memory=5)], 8 * G, "big"),
    # a draining model is not chosen for being ready
    (["big", "coder"], [ready("big", draining=True), m("coder")], None, "big"),
], ids=["ready", "first-ready", "starting", "fits-beside", "first-listed", "draining"])
def test_any_of_choose(members, models, budget, expected):
    assert choose(members, {v.name: v for v in models}, budget) == expected
