"""Tool-call repair: broken JSON arguments, calls written as text, streams kept streaming.

Pure code, no I/O. Three entry points for the proxy:

- `repair_request(body)`: assistant history in a request, before it reaches llama-server
  (which answers 500 on malformed arguments).
- `repair_completion(body, tools_offered)`: a non-streaming chat completion.
- `StreamRepair(tools_offered)`: a chat-completions SSE stream, fed bytes in any split.

Rules shared by all three: arguments that parse as a JSON object stay byte-identical; anything
else is repaired with json-repair (non-ASCII kept as is) into a JSON object string, or becomes
"{}" with a warning naming the tool. Message text is never rewritten, except that a Qwen/Hermes
`<tool_call>…</tool_call>` block in the content of a response whose request offered tools is
lifted out into a structured tool call.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any

import json_repair

from .sse import Event, SSEParser, format_event

__all__ = ["StreamRepair", "repair_arguments", "repair_completion", "repair_request"]

logger = logging.getLogger("llm_switch.repair")

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python accepts them, llama-server does not


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _first_object(obj: Any) -> dict | None:
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, list):  # json-repair reads `{..}{..}` as a list of both
        return next((x for x in obj if isinstance(x, dict)), None)
    return None


def repair_arguments(value: Any, name: str = "?") -> tuple[str, bool]:
    """Return (arguments as a JSON object string, whether it differs from `value`)."""
    if isinstance(value, str):
        fixed = _repair_str(value, name, depth=0)
        return fixed, fixed != value
    if isinstance(value, dict):  # an object instead of a string: encode it as OpenAI does
        try:
            return _dumps(value), True
        except ValueError:
            pass
    logger.warning("tool %s: arguments unusable (%s), replaced with {}", name, type(value).__name__)
    return "{}", True


_TOKEN = re.compile(
    r'(?P<str>"[^"\\]*(?:\\.[^"\\]*)*")|(?P<open>"[^"\\]*(?:\\.[^"\\]*)*\\?\Z)|(?P<punct>[{}\[\],:])', re.S
)
_CLOSER = {"{": "}", "[": "]"}


def _close_up(s: str) -> str | None:
    """The cheap fix for the usual breakage, keeping the model's own formatting: drop trailing
    commas, close a truncated string and the open brackets. None when that is not enough."""
    if not s.lstrip().startswith("{"):
        return None
    stack: list[str] = []
    drop: list[int] = []  # trailing commas
    comma = -1  # position of the last comma token
    tail = ""
    for m in _TOKEN.finditer(s):
        tok = m.group()
        if m.lastgroup == "open":
            backslashes = len(tok) - len(tok.rstrip("\\"))
            if backslashes % 2:  # a dangling escape
                s = s[:-1]
            tail = '"'
        elif tok in "}]":
            if not stack or _CLOSER[stack.pop()] != tok:
                return None
            if comma >= 0 and not s[comma + 1 : m.start()].strip():
                drop.append(comma)
        elif tok in "{[":
            stack.append(tok)
        comma = m.start() if tok == "," else -1
    if drop:
        s = "".join(s[i + 1 : j] for i, j in zip([-1, *drop], [*drop, len(s)]))
    fixed = (s + tail).rstrip()
    if fixed.endswith(","):
        fixed = fixed[:-1]
    fixed += "".join(_CLOSER[c] for c in reversed(stack))
    try:
        return fixed if isinstance(_decoder.decode(fixed), dict) else None
    except ValueError:
        return None


def _python_literal(s: str) -> str | None:
    """A Python dict written instead of JSON ({'a': True, 'b': None}): read it with the (safe,
    fast) literal parser rather than json-repair, which is slow on long text."""
    if not s.lstrip().startswith("{"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes like '\p' warn
            obj = ast.literal_eval(s.strip())
        return _dumps(obj) if isinstance(obj, dict) else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _repair_str(s: str, name: str, depth: int) -> str:
    try:
        obj = _decoder.decode(s)
    except ValueError:
        pass
    else:
        if isinstance(obj, dict):
            return s  # valid: byte-identical
        if isinstance(obj, str) and depth == 0:  # double-encoded: "{\"a\": 1}"
            return _repair_str(obj, name, depth + 1)
    start = len(s) - len(s.lstrip())
    try:  # one whole object followed by more (a second object, stray text): keep the first
        obj, end = _decoder.raw_decode(s, start)
    except ValueError:
        pass
    else:
        if isinstance(obj, dict):
            return s[start:end]
    if (quick := _close_up(s)) is not None:
        return quick
    if (literal := _python_literal(s)) is not None:
        return literal
    if s.strip():
        try:
            obj = json_repair.repair_json(s, return_objects=True, skip_json_loads=True)
        except Exception:  # json-repair has no narrow error type; any failure means "unrepairable"
            obj = None
        if isinstance(obj, str) and depth == 0 and obj.strip():
            return _repair_str(obj, name, depth + 1)
        if (found := _first_object(obj)) is not None:
            try:
                return _dumps(found)
            except ValueError:
                pass
        logger.warning("tool %s: arguments not repairable (%d chars), replaced with {}", name, len(s))
        logger.debug("tool %s: unrepairable arguments: %r", name, s)
    else:
        logger.warning("tool %s: empty arguments, replaced with {}", name)
    return "{}"


def _fix_tool_calls(calls: Any, repaired: list[str]) -> None:
    if not isinstance(calls, list):
        return
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        name = fn.get("name") if isinstance(fn.get("name"), str) else "?"
        fixed, changed = repair_arguments(fn.get("arguments"), name)
        if changed:
            fn["arguments"] = fixed
            repaired.append(name)


def repair_request(body: dict) -> list[str]:
    """Repairs tool_calls[].function.arguments in the request's assistant messages in place; returns the names of the tools whose arguments were repaired."""
    repaired: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return repaired
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            _fix_tool_calls(msg.get("tool_calls"), repaired)
    return repaired


