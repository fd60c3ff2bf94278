"""`llm-switch check`: every problem of the config, then whether systemd knows every unit it names.
Each problem is one line, `FILE:LINE: key.path: message`, with no log prefix (docs/configuration.md)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ..config import Config, find_path, load
from ..config.problems import located
from ..errors import ConfigError, SwitchError, SystemdUnavailable
from ..units.systemd import Systemd


def run(args) -> int:
    """Exit status 1 when there is any problem."""
    path = find_path(args.config)
    try:
        config = load(path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return asyncio.run(check(config))


async def check(config: Config) -> int:
    found, unreachable = await findings(config)
    try:
        text = Path(config.path).read_text(encoding="utf-8") if config.path else ""
    except OSError:
        text = ""
    for problem in located(found, text, config.path) if config.path else found:
        print(problem, file=sys.stderr)
    if found:
        return 1
    if unreachable:
        print(f"{config.path}: config OK; systemd not reachable: {unreachable}")
    else:
        print(f"{config.path}: {len(config.models)} models, all units known to systemd")
    return 0


async def problems(config: Config) -> list[str]:
    """What `llm-switch check` reports, systemd being unreachable included."""
    found, unreachable = await findings(config)
    return found + ([unreachable] if unreachable else [])


async def findings(config: Config) -> tuple[list[str], str | None]:
    """(cmd programs that cannot run and units systemd cannot load, why systemd could not be asked)."""
    found = [f"models.{name}.cmd: {model.cmd[0]} is not an executable file"
             for name, model in config.models.items()
             if model.cmd is not None and not (os.path.isfile(model.cmd[0]) and os.access(model.cmd[0], os.X_OK))]
    systemd = Systemd()
    try:
        await systemd.connect()
    except SystemdUnavailable as e:
        await systemd.close()
        return found, e.message
    try:
        for name, model in config.models.items():
            if model.cmd is None and (state := await systemd.load_state(model.unit)) != "loaded":
                found.append(f"models.{name}.unit: systemd cannot load {model.unit} ({state})")
    except SwitchError as e:
        found.append(e.message)
    finally:
        await systemd.close()
    return found, None
