"""SSE framing: events come back whole and byte-exact, whatever the split of the input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_switch.repair.sse import Event, SSEParser, format_event

pytestmark = pytest.mark.unit


def parse_all(chunks: list[bytes]) -> list[Event]:
    p = SSEParser()
    events = [ev for c in chunks for ev in p.feed(c)]
    return events + p.close()


CASES = [
    # (name, body, expected [(data, fields, complete)])
    ("lf", b"data: a\n\ndata: b\n\n", [("a", (), True), ("b", (), True)]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [("a", (), True), ("b", (), True)]),
    ("cr", b"data: a\r\rdata: b\r\r", [("a", (), True), ("b", (), True)]),
    ("no space after colon", b"data:a\n\n", [("a", (), True)]),
    ("two spaces keep one", b"data:  a\n\n", [(" a", (), True)]),
    ("multi-line data", b"data: {\ndata: \"a\": 1}\n\n", [('{\n"a": 1}', (), True)]),
    ("comment only", b": keep-alive\n\n", [(None, (), True)]),
    ("comment inside", b": x\ndata: a\n\n", [("a", (), True)]),
    ("event and id fields", b"event: e\nid: 7\ndata: a\n\n", [("a", (("event", "e"), ("id", "7")), True)]),
    ("field without colon", b"data\n\n", [("", (), True)]),
    ("empty data", b"data:\n\n", [("", (), True)]),
    ("unterminated tail", b"data: a\n\ndata: b\n", [("a", (), True), ("b", (), False)]),
    ("tail without newline", b"data: a", [("a", (), False)]),
    ("leading blank line", b"\ndata: a\n\n", [(None, (), True), ("a", (), True)]),
    ("non-ascii", "data: {\"t\": \"Zürich 東京\"}\n\n".encode(), [('{"t": "Zürich 東京"}', (), True)]),
    ("done", b"data: [DONE]\n\n", [("[DONE]", (), True)]),
]


@pytest.mark.parametrize("name,body,expected", CASES, ids=[c[0] for c in CASES])
def test_events(name: str, body: bytes, expected: list) -> None:
    events = parse_all([body])
    assert [(e.data, e.fields, e.complete) for e in events] == expected
    assert b"".join(e.raw for e in events) == body


@pytest.mark.parametrize("name,body,expected", CASES, ids=[c[0] for c in CASES])
def test_events_byte_by_byte(name: str, body: bytes, expected: list) -> None:
    events = parse_all([body[i : i + 1] for i in range(len(body))])
    assert [(e.data, e.fields, e.complete) for e in events] == expected
    assert b"".join(e.raw for e in events) == body


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n\r") == []  # the second CR may still be the start of CRLF
    [ev] = p.feed(b"\n")
    assert ev.raw == b"data: a\r\n\r\n" and ev.data == "a" and ev.eol == b"\r\n"


def test_event_is_returned_as_soon_as_its_blank_line_arrives() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\n") == []
    assert [e.data for e in p.feed(b"\n")] == ["a"]


def test_invalid_utf8_is_kept_as_bytes() -> None:
    [ev] = parse_all([b"data: \xff\n\n"])
    assert ev.raw == b"data: \xff\n\n" and ev.data is None


def test_format_event() -> None:
    assert format_event('{"a":1}') == b'data: {"a":1}\n\n'
    assert format_event("x", b"\r\n", (("id", "1"),)) == b"id: 1\r\ndata: x\r\n\r\n"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["data: x", "data: {\"a\": 1}", ": c", "data: é", "id: 3\ndata: y", "data: a\ndata: b"]),
            st.sampled_from(["\n", "\r\n", "\r"]),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_any_split_gives_the_same_events(parts: list[tuple[str, str]], cuts: list[int]) -> None:
    body = b"".join((text.replace("\n", eol) + eol + eol).encode() for text, eol in parts)
    bounds = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = parse_all([body])
    split = parse_all(chunks)
    assert [(e.raw, e.data, e.fields) for e in split] == [(e.raw, e.data, e.fields) for e in whole]
    assert b"".join(e.raw for e in split) == body
    assert all(e.complete for e in split)
