"""Repair of whole chat completions and of their SSE streams (the package docstring has the rules)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .arguments import DECODER, fix_tool_calls, repair_arguments
from .sse import Event, SSEParser, format_event
from .text_calls import OPEN_TAG, TextCalls, new_call_id

log = logging.getLogger(__name__)


# --- non-streaming ---------------------------------------------------------------------------


def _extract_text_calls(content: str, has_calls: bool) -> tuple[str | None, list[tuple[str, str, bool]]]:
    split = TextCalls()
    items = split.feed(content)
    items += split.finish(has_calls=has_calls or any(kind == "call" for kind, _ in items))
    calls = [v for kind, v in items if kind == "call"]
    text = "".join(v for kind, v in items if kind == "text")
    return (text if text or not calls else None), calls


def repair_completion(body: dict, tools_offered: bool) -> list[str]:
    """Repairs a non-streaming chat completion in place (every choice): arguments, content→None when tool calls and blank content, <tool_call> text → structured tool_calls when tools_offered. Returns tool names repaired (for logging)."""
    repaired: list[str] = []
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        return repaired
    for choice in choices:
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        fix_tool_calls(msg.get("tool_calls"), repaired)
        fc = msg.get("function_call")  # the legacy single-call field
        if isinstance(fc, dict):
            fix_tool_calls([{"function": fc}], repaired)
        content = msg.get("content")
        if tools_offered and isinstance(content, str) and OPEN_TAG in content:
            text, calls = _extract_text_calls(content, bool(msg.get("tool_calls")))
            if calls:
                tool_calls = msg.get("tool_calls")
                if not isinstance(tool_calls, list):
                    tool_calls = msg["tool_calls"] = []
                for name, args, _ in calls:
                    tool_calls.append(
                        {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": args}}
                    )
                    repaired.append(name)
                msg["content"] = text
                choice["finish_reason"] = "tool_calls"
        tool_calls = msg.get("tool_calls")
        if tool_calls and isinstance(tool_calls, list):
            content = msg.get("content")
            if isinstance(content, str) and not content.strip():
                msg["content"] = None
    return repaired


# --- streaming -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    out: int  # the index clients see (calls numbered in order of first appearance)
    name: str = "?"
    header: dict = field(default_factory=dict)  # first delta entry, arguments removed
    parts: list[str] = field(default_factory=list)  # argument fragments received so far
    sent_header: bool = False
    emitted: str | None = None  # arguments sent (None: still held)
    extracted: bool = False  # lifted out of `<tool_call>` text


@dataclass(slots=True)
class _Choice:
    text: TextCalls = field(default_factory=TextCalls)
    calls: list[_Call] = field(default_factory=list)  # in order of first appearance
    by_upstream: dict[int, _Call] = field(default_factory=dict)
    extracted: int = 0

    @property
    def idle(self) -> bool:
        return all(c.emitted is not None for c in self.calls)


def _is_object(s: str) -> bool:
    try:
        return isinstance(DECODER.decode(s), dict)
    except ValueError:
        return False


class StreamRepair:
    """Incremental repair of a chat-completions SSE stream."""

    def __init__(self, tools_offered: bool) -> None:
        self.tools_offered = tools_offered
        self.repaired: list[str] = []  # tool names repaired so far (for the log line)
        self._sse = SSEParser()
        self._choices: dict[int, _Choice] = {}
        self._template: dict[str, Any] = {}
        self._eol = b"\n"

    def feed(self, data: bytes) -> bytes:
        """Upstream bytes in any split → bytes to send now (text deltas immediately)."""
        # Fast path: a run of whole LF-framed events that are all quiet goes out as it came,
        # unparsed. Quiet events change no state, so this is what the per-event path would do.
        if self._sse.empty and b"\r" not in data:
            cut = data.rfind(b"\n\n") + 2
            if cut >= 2 and b"[DONE]" not in data and self._quiet(block := data[:cut]):
                self._eol = b"\n"
                rest = data[cut:]
                return block + (b"".join(self._event(ev) for ev in self._sse.feed(rest)) if rest else b"")
        return b"".join(self._event(ev) for ev in self._sse.feed(data))

    def close(self) -> bytes:
        """End of upstream: flush anything held."""
        out = []
        tail = None
        for ev in self._sse.close():
            if ev.complete:
                out.append(self._event(ev))
            else:
                tail = ev
        out.append(self._flush_all())
        if tail is not None:  # an unterminated last event goes out as it came, after the flush
            out.append(tail.raw)
        return b"".join(out)

    # -- events

    def _choice(self, index: int) -> _Choice:
        if (st := self._choices.get(index)) is None:
            st = self._choices[index] = _Choice()
        return st

    def _quiet(self, raw: bytes) -> bool:
        """True when an event can go out untouched without being parsed."""
        if b"tool_calls" in raw or not all(st.idle for st in self._choices.values()):
            return False
        if not self.tools_offered:
            return True
        return (
            bool(self._choices)
            and all(st.text.idle and not st.extracted for st in self._choices.values())
            and b"<" not in raw
            and b"\\u003c" not in raw.lower()
        )

    def _event(self, ev: Event) -> bytes:
        if ev.data is None:
            return ev.raw  # comments, keep-alives, blank lines
        self._eol = ev.eol
        if ev.data.strip() == "[DONE]":
            return self._flush_all() + ev.raw
        if self._quiet(ev.raw):
            return ev.raw
        try:
            chunk = json.loads(ev.data)
        except (ValueError, RecursionError):
            return ev.raw
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return ev.raw
        self._template = {
            k: chunk[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in chunk
        }
        rewritten = self._chunk(chunk)
        if rewritten is None:
            return ev.raw
        return b"".join(
            format_event(_dumps_compact(c), self._eol, ev.fields if i == 0 else ()) for i, c in enumerate(rewritten)
        )

    def _chunk(self, chunk: dict) -> list[dict] | None:
        """Process one parsed chunk: None when it goes out unchanged, else the chunks to send."""
        changed = False
        main: list[Any] = []  # choices for the first chunk
        finals: list[dict] = []  # then one chunk each: held arguments, finish_reason
        for choice in chunk["choices"]:
            index = choice.get("index", 0) if isinstance(choice, dict) else None
            if not isinstance(index, int) or not self._choice_changed(index, choice, main, finals):
                main.append(choice)
            else:
                changed = True
        return _split(chunk, main, finals) if changed else None

    def _choice_changed(self, index: int, choice: dict, main: list[Any], finals: list[dict]) -> bool:
        """Rewrite one choice into `main` (and `finals`, for what its end adds); False when it
        goes out as it came, and nothing was added."""
        st = self._choice(index)
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        new_delta = {k: v for k, v in delta.items() if k not in ("content", "tool_calls")}
        text: list[str] = []
        entries: list[dict] = []
        touched = False

        if "content" in delta:
            content = delta["content"]
            if self.tools_offered and isinstance(content, str):
                self._text_items(st, st.text.feed(content), text, entries)
                touched = "".join(text) != content or bool(entries)
            else:
                new_delta["content"] = content
        if delta.get("tool_calls") is not None:
            touched = True
            if isinstance(delta["tool_calls"], list):
                for entry in delta["tool_calls"]:
                    if isinstance(entry, dict):
                        self._tool_entry(st, entry, entries)

        reason = choice.get("finish_reason")
        end_text: list[str] = []
        end_entries: list[dict] = []
        if reason is not None:
            before = len(self.repaired)
            self._finish(st, end_text, end_entries)
            touched = touched or bool(end_text or end_entries) or len(self.repaired) != before
            if st.extracted and reason != "tool_calls":
                reason, touched = "tool_calls", True

        if not touched:
            return False
        if text:
            new_delta["content"] = "".join(text)
        if entries:
            new_delta["tool_calls"] = entries
        rest = {k: v for k, v in choice.items() if k not in ("index", "delta", "finish_reason")}
        says = bool(new_delta) or any(v is not None for v in rest.values())
        if end_text or end_entries:
            if says:
                main.append({"index": index, "delta": new_delta, **rest, "finish_reason": None})
            end_delta: dict[str, Any] = {}
            if end_text:
                end_delta["content"] = "".join(end_text)
            if end_entries:
                end_delta["tool_calls"] = end_entries
            finals.append({"index": index, "delta": end_delta, "finish_reason": None})
            finals.append({"index": index, "delta": {}, "finish_reason": reason})
        elif says or reason is not None:
            main.append({"index": index, "delta": new_delta, **rest, "finish_reason": reason})
        return True

    # -- tool calls

    def _text_items(self, st: _Choice, items: list[tuple[str, Any]], text: list[str], entries: list[dict]) -> None:
        for kind, value in items:
            if kind == "text":
                text.append(value)
                continue
            name, args, _ = value
            call = _Call(out=len(st.calls), name=name, parts=[args], extracted=True)
            call.header = {"index": call.out, "id": new_call_id(), "type": "function", "function": {"name": name}}
            st.calls.append(call)
            st.extracted += 1
            self.repaired.append(name)
            self._advance(st, entries, upto=len(st.calls))

    def _tool_entry(self, st: _Choice, entry: dict, entries: list[dict]) -> None:
        up = entry.get("index")
        if not isinstance(up, int):  # some servers leave it out: a new id starts a new call
            last = st.by_upstream.get(max(st.by_upstream)) if st.by_upstream else None
            if last is None:
                up = 0
            elif entry.get("id") and entry.get("id") != last.header.get("id"):
                up = max(st.by_upstream) + 1
            else:
                up = max(st.by_upstream)
        fn = entry.get("function") if isinstance(entry.get("function"), dict) else {}
        fragment = fn.get("arguments")
        if fragment is not None and not isinstance(fragment, str):
            fragment = _dumps_compact(fragment)
        call = st.by_upstream.get(up)
        if call is None:  # a new call begins: earlier ones that are complete objects are done
            self._advance(st, entries, upto=len(st.calls))
            call = _Call(out=len(st.calls))
            call.header = {**entry, "index": call.out, "function": {**fn, "arguments": ""}}
            if isinstance(fn.get("name"), str):
                call.name = fn["name"]
            st.calls.append(call)
            st.by_upstream[up] = call
            if all(c.emitted is not None for c in st.calls[:-1]):
                call.sent_header = True
                entries.append(call.header)
            if fragment:
                call.parts.append(fragment)
            return
        # More for a known call: ids/names pass on (rare), argument fragments are held.
        extra = {k: v for k, v in entry.items() if k not in ("index", "function")}
        extra_fn = {k: v for k, v in fn.items() if k != "arguments"}
        if isinstance(extra_fn.get("name"), str) and call.name == "?":
            call.name = extra_fn["name"]
        if extra or extra_fn:
            if call.sent_header:
                piece = {"index": call.out, **extra}
                if extra_fn:
                    piece["function"] = extra_fn
                entries.append(piece)
            else:
                call.header.update(extra)
                call.header["function"] = {**call.header.get("function", {}), **extra_fn}
        if not fragment:
            return
        call.parts.append(fragment)
        if call.emitted is not None:  # late fragment of a call already sent
            fixed, _ = repair_arguments("".join(call.parts), call.name)
            if fixed.startswith(call.emitted) and len(fixed) > len(call.emitted):
                entries.append({"index": call.out, "function": {"arguments": fixed[len(call.emitted) :]}})
                call.emitted = fixed
            elif fixed != call.emitted:
                log.warning("tool %s: arguments arrived after the call was complete; dropped", call.name)

    def _advance(self, st: _Choice, entries: list[dict], upto: int, final: bool = False) -> None:
        """Send, in order, calls among the first `upto` that are complete."""
        for call in st.calls[:upto]:
            if call.emitted is not None:
                continue
            if not final and not call.extracted and not _is_object("".join(call.parts)):
                return  # maybe more fragments to come (interleaved calls): later calls wait
            self._send(call, entries)

    def _send(self, call: _Call, entries: list[dict]) -> None:
        fixed, changed = repair_arguments("".join(call.parts), call.name)
        if changed and not call.extracted:
            self.repaired.append(call.name)
        call.emitted = fixed
        if call.sent_header:
            entries.append({"index": call.out, "function": {"arguments": fixed}})
        else:
            call.sent_header = True
            header = dict(call.header)
            header["function"] = {**header.get("function", {}), "arguments": fixed}
            entries.append(header)

    def _finish(self, st: _Choice, text: list[str], entries: list[dict]) -> None:
        """This choice's message is complete: settle held text, then every held call."""
        self._text_items(st, st.text.finish(has_calls=bool(st.calls)), text, entries)
        self._advance(st, entries, upto=len(st.calls), final=True)

    def _flush_all(self) -> bytes:
        out = []
        for index, st in self._choices.items():
            text: list[str] = []
            entries: list[dict] = []
            self._finish(st, text, entries)
            delta: dict[str, Any] = {}
            if text:
                delta["content"] = "".join(text)
            if entries:
                delta["tool_calls"] = entries
            if delta:
                chunk = {**self._template, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
                out.append(format_event(_dumps_compact(chunk), self._eol))
        return b"".join(out)


def _split(chunk: dict, main: list[Any], finals: list[dict]) -> list[dict]:
    """The chunks that carry `main`'s choices, then each of `finals` alone; usage and timings
    ride on the last one."""
    top = {k: v for k, v in chunk.items() if k != "choices"}
    base = {k: v for k, v in top.items() if k not in ("usage", "timings")}
    groups = ([main] if main else []) + [[c] for c in finals]
    if not groups:
        return [{**top, "choices": []}] if len(top) != len(base) else []
    out = [{**base, "choices": g} for g in groups]
    out[-1] = {**top, "choices": groups[-1]}
    return out


def _dumps_compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
