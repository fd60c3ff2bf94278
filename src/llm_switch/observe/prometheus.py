"""The switch's Prometheus metrics for /metrics: counters and histograms fed by the event bus
(requests, switches), and at each scrape what is a state rather than an event, read from the
scheduler's snapshot (scheduling/snapshot.py). Labels are bounded (docs/design.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..events import EventBus, RequestDone, SwitchDone
from ..scheduling.policy import State
from ..scheduling.snapshot import ModelSnapshot, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: from a cached reply (ms) to a long generation or a big model's load
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """The switch's Prometheus metrics, in a registry of its own."""

    def __init__(self, events: EventBus, snapshot: Callable[[], Snapshot | None]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llm_switch_requests", "Requests answered, by model, route and HTTP status",
                                ["model", "route", "status"], registry=r)
        self.switch = Histogram("llm_switch_switch_duration_seconds",
                                "Switches to a model: stopping others plus loading it", ["model", "result"],
                                buckets=_BUCKETS, registry=r)
        self.load = Histogram("llm_switch_load_duration_seconds", "Loads of a model, start to ready", ["model"],
                              buckets=_BUCKETS, registry=r)
        self._per_request = _PerRequest(r)
        r.register(_Live(snapshot))
        self._per_model: dict[str, _Children] = {}  # labels() is slow: each model's children, looked up once
        self._unsubscribe = [events.subscribe(RequestDone, self._request), events.subscribe(SwitchDone, self._switch)]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _request(self, e: RequestDone) -> None:
        self.requests.labels(e.model or "", e.route, str(e.status)).inc()
        if e.model is None:
            return
        children = self._per_model.get(e.model)
        if children is None:
            children = self._per_model[e.model] = self._per_request.children(e.model)
        children.observe(e)

    def _switch(self, e: SwitchDone) -> None:
        self.switch.labels(e.target, "ok" if e.ok else "failed").observe(e.stopped_s + e.ready_s)
        if e.ok:
            self.load.labels(e.target).observe(e.ready_s)


class _PerRequest:
    """The per-model metrics each answered request adds to."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.first_byte = Histogram("llm_switch_time_to_first_byte_seconds",
                                    "From the request's arrival (waiting included) to the backend's first "
                                    "byte of the answer", ["model"], buckets=_BUCKETS, registry=r)
        self.duration = Histogram("llm_switch_request_duration_seconds",
                                  "Whole requests, waiting for the model included", ["model"],
                                  buckets=_BUCKETS, registry=r)
        self.waited = Histogram("llm_switch_wait_seconds", "Time requests that waited spent waiting for their model",
                                ["model"], buckets=_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llm_switch_prompt_tokens", "Prompt tokens (from the answers' usage)",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("llm_switch_completion_tokens",
                                         "Completion tokens (from the answers' usage)", ["model"], registry=r)
        self.prompt_seconds = Counter("llm_switch_prompt_seconds", "Prompt processing time (llama-server's timings)",
                                      ["model"], registry=r)
        self.generation_seconds = Counter("llm_switch_generation_seconds", "Generation time (llama-server's timings)",
                                          ["model"], registry=r)
        self.generation_tps = Gauge("llm_switch_generation_tokens_per_second",
                                    "Generation speed of the model's last answer", ["model"], registry=r)
        self.prompt_tps = Gauge("llm_switch_prompt_tokens_per_second",
                                "Prompt processing speed of the model's last answer", ["model"], registry=r)
        self.repaired = Counter("llm_switch_tool_calls_repaired", "Tool calls whose arguments were repaired",
                                ["model"], registry=r)

    def children(self, model: str) -> _Children:
        return _Children(*(metric.labels(model) for metric in (
            self.duration, self.waited, self.first_byte, self.prompt_tokens, self.completion_tokens,
            self.prompt_seconds, self.generation_seconds, self.generation_tps, self.prompt_tps, self.repaired)))


class _Children(NamedTuple):
    """One model's children of `_PerRequest`'s metrics."""

    duration: Histogram
    waited: Histogram
    first_byte: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    prompt_seconds: Counter
    generation_seconds: Counter
    generation_tps: Gauge
    prompt_tps: Gauge
    repaired: Counter

    def observe(self, e: RequestDone) -> None:
        self.duration.observe(e.seconds)
        if e.waited_s:
            self.waited.observe(e.waited_s)
        if e.first_byte_s is not None:
            self.first_byte.observe(e.first_byte_s)
        for counter, amount in ((self.prompt_tokens, e.prompt_tokens), (self.completion_tokens, e.completion_tokens),
                                (self.prompt_seconds, e.prompt_s), (self.generation_seconds, e.generation_s)):
            if amount is not None:
                counter.inc(amount)
        for gauge, value in ((self.generation_tps, e.generation_tps), (self.prompt_tps, e.prompt_tps)):
            if value is not None:
                gauge.set(value)
        if e.repaired:
            self.repaired.inc(e.repaired)


class _Live:
    """What is a state, not an event: read from the scheduler's snapshot at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []  # unknown until the first scrape; keeps the registry from collecting at register time

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        if snap is None:  # not started yet, or shutting down
            return []
        models = list(snap.models.values())
        return model_families(models) + prompt_cache_families(models)


