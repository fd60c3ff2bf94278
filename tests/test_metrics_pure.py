"""The pure parts of what the switch counts: an answer's usage from its last bytes, and the
Prometheus families built from a scheduler snapshot (the prompt cache's transfers included)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_switch.events import EventBus, MemoryMeasured, RequestDone, SwitchDone
from llm_switch.observe.prometheus import Metrics, model_families, prompt_cache_families
from llm_switch.observe.usage import Usage, usage_of
from llm_switch.scheduling.policy import State
from llm_switch.scheduling.snapshot import CacheSnapshot, ModelSnapshot, Snapshot, Transfer

TIMINGS = {"prompt_n": 11, "prompt_ms": 22.0, "prompt_per_second": 500.0, "predicted_n": 3, "predicted_ms": 60.0,
           "predicted_per_second": 50.0}


def sse(*events: dict) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("tail,streamed_s,expected", [
    # llama-server's last SSE event: usage and timings
    (sse({"choices": []}, {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3},
                           "timings": TIMINGS}), None, Usage(11, 3, 500.0, 50.0, 0.022, 0.06)),
    # a whole JSON answer with usage only (an OpenAI-style backend): tok/s from the stream's own time
    (json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 10}}).encode(), 2.0, Usage(5, 10, None, 5.0)),
    (json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 10}}).encode(), None, Usage(5, 10)),
    # Anthropic's names
    (b'event: message_delta\ndata: {"usage": {"input_tokens": 7, "output_tokens": 2}}\n\n', None, Usage(7, 2)),
    # timings only: the token counts come from them
    (json.dumps({"timings": TIMINGS}).encode(), None, Usage(11, 3, 500.0, 50.0, 0.022, 0.06)),
    # usage without counts, timings with them
    (json.dumps({"usage": {}, "timings": {"prompt_n": 4, "predicted_n": 2}}).encode(), None, Usage(4, 2)),
    # a text that says "usage" is not usage; neither is a cut-off object
    (b'data: {"choices": [{"delta": {"content": "usage"}}]}\n\n', None, None),
    (b'{"usage": {"prompt_tokens": 5, "compl', None, None),
    (b'{"usage": [1, 2]}', None, None),
    (b'{"usage": "none"}', None, None),
    (b"", None, None),
    # a bool is not a count
    (b'{"usage": {"prompt_tokens": true, "completion_tokens": 1}}', None, Usage(None, 1)),
    # the last usage wins (a tail may hold two events)
    (sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}},
         {"usage": {"prompt_tokens": 2, "completion_tokens": 9}}), None, Usage(2, 9)),
    # bytes cut in the middle of a character before the usage still parse
    ("é".encode()[1:] + b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}', None, Usage(3, 4)),
])
def test_usage_of(tail, streamed_s, expected):
    assert usage_of(tail, streamed_s) == expected


@pytest.mark.parametrize("usage,text,headers", [
    (Usage(11, 3, 500.0, 50.0), "11 prompt + 3 completion tokens, prompt 500.0 tok/s, generation 50.0 tok/s",
     {"X-LLM-Switch-Prompt-Tokens": "11", "X-LLM-Switch-Completion-Tokens": "3",
      "X-LLM-Switch-Prompt-Tokens-Per-Second": "500.0", "X-LLM-Switch-Generation-Tokens-Per-Second": "50.0"}),
    (Usage(None, 3), "? prompt + 3 completion tokens", {"X-LLM-Switch-Completion-Tokens": "3"}),
    (Usage(), "? prompt + ? completion tokens", {}),
])
def test_usage_text_and_headers(usage, text, headers):
    assert usage.text() == text
    assert usage.headers() == headers


def model(name: str, state: State = State.STOPPED, **fields) -> ModelSnapshot:
    base = dict(name=name, unit=f"{name}.service", url="http://127.0.0.1:1", aliases=(), declared=None, state=state,
                since=0.0, reason=None, in_flight=0, waiting=0, draining=False, queue_position=None, load_s=None,
                failures=0, retry_in_s=None, ready_at=0.0, idle_since=None, idle_unload=None)
    return ModelSnapshot(**{**base, **fields})


def samples(families) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, as a scrape would show them."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return samples_of(generate_latest(registry))


def samples_of(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class _Fixed:
    def __init__(self, families) -> None:
        self.families = families

    def collect(self):
        return self.families


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


SAVE = Transfer(slots=2, tokens=900, bytes=1 << 20, seconds=0.25, at=1.0)
RESTORE = Transfer(slots=1, tokens=400, bytes=1 << 19, seconds=0.125, at=2.0)


@pytest.mark.parametrize("cache,expected,absent", [
    (None, {}, [key("llm_switch_prompt_cache_transfers_total", model="a", action="save")]),
    (CacheSnapshot("unknown", None, "/c/a"),
     {key("llm_switch_prompt_cache_transfers_total", model="a", action="save"): 0,
      key("llm_switch_prompt_cache_transfers_total", model="a", action="restore"): 0,
      key("llm_switch_prompt_cache_seconds_total", model="a", action="save"): 0.0},
     [key("llm_switch_prompt_cache_last_seconds", model="a", action="save")]),
    (CacheSnapshot("on", None, "/c/a", saves=3, restores=2, save_s=0.75, restore_s=0.25, last_save=SAVE,
                   last_restore=RESTORE),
     {key("llm_switch_prompt_cache_transfers_total", model="a", action="save"): 3,
      key("llm_switch_prompt_cache_transfers_total", model="a", action="restore"): 2,
      key("llm_switch_prompt_cache_seconds_total", model="a", action="save"): 0.75,
      key("llm_switch_prompt_cache_seconds_total", model="a", action="restore"): 0.25,
      key("llm_switch_prompt_cache_last_seconds", model="a", action="save"): 0.25,
      key("llm_switch_prompt_cache_last_tokens", model="a", action="restore"): 400}, []),
])
def test_prompt_cache_families(cache, expected, absent):
    got = samples(prompt_cache_families([model("a", prompt_cache=cache)]))
    for k, v in expected.items():
        assert got.get(k) == v, k
    for k in absent:
        assert k not in got


def test_model_families():
    got = samples(model_families([
        model("a", State.READY, declared=1 << 30, in_flight=2, waiting=0, load_s=1.5,
              measured=MemoryMeasured("a", 1 << 30, ram=5000, vram=None)),
        model("b", State.FAILED, waiting=3)]))
    assert got[key("llm_switch_model_state", model="a", state="ready")] == 1
    assert got[key("llm_switch_model_state", model="a", state="stopped")] == 0
    assert got[key("llm_switch_model_state", model="b", state="failed")] == 1
    assert sum(v for (name, labels), v in got.items() if name == "llm_switch_model_state") == 2
    assert got[key("llm_switch_requests_in_flight", model="a")] == 2
    assert got[key("llm_switch_requests_queued", model="b")] == 3
    assert got[key("llm_switch_model_memory_bytes", model="a", kind="declared")] == 1 << 30
    assert got[key("llm_switch_model_memory_bytes", model="a", kind="ram")] == 5000
    assert key("llm_switch_model_memory_bytes", model="a", kind="vram") not in got
    assert key("llm_switch_model_memory_bytes", model="b", kind="declared") not in got
    assert got[key("llm_switch_model_last_load_seconds", model="a")] == 1.5
    assert key("llm_switch_model_last_load_seconds", model="b") not in got


def test_metrics_render_the_snapshot_of_the_moment():
    """`Metrics` reads the snapshot at each scrape; before the scheduler exists there is none."""
    current: list[Snapshot | None] = [None]
    metrics = Metrics(EventBus(), lambda: current[0])
    assert b"llm_switch_model_state" not in metrics.render()
    current[0] = Snapshot.of({"a": model("a", State.READY, prompt_cache=CacheSnapshot("on", None, "/c/a", saves=1))},
                             at=0.0, config_path=None, listen="127.0.0.1:0", memory_budget=None, vram_note=None,
                             switches=(), queued=0)
    text = metrics.render().decode()
    assert 'llm_switch_model_state{model="a",state="ready"} 1.0' in text
    assert 'llm_switch_prompt_cache_transfers_total{action="save",model="a"} 1.0' in text
    metrics.close()


def test_metrics_count_what_the_bus_carries():
    bus = EventBus()
    metrics = Metrics(bus, lambda: None)
    bus.publish(RequestDone("a", "/v1/chat/completions", 200, 2.0, first_byte_s=0.5, waited_s=1.0, prompt_tokens=11,
                            completion_tokens=3, prompt_tps=500.0, generation_tps=50.0, repaired=2, prompt_s=0.022,
                            generation_s=0.06))
    bus.publish(RequestDone("a", "/v1/chat/completions", 200, 1.0, prompt_tokens=1, completion_tokens=1))
    bus.publish(RequestDone(None, "other", 404, 0.001))
    bus.publish(SwitchDone(("b",), "a", stopped_s=0.5, ready_s=1.5, at=0.0, ok=True))
    got = samples_of(metrics.render())
    assert got[key("llm_switch_requests_total", model="a", route="/v1/chat/completions", status="200")] == 2
    assert got[key("llm_switch_requests_total", model="", route="other", status="404")] == 1
    assert got[key("llm_switch_request_duration_seconds_count", model="a")] == 2
    assert got[key("llm_switch_request_duration_seconds_sum", model="a")] == 3.0
    assert got[key("llm_switch_wait_seconds_count", model="a")] == 1
    assert got[key("llm_switch_time_to_first_byte_seconds_count", model="a")] == 1
    assert got[key("llm_switch_prompt_tokens_total", model="a")] == 12
    assert got[key("llm_switch_completion_tokens_total", model="a")] == 4
    assert got[key("llm_switch_prompt_seconds_total", model="a")] == pytest.approx(0.022)
    assert got[key("llm_switch_generation_tokens_per_second", model="a")] == 50.0
    assert got[key("llm_switch_tool_calls_repaired_total", model="a")] == 2
    assert got[key("llm_switch_switch_duration_seconds_sum", model="a", result="ok")] == 2.0
    assert got[key("llm_switch_load_duration_seconds_sum", model="a")] == 1.5
    metrics.close()
    bus.publish(RequestDone("a", "/v1/chat/completions", 200, 1.0))
    assert samples_of(metrics.render())[
        key("llm_switch_requests_total", model="a", route="/v1/chat/completions", status="200")] == 2
