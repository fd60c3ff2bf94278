"""`/upstream/{model}/{path}` sends the path and query on byte for byte (issue 18): `%3F`, `%23`,
`%2F` mean to the backend what they meant to the client; `.` and `..` segments, however encoded,
get a 400 and reach no backend (which would see them with backend_api_key attached)."""

from __future__ import annotations

import http.client
import json

import pytest

from llm_switch.errors import BadRequest
from llm_switch.http.native import upstream_target


@pytest.mark.parametrize("raw, target", [
    ("/upstream/a/props", "/props"),
    ("/upstream/a/", "/"),
    ("/upstream/a/x%3Fb=1?q=%23z&y=%2F", "/x%3Fb=1?q=%23z&y=%2F"),
    ("/upstream/a/p%23frag", "/p%23frag"),
    ("/upstream/a/a%2Fb", "/a%2Fb"),
    ("/upstream/a/%41~%7e", "/%41~%7e"),
    ("/upstream/a//x", "//x"),
    ("/upstream/a/x?p=../..", "/x?p=../.."),  # a query is no path
    ("/upstream/a/.well-known/x", "/.well-known/x"),
    ("/upstream/a/a..b/c.", "/a..b/c."),
])
def test_target_is_byte_for_byte(raw, target):
    assert upstream_target(raw) == target


@pytest.mark.parametrize("raw", [
    "/upstream/a/../status", "/upstream/a/./x", "/upstream/a/x/..", "/upstream/a/%2e%2e/x", "/upstream/a/%2E./x",
    "/upstream/a/.%2e", "/upstream/a/x/%252e%252e/y", "/upstream/a/..%2Fx", "/upstream/a/..%5cx",
    "/upstream/a/x/%2e",
])
def test_dot_segments_are_refused(raw):
    with pytest.raises(BadRequest) as e:
        upstream_target(raw)
    assert e.value.code == "invalid_path" and "`.` or `..`" in e.value.message


def send_raw(url: str, target: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", target)  # http.client sends the target as it is
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_upstream_passes_encoded_characters_through(deploy):
    a = deploy.scripted_unit("a", {"routes": {"*": {"json": {"ok": True}}}})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url, "backend_api_key": "b" * 20}})
    for sent in ("/x%3Fb=1?q=%23z&y=%2F", "/p%23frag", "/a%2Fb/c", "/%41~?k=a+b%20c"):
        status, body = send_raw(daemon.url, "/upstream/a" + sent)
        assert status == 200, body
        assert a.records("request")[-1]["raw"] == sent
    seen = len(a.records("request"))
    for sent in ("/../status", "/%2e%2e/status", "/x/..%2F..%2Fslots"):
        status, body = send_raw(daemon.url, "/upstream/a" + sent)
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_path", body
    assert len(a.records("request")) == seen