def model_families(models: list[ModelSnapshot]) -> list[Metric]:
    """Each model's state, requests in flight and queued, memory and last load."""
    state = GaugeMetricFamily("llm_switch_model_state", "1 for the state each model is in", labels=["model", "state"])
    in_flight = GaugeMetricFamily("llm_switch_requests_in_flight", "Requests being served", labels=["model"])
    queued = GaugeMetricFamily("llm_switch_requests_queued", "Requests waiting for their model", labels=["model"])
    memory = GaugeMetricFamily("llm_switch_model_memory_bytes", "Memory declared in the config, measured after "
                               "the last start (RAM: the unit's; VRAM: its process's), learned from llama-server's "
                               "report on the budget's device, and counted by the budget", labels=["model", "kind"])
    load_s = GaugeMetricFamily("llm_switch_model_last_load_seconds", "The model's last load, start to ready",
                               labels=["model"])
    for m in models:
        for s in State:
            state.add_metric([m.name, str(s)], 1.0 if m.state is s else 0.0)
        in_flight.add_metric([m.name], m.in_flight)
        queued.add_metric([m.name], m.waiting)
        measured = m.measured
        for kind, value in (("declared", m.declared), ("ram", measured.ram if measured else None),
                            ("vram", measured.vram if measured else None), ("learned", m.learned),
                            ("counted", m.counted)):
            if value is not None:
                memory.add_metric([m.name, kind], value)
        if m.load_s is not None:
            load_s.add_metric([m.name], m.load_s)
    return [state, in_flight, queued, memory, load_s]


def prompt_cache_families(models: list[ModelSnapshot]) -> list[Metric]:
    """The prompt cache's saves and restores: how many, their total time, and the last of each."""
    count = CounterMetricFamily("llm_switch_prompt_cache_transfers", "Saves and restores that moved at least one "
                                "slot", labels=["model", "action"])
    seconds = CounterMetricFamily("llm_switch_prompt_cache_seconds", "Time spent saving and restoring slots",
                                  labels=["model", "action"])
    last_s = GaugeMetricFamily("llm_switch_prompt_cache_last_seconds", "The last save or restore's duration",
                               labels=["model", "action"])
    last_tokens = GaugeMetricFamily("llm_switch_prompt_cache_last_tokens", "Tokens in the last save or restore",
                                    labels=["model", "action"])
    for m in models:
        c = m.prompt_cache
        if c is None:
            continue
        for action, n, total, last in (("save", c.saves, c.save_s, c.last_save),
                                       ("restore", c.restores, c.restore_s, c.last_restore)):
            count.add_metric([m.name, action], n)
            seconds.add_metric([m.name, action], total)
            if last is not None:
                last_s.add_metric([m.name, action], last.seconds)
                last_tokens.add_metric([m.name, action], last.tokens)
    return [count, seconds, last_s, last_tokens]
