"""`llm-switch check`: the config, and whether systemd knows every unit it names."""

from __future__ import annotations

import os
import sys

from ..config import Config
from ..errors import SwitchError
from ..units.systemd import Systemd


async def check(config: Config) -> int:
    """One line per problem; exit status 1 when there is any."""
    found = await problems(config)
    for p in found:
        print(p, file=sys.stderr)
    if not found:
        print(f"{config.path}: {len(config.models)} models, all units known to systemd")
    return 1 if found else 0


async def problems(config: Config) -> list[str]:
    """What `llm-switch check` reports: cmd programs that cannot run, units systemd cannot load."""
    problems: list[str] = []
    systemd = Systemd()
    try:
        await systemd.connect()
        for name, model in config.models.items():
            if model.cmd is not None:
                program = model.cmd[0]
                if not (os.path.isfile(program) and os.access(program, os.X_OK)):
                    problems.append(f"models.{name}.cmd: {program} is not an executable file")
                continue
            state = await systemd.load_state(model.unit)
            if state != "loaded":
                problems.append(f"models.{name}.unit: systemd cannot load {model.unit} ({state})")
    except SwitchError as e:
        problems.append(e.message)
    finally:
        await systemd.close()
    return problems
