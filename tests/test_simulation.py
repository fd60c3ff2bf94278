"""The scheduler in a deterministic simulation (tests/simulation.py): thousands of seeded random
workloads against fake units and backends under a virtual clock, every invariant of
docs/design.md checked after every step.

A failing seed prints its trace; `SIMULATION_SEED=N` runs that seed alone (the same steps every
time), `SIMULATION_SEEDS=N` runs N seeds instead of SEEDS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from simulation import Behaviour, Fault, GiB, Request, VirtualLoop, Workload, World, run_seed

from llm_switch.config import Config, Model, PromptCacheSettings
from llm_switch.scheduling import policy

pytestmark = pytest.mark.unit  # in-process: no systemd, no llama-server, no daemon

SEEDS = 10_000  # under 60 s on two slow cores


def _seeds() -> range:
    if (one := os.environ.get("SIMULATION_SEED")) is not None:
        return range(int(one), int(one) + 1)
    return range(int(os.environ.get("SIMULATION_SEEDS", SEEDS)))


def _first_failure(seeds: range, decide=policy.decide) -> World | None:
    for seed in seeds:
        world = run_seed(seed, decide)
        if world.violations:
            return world
    return None


def _report(world: World) -> str:
    return (f"seed {world.seed} broke an invariant: {world.violations[0]}\n"
            f"replay it: SIMULATION_SEED={world.seed} pytest tests/test_simulation.py -k every_seed\n\n"
            + world.text())


def _failure_in(seeds: range) -> str | None:
    """In a worker process: the report of the first failing seed of `seeds`, or None."""
    world = _first_failure(seeds)
    return _report(world) if world is not None else None


def test_every_seed_keeps_every_invariant():
    seeds = _seeds()
    workers = min(len(seeds), os.cpu_count() or 1, 8)  # seeds are independent: every core helps
    if workers == 1:  # one seed replayed, or one core: in this process (a debugger works)
        report = _failure_in(seeds)
        assert report is None, report
        return
    step = -(-len(seeds) // workers)
    parts = [seeds[i:i + step] for i in range(0, len(seeds), step)]
    # forkserver: clean workers; a fork would copy whatever threads earlier tests left running
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        reports = [r for r in pool.map(_failure_in, parts) if r is not None]
    assert not reports, reports[0]


def test_a_seed_replays_step_for_step():
    first, again = run_seed(17), run_seed(17)
    assert first.text() == again.text()
    assert len(first.trace) > 10  # it did something


def ignores_the_budget(models, queue, budget, now):
    """Broken on purpose: every model fits beside every other."""
    return policy.decide(models, queue, None if budget is None else 1 << 60, now)


def ignores_the_urls(models, queue, budget, now):
    """Broken on purpose: two models on one URL may run together."""
    return policy.decide({n: dataclasses.replace(m, url=n) for n, m in models.items()}, queue, budget, now)


@pytest.mark.parametrize(("broken", "caught"), [
    (ignores_the_budget, "over budget"),
    (ignores_the_urls, "two models on one URL"),
])
def test_a_broken_policy_is_caught_within_the_seeds(broken, caught):
    world = _first_failure(range(SEEDS), broken)
    assert world is not None, f"{broken.__name__} went unnoticed in {SEEDS} seeds"
    assert caught in world.violations[0], _report(world)
    assert f"VIOLATION: {caught}" in world.text()  # the trace shows where


def test_the_virtual_clock_jumps_to_the_next_timer():
    loop = VirtualLoop()
    try:
        async def main() -> float:
            await asyncio.sleep(3600)
            await asyncio.wait_for(asyncio.sleep(10), 60)
            return loop.time()
        assert loop.run_until_complete(main()) == 3610
    finally:
        loop.close()


# -- the bugs the simulation found, as workloads written out --------------------------------------

def _workload(models: list[Model], requests: list[Request], faults: list[Fault] = ()) -> Workload:
    config = Config("127.0.0.1", 3002, {m.name: m for m in models}, names={m.name: m.name for m in models},
                    prompt_cache=PromptCacheSettings("/nonexistent"))
    return Workload(config, {m.name: Behaviour(0.5, 0.0, 0.0) for m in models}, tuple(requests), tuple(faults),
                    patient=True)


def _model(name: str, port: int, **settings) -> Model:
    return Model(name, f"{name}.service", f"http://127.0.0.1:{port}", **settings)


def test_min_loaded_zero_serves_the_waiters_it_was_started_for():
    """A model with min_loaded 0, started for a request while another model's request waited,
    was stopped again at once for that switch, having served none: a load per turn, forever."""
    load = _workload([_model("a", 3004, min_loaded=0.0), _model("b", 3005, min_loaded=0.0)],
                     [Request(0.0, "a", 1.0, None), Request(0.01, "b", 1.0, None), Request(0.02, "a", 1.0, None)])
    world = run_seed(0, load=load)
    assert not world.violations, _report(world)
    starts = [args[0] for _, text, args in world.trace if text == "start %s"]
    assert starts == ["a.service", "b.service"]
    assert [o.result for o in world.outcomes] == ["answered"] * 3


def test_a_unit_started_by_hand_during_a_drain_is_stopped_before_the_start():
    """Units started by hand were looked for before the drain: one started during a long drain
    ran beside the model started after it."""
    load = _workload([_model("a", 3004, min_loaded=0.0), _model("b", 3005), _model("c", 3006)],
                     [Request(0.0, "a", 10.0, None), Request(1.0, "b", 1.0, None)],
                     [Fault(3.0, "stray", "c")])
    world = run_seed(0, load=load)
    assert not world.violations, _report(world)
    order = [args[0] for _, text, args in world.trace if text in ("start %s", "stop %s")]
    assert order == ["a.service", "a.service", "c.service", "b.service"]  # start a, stop a, stop c, start b


def test_a_load_nobody_waits_for_gives_way():
    """Issue 20: the client of a slow load leaves; the waiting request for another model does not
    wait for that load: the start is abandoned, its unit stopped, and the other model starts."""
    load = _workload([_model("slow", 3004), _model("b", 3005)],
                     [Request(0.0, "slow", 1.0, 1.0), Request(0.5, "b", 1.0, None)])
    load = dataclasses.replace(load, behaviour={"slow": Behaviour(60.0, 0.0, 0.0), "b": Behaviour(0.5, 0.0, 0.0)})
    world = run_seed(0, load=load)
    assert not world.violations, _report(world)
    order = [(round(t, 2), text % args) for t, text, args in world.trace if text in ("start %s", "stop %s")]
    assert order == [(0.0, "start slow.service"), (1.0, "stop slow.service"), (1.01, "start b.service")]
    assert [o.result for o in world.outcomes] == ["left", "answered"]


def test_a_pinned_model_stays_while_the_others_swap():
    load = _workload([_model("embed", 3004, memory=1, pin=True), _model("a", 3005, memory=6),
                      _model("b", 3006, memory=6)],
                     [Request(0.0, "a", 1.0, None), Request(2.0, "b", 1.0, None), Request(4.0, "a", 1.0, None)],
                     [Fault(0.0, "load", "embed")])
    load = dataclasses.replace(load, config=dataclasses.replace(load.config, memory_budget=7))
    world = run_seed(0, load=load)
    assert not world.violations, _report(world)
    stops = [args[0] for _, text, args in world.trace if text == "stop %s"]
    assert "embed.service" not in stops and stops, stops


def test_a_memory_auto_model_too_large_beside_the_pinned_ones_is_warned_once(caplog):
    """Issue 20: the config cannot know an auto size; the first start that learns it warns."""
    load = _workload([_model("embed", 3004, memory=1 * GiB, pin=True),
                      _model("big", 3005, memory_auto=True)],
                     [Request(0.0, "big", 1.0, None), Request(10.0, "big", 1.0, None)])
    load = dataclasses.replace(load, config=dataclasses.replace(load.config, memory_budget=7 * GiB),
                               learned={"big": 7 * GiB})
    caplog.set_level(logging.WARNING, logger="llm_switch")
    world = World(0, load=load).run()
    assert not world.violations, _report(world)
    warned = [r.getMessage() for r in caplog.records if "cannot run beside the pinned" in r.getMessage()]
    assert warned == ["models.big: 7G learned + pinned embed 1G exceed memory_budget 7G; it cannot run beside "
                      "the pinned models"]
