"""A JSON body's memory is bounded (issue 18): `max_json_bytes` (16 MiB by default) and at most
json_body.LARGE_AT_ONCE bodies over 1 MiB read and parsed at once. The figure in
docs/security.md comes from here: the switch's peak RSS (VmHWM) while the worst body there is,
`[{},{},…]` of 16 MiB, is parsed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from support.harness import post_json
from llm_switch.http.json_body import LARGE_AT_ONCE

MiB = 1 << 20


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


def adversarial(size: int) -> bytes:
    """`[{},{},…]` of `size` bytes: the most Python objects per byte that JSON gives."""
    n = (size - 2) // 3
    return b"[" + b"{}," * (n - 1) + b"{}" + b" " * (size - 2 - 3 * n + 1) + b"]"


async def test_peak_memory_of_the_worst_json_body_is_bounded(deploy):
    a = deploy.scripted_unit("a", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}})
    pid = daemon.proc.pid
    body = adversarial(16 * MiB)
    assert len(body) == 16 * MiB
    async with aiohttp.ClientSession() as http:
        url = daemon.url + "/v1/chat/completions"
        status, reply, _ = await post_json(http, url, body + b" ")
        assert status == 413 and "max_json_bytes" in reply["error"]["message"], reply

        reset_peak(pid)
        before = peak_kb(pid)
        status, reply, _ = await post_json(http, url, body)
        assert status == 400 and reply["error"]["code"] == "missing_model", reply
        one = peak_kb(pid) - before

        reset_peak(pid)
        before = peak_kb(pid)
        answers = await asyncio.gather(*(post_json(http, url, body) for _ in range(3 * LARGE_AT_ONCE)))
        assert [s for s, _, _ in answers] == [400] * (3 * LARGE_AT_ONCE)
        many = peak_kb(pid) - before
    sys.stderr.write(f"\npeak RSS growth: one 16 MiB [{{}},…] body {one / 1024:.0f} MiB; "
                     f"{3 * LARGE_AT_ONCE} at once {many / 1024:.0f} MiB\n")
    assert one < 1024 * 1024, one  # kB: ~25 bytes of objects per byte of such JSON, not unbounded
    assert many < LARGE_AT_ONCE * one + 256 * 1024, (one, many)  # no more than LARGE_AT_ONCE at once
