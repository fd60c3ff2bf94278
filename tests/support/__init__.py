"""What the tests share (docs/testing.md says why each part looks the way it does).

- ``harness``: the real parts (a private ``systemd --user``, llama-server, tiny GGUFs, the
  daemon, units); no pytest in it, ``bench/`` imports it too.
- ``scripted_backend``: a backend that replays a script, run as a unit.
- ``fixtures``: the shared fixtures (a pytest plugin, loaded by tests/conftest.py).
- ``factories``: fixture factories, a module-scoped deployment or user manager.
- ``markers``: the ``unit`` and ``e2e`` markers.
- ``checks``, ``answers``, ``units``, ``node``, ``setup_sh``, ``cdp``, ``litellm_proxy``: helpers
  that more than one test module uses.
"""