# --- tool calls written as text --------------------------------------------------------------

_XML_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.S)
_XML_PARAM = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.S)


_XML_START = "<function="


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _xml_value(text: str) -> Any:
    v = text.removeprefix("\n").removesuffix("\n")
    s = v.strip()
    if s and (s[0] in "{[-0123456789" or s in ("true", "false", "null")):
        try:
            return _decoder.decode(s)
        except ValueError:
            pass
    return v


def parse_text_call(inner: str) -> tuple[str, str, bool] | None:
    """Read the inside of a `<tool_call>` block: (name, JSON-object arguments, repaired) or None."""
    s = inner.strip()
    if not _looks_like_call(s):
        return None
    if s.startswith(_XML_START):  # Qwen3-Coder: <function=f><parameter=p>v</parameter></function>
        m = _XML_FUNCTION.match(s)
        if not m or not m.group(1).strip():
            return None
        params = {k.strip(): _xml_value(v) for k, v in _XML_PARAM.findall(m.group(2))}
        try:
            return m.group(1).strip(), _dumps(params), False
        except ValueError:
            return None
    try:
        obj, broken = _decoder.decode(s), False
    except ValueError:
        try:
            obj, broken = json_repair.repair_json(s, return_objects=True), True
        except Exception:
            return None
    if isinstance(obj, list):
        obj = next((x for x in obj if isinstance(x, dict) and "name" in x), None)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    name = obj["name"]
    args = obj.get("arguments", obj.get("parameters"))
    if args is None:
        return name, "{}", broken
    fixed, changed = repair_arguments(args, name)
    return name, fixed, broken or (changed and not isinstance(args, dict))


def _looks_like_call(block: str) -> bool | None:
    """Whether a block's start can be a call (JSON or Qwen3-Coder XML); None: can't tell yet."""
    s = block.lstrip()
    if not s:
        return None
    if s[0] in "{[":
        return True
    if s.startswith(_XML_START):
        return True
    return None if _XML_START.startswith(s) else False


def _partial_tag(buf: str) -> int:
    """Length of the longest tail of `buf` that could be the start of OPEN_TAG."""
    start = buf.rfind("<", max(0, len(buf) - len(OPEN_TAG) + 1))
    if start >= 0 and OPEN_TAG.startswith(buf[start:]):
        return len(buf) - start
    return 0


