"""Fixtures for the end-to-end tests: real systemd --user, real llama-server, real daemon.

- ``llama_server``  (session): (path, extra env) of a real llama-server
- ``tiny_models``   (session): {"a": Path, "b": Path}, two tiny GGUFs with different seeds
- ``user_manager``  (session): a private systemd --user (see harness.UserManager)
- ``deploy``        (function): a harness.Deployment; units, config.yaml and daemons of one
  test, all stopped and removed afterwards (its logs are printed when the test fails)

Nothing here skips: a part that cannot be found or started fails the test with the reason.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def llama_server() -> tuple[str, dict[str, str]]:
    return harness.find_llama_server()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"a": harness.make_model(d / "tiny-a.gguf", seed=1),
            "b": harness.make_model(d / "tiny-b.gguf", seed=2)}


@pytest.fixture(scope="session")
def user_manager():
    manager = harness.UserManager(journal=os.environ.get("LLMT_JOURNAL") == "1")
    try:
        yield manager
    finally:
        manager.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_report_key] = report
    return report


_report_key = pytest.StashKey()


@pytest.fixture
def deploy(request, user_manager, llama_server, tmp_path):
    """One test's units + config + daemons; cleaned up (and dumped on failure) afterwards."""
    tag = f"t{next(_counter)}"
    deployment = harness.Deployment(user_manager, tmp_path, tag, llama=llama_server)
    try:
        yield deployment
    finally:
        report = request.node.stash.get(_report_key, None)
        if report is not None and report.failed:
            try:
                sys.stderr.write("\n" + deployment.debug_dump() + "\n")
            except Exception as exc:  # noqa: BLE001
                sys.stderr.write(f"\n(debug dump failed: {exc})\n")
        deployment.close()
