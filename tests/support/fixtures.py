"""The shared fixtures (a pytest plugin: tests/conftest.py loads it).

- ``llama_server``    (session): (path, extra env) of a real llama-server
- ``tiny_models``     (session): {"a": Path, "b": Path}, two tiny GGUFs with different seeds
- ``user_manager``    (session): a private systemd --user (see harness.UserManager)
- ``journal_manager`` (module): a private systemd --user with journald beside it
- ``deploy``          (function): a harness.Deployment; units, config.yaml and daemons of one
  test, all stopped and removed afterwards (its logs are printed when the test fails)
- ``http``            (function): an aiohttp client session

Nothing here skips: a part that cannot be found or started fails the test with the reason.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import aiohttp
import pytest

from . import harness
from .factories import dump_logs, module_manager

_counter = itertools.count(1)
_report_key = pytest.StashKey()

journal_manager = module_manager(journal=True)


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
    with harness.UserManager(journal=os.environ.get("LLMT_JOURNAL") == "1") as manager:
        yield manager


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_report_key] = report
    return report


@pytest.fixture
def deploy(request, user_manager, llama_server, tmp_path):
    """One test's units + config + daemons; cleaned up (and dumped on failure) afterwards."""
    deployment = harness.Deployment(user_manager, tmp_path, f"t{next(_counter)}", llama=llama_server)
    try:
        yield deployment
    finally:
        report = request.node.stash.get(_report_key, None)
        if report is not None and report.failed:
            dump_logs(deployment)
        deployment.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
