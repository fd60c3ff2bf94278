"""Tool calls a model wrote into its text: `<tool_call>{…}</tool_call>` (Qwen/Hermes) and
`<tool_call><function=…><parameter=…>…</tool_call>` (Qwen3-Coder), lifted out as structured calls.

Pure code, no I/O.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import json_repair

from .arguments import DECODER, dumps, repair_arguments

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

_XML_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.S)
_XML_PARAM = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.S)


_XML_START = "<function="


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _xml_value(text: str) -> Any:
    v = text.removeprefix("\n").removesuffix("\n")
    s = v.strip()
    if s and (s[0] in "{[-0123456789" or s in ("true", "false", "null")):
        try:
            return DECODER.decode(s)
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
            return m.group(1).strip(), dumps(params), False
        except ValueError:
            return None
    try:
        obj, broken = DECODER.decode(s), False
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


class TextCalls:
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
