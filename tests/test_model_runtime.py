"""ModelRuntime keeps its own books: every change of its state, its waiting and in-flight counts
and its draining flag is checked against the lifecycle of docs/design.md ("States of a model");
any other change is a bug, and it raises. Pure: nothing here starts or awaits anything."""

from __future__ import annotations

import itertools

import pytest

from llm_switch.config import Model
from llm_switch.events import EventBus, StateChanged
from llm_switch.scheduling.model import IllegalTransition, ModelRuntime, check_transition
from llm_switch.scheduling.policy import State
from llm_switch.scheduling.ports import Parts

pytestmark = pytest.mark.unit  # in-process: no systemd, no llama-server, no daemon

S = State
# the lifecycle, written out once more by hand: stopped → starting → ready → stopping → stopped,
# failed after a failed start or stop, adoption of a running unit, a stray unit stopped, a start
# cancelled, a unit stopped behind the switch's back
ALLOWED = {
    (S.STOPPED, S.STARTING), (S.STOPPED, S.READY), (S.STOPPED, S.STOPPING),
    (S.FAILED, S.STARTING), (S.FAILED, S.READY), (S.FAILED, S.STOPPING),
    (S.STARTING, S.READY), (S.STARTING, S.FAILED), (S.STARTING, S.STOPPED),
    (S.READY, S.STOPPING), (S.READY, S.STOPPED),
    (S.STOPPING, S.STOPPED), (S.STOPPING, S.FAILED),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(State, State)))
def test_transition_table(old, new):
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def _runtime(state: State, events: EventBus | None = None) -> ModelRuntime:
    r = ModelRuntime(Model("a", "a.service", "http://127.0.0.1:3004"), Parts(None, None, events or EventBus()),
                     lambda _: [])
    r._state = state  # set up the case: the books' own door is what is tested
    return r


@pytest.mark.parametrize(("state", "draining", "admitted"), [
    (S.READY, False, True),
    (S.READY, True, False),
    (S.STARTING, False, False),
    (S.STOPPING, False, False),
    (S.STOPPED, False, False),
    (S.FAILED, False, False),
])
def test_a_request_is_admitted_only_by_a_ready_model_that_does_not_drain(state, draining, admitted):
    r = _runtime(state)
    r._draining = draining
    if admitted:
        r.admit()
        assert (r.in_flight, r.idle_since) == (1, None)
    else:
        with pytest.raises(IllegalTransition):
            r.admit()
        assert r.in_flight == 0


@pytest.mark.parametrize(("state", "drains"), [
    (S.READY, True), (S.STOPPED, True), (S.FAILED, True), (S.STARTING, False), (S.STOPPING, False),
])
def test_drain_only_what_may_be_stopped(state, drains):
    r = _runtime(state)
    if drains:
        r.drain()
        assert r.draining
    else:
        with pytest.raises(IllegalTransition):
            r.drain()


def test_counts_never_go_below_zero():
    r = _runtime(S.READY)
    with pytest.raises(IllegalTransition):
        r.release()
    with pytest.raises(IllegalTransition):
        r.dequeue()
    r.enqueue()
    r.dequeue()
    r.admit()
    r.release()
    assert (r.in_flight, r.waiting) == (0, 0) and r.idle_since is not None


def test_the_books_are_read_only_outside():
    r = _runtime(S.READY)
    for field in ("state", "in_flight", "waiting", "draining"):
        with pytest.raises(AttributeError):
            setattr(r, field, getattr(r, field))


def test_a_state_change_leaves_draining_and_is_published():
    events, seen = EventBus(), []
    events.subscribe(StateChanged, seen.append)
    r = _runtime(S.READY, events)
    r.drain()
    r._set(S.STOPPING)
    assert (r.state, r.draining) == (S.STOPPING, False)
    with pytest.raises(IllegalTransition):
        r._set(S.READY)
    assert seen == [StateChanged("a", "ready", "stopping", None)]
