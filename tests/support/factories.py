"""Fixture factories: a switch deployed once for a module's tests, a user manager per module."""

from __future__ import annotations

import sys

import pytest

from . import harness


def dump_logs(deployment: harness.Deployment) -> None:
    """Print what the deployment's units and daemons logged (for a test that failed)."""
    try:
        sys.stderr.write("\n" + deployment.debug_dump() + "\n")
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write(f"\n(debug dump failed: {exc})\n")


def module_deployment(tag: str):
    """Decorator: ``build(d)`` sets up a switch in ``d``, a fresh harness.Deployment named ``tag``,
    and returns what the tests get. It becomes a module-scoped fixture (named as the decorated
    function): its units and daemons are stopped and removed after the module's tests, and their
    logs printed when one of those tests failed."""

    def wrap(build):
        @pytest.fixture(scope="module")
        def deployed(request, user_manager, llama_server, tmp_path_factory):
            failed_before = request.session.testsfailed
            d = harness.Deployment(user_manager, tmp_path_factory.mktemp(tag), tag, llama=llama_server)
            try:
                yield build(d)
            finally:
                if request.session.testsfailed > failed_before:
                    dump_logs(d)
                d.close()

        deployed.__doc__ = build.__doc__
        return deployed

    return wrap


def module_manager(cls: type[harness.UserManager] = harness.UserManager, **options):
    """A module-scoped fixture (named as the variable it is assigned to): ``cls(**options)``, a
    private ``systemd --user``, closed after the module's tests."""

    @pytest.fixture(scope="module")
    def manager():
        with cls(**options) as um:
            yield um

    return manager
