"""Units the tests add to a deployment beyond harness.Deployment's own."""

from __future__ import annotations

import json
import sys

from . import harness


def journaled_scripted(d: harness.Deployment, name: str, script: dict) -> harness.Backend:
    """A scripted backend whose output goes to the journal, saying `zz-NAME starting` first."""
    port = harness.free_port()
    path = d.dir / f"{name}.script.json"
    path.write_text(json.dumps({"model": name, **script}))
    command = (f'echo "zz-{name} starting on port {port}"; '
               f'exec {sys.executable} {harness.SCRIPTED_BACKEND} --port {port} --script {path}')
    return d.command_unit(name, ["/bin/sh", "-c", command], port=port, to_journal=True,
                          env={"PYTHONUNBUFFERED": "1"})
