"""The live page at /ui, in a real headless Chromium (Debian's `chromium`, driven over the
DevTools protocol by tests/support/cdp.py): opened with an API key, it shows the models, follows a switch
made by another client without a reload, lists the requests with their tokens/s, streams the
selected model's journal, and its buttons load and unload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request

import openai

from support import harness
from support.cdp import Browser
from support.units import journaled_scripted

KEY = "ui-test-key-0123456789abcdef"
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
TIMINGS = {"prompt_n": 9, "prompt_ms": 18.0, "prompt_per_second": 500.0, "predicted_n": 4, "predicted_ms": 80.0,
           "predicted_per_second": 50.0}


def answer(text: str) -> dict:
    return {"json": {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}], "usage": USAGE, "timings": TIMINGS}}


def state_is(model: str, state: str) -> str:
    return f"document.querySelector('tr[data-model=\"{model}\"] .state')?.className.includes('s-{state}')"


async def test_page_follows_a_switch_made_by_another_client(journal_manager, tmp_path, llama_server):
    d = harness.Deployment(journal_manager, tmp_path, "ui", llama=llama_server)
    try:
        a = journaled_scripted(d, "a", {"routes": {"/v1/chat/completions": answer("from a")}})
        b = journaled_scripted(d, "b", {"health": {"ok_after": 0.5},
                                        "routes": {"/v1/chat/completions": answer("from b")}})
        d.write_config({"a": {"unit": a.unit, "url": a.url, "memory": "1G"},
                        "b": {"unit": b.unit, "url": b.url, "memory": "2G"}}, api_keys=[KEY], min_loaded=0.01)
        daemon = d.start(namespace_pid=journal_manager.namespace_pid)
        client = openai.OpenAI(base_url=daemon.url + "/v1", api_key=KEY, timeout=60, max_retries=0)

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            return reply.choices[0].message.content

        async with Browser() as browser:
            await browser.goto(daemon.url + "/ui#key=" + KEY)  # a fragment: never sent to a server
            await browser.wait_for(state_is("a", "stopped"))
            assert await browser.eval("document.querySelector('#conn').textContent") == "live"
            # the key is kept for the tab, not in the address
            assert "key=" not in await browser.eval("location.href")
            assert await browser.eval(f"sessionStorage.getItem('llm-switch-key') === {json.dumps(KEY)}")

            assert await asyncio.to_thread(ask, "a") == "from a"
            await browser.wait_for(state_is("a", "ready"))
            assert await asyncio.to_thread(ask, "b") == "from b"  # a switch, made by another client
            await browser.wait_for(state_is("b", "ready") + " && " + state_is("a", "stopped"))
            await browser.wait_for("!!document.querySelector('#switches .switch[data-to=\"b\"]')")
            timeline = await browser.eval("document.querySelector('#switches').textContent")
            assert "a → b" in timeline and "ready in" in timeline, timeline
            # style and script come from files of their own, as the page's CSP allows
            assert await browser.eval("getComputedStyle(document.querySelector('header')).display") == "flex"
            assert (await browser.eval("document.querySelector('#switches .bar .load').style.width")).endswith("%")
            await browser.wait_for("document.querySelectorAll('#requests tbody tr[data-model=\"b\"]').length === 1")
            row = await browser.eval("document.querySelector('#requests tbody tr[data-model=\"b\"]').textContent")
            assert "/v1/chat/completions" in row and "200" in row and "9 / 4" in row and "50.0" in row, row
            assert "50.0 tok/s" in await browser.wait_for("document.querySelector('#tps').textContent")
            cells = await browser.eval("[...document.querySelectorAll('tr[data-model=\"b\"] td')].map(c => c.textContent)")
            assert "2.0G" in cells, cells  # declared memory
            assert any(c.endswith(" s") for c in cells), cells  # last load time

            # the selected model's journal, followed live
            await browser.eval("(() => { const s = document.querySelector('#log-model'); s.value = 'b';"
                               " s.dispatchEvent(new Event('change')); })()")
            await browser.wait_for("document.querySelector('#log').textContent.includes('zz-b starting')")
            await browser.screenshot(tmp_path / "ui.png")
            if target := os.environ.get("LLMT_UI_SCREENSHOT"):
                shutil.copy(tmp_path / "ui.png", target)

            # the buttons: unload b, load a
            await browser.eval("document.querySelector('tr[data-model=\"b\"] button.unload').click()")
            await browser.wait_for(state_is("b", "stopped"))
            await browser.eval("document.querySelector('tr[data-model=\"a\"] button.load').click()")
            await browser.wait_for(state_is("a", "ready"))
            await browser.wait_for("document.querySelector('#log').textContent.includes('zz-b starting')")
            assert not [m for m in browser.console if m.startswith("exception")], browser.console
        assert (tmp_path / "ui.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        d.close()


async def test_page_needs_the_key_for_its_data(deploy):
    """Without a key the page loads (it holds no data) but its event stream is refused; a key in
    the query is not used; a key pasted in its field is."""
    a = deploy.scripted_unit("a", {})
    daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}}, api_keys=[KEY])
    for path, kind in (("/ui", "text/html"), ("/ui/ui.js", "text/javascript"), ("/ui/ui.css", "text/css")):
        with urllib.request.urlopen(daemon.url + path, timeout=10) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith(kind)
            assert resp.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            if path == "/ui":
                page = resp.read()
                assert b"<title>llm-switch</title>" in page and b"<script>" not in page and b"<style>" not in page
    assert harness.http_get(daemon.url + "/ui/events")[0] == 401
    assert harness.http_get(daemon.url + "/logs/a")[0] == 401
    async with Browser() as browser:
        await browser.goto(daemon.url + "/ui?key=" + KEY)
        await browser.wait_for("document.querySelector('#error').textContent.includes('401')")
        assert "key=" not in await browser.eval("location.href")
        assert "not used" in await browser.eval("document.querySelector('#notice').textContent")
        assert await browser.eval("sessionStorage.getItem('llm-switch-key')") is None
        await browser.eval(f"document.querySelector('#key-input').value = {json.dumps(KEY)}")
        await browser.eval("document.querySelector('#key-form button').click()")
        await browser.wait_for(state_is("a", "stopped"))
        assert await browser.eval("document.querySelector('#conn').textContent") == "live"
        assert not [m for m in browser.console if "Content Security Policy" in m or m.startswith("exception")], \
            browser.console