class _TextCalls:
    """Splits content into text and `<tool_call>` blocks, incrementally.

    Holds back only what might still become a call: a tail that could be the start of the open
    tag, an open block, and (until the first non-blank character) leading whitespace, which is
    dropped if the message ends up with tool calls and no other text.
    """

    def __init__(self) -> None:
        self.hold = ""  # a tail that may start OPEN_TAG
        self.block: list[str] | None = None  # inside an open block: its text so far
        self.committed = False  # the open block starts like a call
        self.tail = ""  # the open block's last characters (where a split close tag may begin)
        self.lead_ws = ""  # leading whitespace not yet sent
        self.started = False  # a non-blank character has been sent

    @property
    def idle(self) -> bool:
        return self.started and not self.hold and self.block is None

    def feed(self, s: str) -> list[tuple[str, Any]]:
        """Return ("text", str) and ("call", (name, args, repaired)) items, in order."""
        out: list[tuple[str, Any]] = []
        buf, self.hold = self.hold + s, ""
        while buf:
            if self.block is None:
                i = buf.find(OPEN_TAG)
                if i < 0:
                    k = _partial_tag(buf)
                    self._text(out, buf[: len(buf) - k])
                    self.hold = buf[len(buf) - k :]
                    break
                self._text(out, buf[:i])
                self.block, self.committed, buf = [], False, buf[i + len(OPEN_TAG) :]
            else:
                if not self.committed:
                    whole = "".join(self.block) + buf
                    looks = _looks_like_call(whole)
                    if looks is False:  # prose that mentions the tag: let it go as text
                        self.block = None
                        self._text(out, OPEN_TAG)
                        buf = whole
                        continue
                    self.committed = bool(looks)
                    self.block, self.tail, buf = [], "", whole
                # the close tag can only newly appear in what came last (parts: no quadratic copying)
                probe = self.tail + buf
                j = probe.find(CLOSE_TAG)
                if j < 0:
                    self.block.append(buf)
                    self.tail = probe[-(len(CLOSE_TAG) - 1) :]
                    break
                whole = "".join(self.block) + buf
                j += len(whole) - len(probe)
                self.block = None
                self._block(out, whole[:j], closed=True)
                buf = whole[j + len(CLOSE_TAG) :]
        return out

    def finish(self, has_calls: bool) -> list[tuple[str, Any]]:
        """End of the message: settle an open block and whatever was held."""
        out: list[tuple[str, Any]] = []
        if self.block is not None:
            block, self.block = "".join(self.block), None
            self._block(out, block, closed=False)
        if self.hold:
            hold, self.hold = self.hold, ""
            self._text(out, hold)
        if self.lead_ws and not has_calls and not any(kind == "call" for kind, _ in out):
            out.append(("text", self.lead_ws))
        self.lead_ws = ""
        return out

    def _text(self, out: list[tuple[str, Any]], t: str) -> None:
        if not t:
            return
        if not self.started:
            if not t.strip():
                self.lead_ws += t
                return
            t, self.lead_ws, self.started = self.lead_ws + t, "", True
        out.append(("text", t))

    def _block(self, out: list[tuple[str, Any]], inner: str, closed: bool) -> None:
        call = parse_text_call(inner)
        if call is not None:
            out.append(("call", call))
        else:  # not a call after all: the text goes out as written
            self._text(out, OPEN_TAG + inner + (CLOSE_TAG if closed else ""))


# --- non-streaming ---------------------------------------------------------------------------


def _extract_text_calls(content: str, has_calls: bool) -> tuple[str | None, list[tuple[str, str, bool]]]:
    split = _TextCalls()
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
        _fix_tool_calls(msg.get("tool_calls"), repaired)
        fc = msg.get("function_call")  # the legacy single-call field
        if isinstance(fc, dict):
            _fix_tool_calls([{"function": fc}], repaired)
        content = msg.get("content")
        if tools_offered and isinstance(content, str) and OPEN_TAG in content:
            text, calls = _extract_text_calls(content, bool(msg.get("tool_calls")))
            if calls:
                tool_calls = msg.get("tool_calls")
                if not isinstance(tool_calls, list):
                    tool_calls = msg["tool_calls"] = []
                for name, args, _ in calls:
                    tool_calls.append(
                        {"id": _new_call_id(), "type": "function", "function": {"name": name, "arguments": args}}
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
    text: _TextCalls = field(default_factory=_TextCalls)
    calls: list[_Call] = field(default_factory=list)  # in order of first appearance
    by_upstream: dict[int, _Call] = field(default_factory=dict)
    extracted: int = 0

    @property
    def idle(self) -> bool:
        return all(c.emitted is not None for c in self.calls)


def _is_object(s: str) -> bool:
    try:
        return isinstance(_decoder.decode(s), dict)
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
        except ValueError:
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
            if not isinstance(index, int):
                main.append(choice)
                continue
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
                main.append(choice)
                continue
            changed = True
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

        if not changed:
            return None
        top = {k: v for k, v in chunk.items() if k != "choices"}
        base = {k: v for k, v in top.items() if k not in ("usage", "timings")}
        groups = ([main] if main else []) + [[c] for c in finals]
        if not groups:
            return [{**top, "choices": []}] if len(top) != len(base) else []
        out = [{**base, "choices": g} for g in groups]
        out[-1] = {**top, "choices": groups[-1]}  # usage and timings ride on the last one
        return out

    # -- tool calls

    def _text_items(self, st: _Choice, items: list[tuple[str, Any]], text: list[str], entries: list[dict]) -> None:
        for kind, value in items:
            if kind == "text":
                text.append(value)
                continue
            name, args, _ = value
            call = _Call(out=len(st.calls), name=name, parts=[args], extracted=True)
            call.header = {"index": call.out, "id": _new_call_id(), "type": "function", "function": {"name": name}}
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
                logger.warning("tool %s: arguments arrived after the call was complete; dropped", call.name)

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


def _dumps_compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
