"""A full or read-only state directory (where the prompt cache lives) costs only the cache: clear
log lines, and every request is still served and every switch still made."""

from __future__ import annotations

import re
import subprocess

import aiohttp
import pytest

from support.harness import chat_body, post_json


def mount_in_manager(user_manager, *args: str) -> None:
    """mount(8) in the user manager's mount namespace, where its units see files."""
    subprocess.run(["nsenter", "-t", str(user_manager.namespace_pid), "-m", "--", "mount", *args],
                   check=True, capture_output=True, text=True)


def umount_in_manager(user_manager, path) -> None:
    subprocess.run(["nsenter", "-t", str(user_manager.namespace_pid), "-m", "--", "umount", "-l", str(path)],
                   check=False, capture_output=True)


@pytest.mark.parametrize("how", ["full", "read-only"])
async def test_unwritable_slot_directory_costs_only_the_cache(deploy, tiny_models, user_manager, tmp_path, how):
    slots = tmp_path / "slots"
    (slots / "a").mkdir(parents=True)
    options = "size=4k" if how == "full" else "ro,size=1m"
    mount_in_manager(user_manager, "-t", "tmpfs", "-o", options, "tmpfs", str(slots / "a"))
    try:
        a = deploy.llama_unit("a", tiny_models["a"], extra_args=["--slot-save-path", str(slots / "a")])
        b = deploy.llama_unit("b", tiny_models["b"])
        daemon = deploy.up({"a": {"unit": a.unit, "url": a.url}, "b": {"unit": b.unit, "url": b.url}},
                           prompt_cache_dir=str(slots), prompt_cache_min_tokens=16)
        async with aiohttp.ClientSession() as http:
            for model in ("a", "b", "a", "b"):
                status, body, _ = await post_json(http, daemon.url + "/v1/chat/completions",
                                                  chat_body(model, "hello " * 40, max_tokens=2))
                assert status == 200, body
        assert user_manager.active_units(f"*-{deploy.tag}@*") == [b.unit]
        log = daemon.log()
        assert re.search(r"a: slot \d+ not saved: ", log), log
        assert "Traceback" not in log and "internal error" not in log
        switches = daemon.get_json("/status")["switches"]
        assert [(s["to"], s["ok"]) for s in switches] == [("a", True), ("b", True), ("a", True), ("b", True)]
    finally:
        umount_in_manager(user_manager, slots / "a")
