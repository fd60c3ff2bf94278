"""The test markers (registered in pyproject.toml): a module or test marks itself ``unit`` when it
runs in-process, with no systemd, llama-server or daemon; every other test is marked ``e2e`` here.
``pytest -m unit`` runs in seconds; the default run runs both."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.e2e)
