"""What a waiting request is told it waits for (scheduling/waiting.py): a pure function of the
scheduler's snapshot, table-driven."""

from __future__ import annotations

import pytest

from llm_switch.scheduling.policy import State
from llm_switch.scheduling.snapshot import ModelSnapshot, Snapshot
from llm_switch.scheduling.waiting import what

pytestmark = pytest.mark.unit  # in-process: no systemd, no llama-server, no daemon


def _model(name: str, state: State, in_flight: int = 0, draining: bool = False,
           queue_position: int | None = None) -> ModelSnapshot:
    return ModelSnapshot(name=name, unit=f"{name}.service", url=f"http://127.0.0.1/{name}", aliases=(),
                         declared=None, state=state, since=0.0, reason=None, in_flight=in_flight, waiting=0,
                         draining=draining, queue_position=queue_position, load_s=None, failures=0,
                         retry_in_s=None, ready_at=0.0, idle_since=None, idle_unload=None)


def _snapshot(*models: ModelSnapshot) -> Snapshot:
    return Snapshot.of({m.name: m for m in models}, at=0.0, config_path=None, listen="127.0.0.1:3002",
                       memory_budget=None, vram_note=None, switches=(), queued=0)


@pytest.mark.parametrize(("models", "said"), [
    ((), "waiting for Coder"),
    ((_model("coder", State.STARTING),), None),  # loading: the caller adds the phase
    ((_model("coder", State.STOPPED), _model("other", State.READY, in_flight=2, draining=True)),
     "other finishes 2 request(s), then Coder loads"),
    ((_model("coder", State.STOPPED), _model("other", State.STOPPING)), "stopping other, then Coder loads"),
    ((_model("coder", State.STOPPED, queue_position=2), _model("other", State.READY)),
     "waiting in the queue: position 2"),
    ((_model("coder", State.READY, queue_position=1),), "Coder is loaded; waiting for its turn"),
    ((_model("coder", State.FAILED, queue_position=1),), "waiting to load Coder"),
])
def test_what_a_request_waits_for(models, said):
    got = what(_snapshot(*models), "coder", "Coder", 3.0)
    assert got == (None if said is None else (said, 3.0))
