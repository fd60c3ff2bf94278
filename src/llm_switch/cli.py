"""`llm-switch serve | check | status`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace

from aiohttp import web

from . import __doc__ as __package_doc__
from . import config as config_mod
from . import journal
from .app import SWITCHER, build_app, status_line
from .config import Config
from .errors import ConfigError, SwitchError

log = logging.getLogger("llm_switch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-switch", description=__package_doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the switch")
    serve_p.add_argument("--config", help="config file (default: $LLM_SWITCH_CONFIG, "
                                          "~/.config/llm-switch/config.yaml, ./config.yaml)")
    serve_p.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    serve_p.add_argument("--debug", action="store_true", help="log debug lines too")
    check_p = sub.add_parser("check", help="validate the config and ask systemd about every unit")
    check_p.add_argument("--config")
    status_p = sub.add_parser("status", help="what is running, starting or failed, and the last switches")
    status_p.add_argument("--config")
    status_p.add_argument("--url", help="the switch's base URL (default: from the config's listen)")
    args = parser.parse_args(argv)

    journal.setup_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    if args.command == "status":
        from . import status
        return status.run(args)
    try:
        config = _load(args.config, getattr(args, "listen", None))
    except ConfigError as e:
        log.error("%s", e.message)
        return 2
    if args.command == "check":
        return asyncio.run(_check(config))
    try:
        asyncio.run(_serve(config, args.config))
    except SwitchError as e:
        log.error("%s", e.message)
        return 1
    return 0


def _load(explicit: str | None, listen: str | None = None) -> Config:
    path = config_mod.find_path(explicit)
    config = config_mod.load(path)
    for warning in config.warnings:
        log.warning("%s: %s", path, warning)
    if listen:
        host, port = config_mod.parse_listen(listen, "--listen")
        config = replace(config, listen_host=host, listen_port=port)
    return config


async def _serve(config: Config, explicit_path: str | None) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=10)
    await runner.setup()  # connects to the bus and adopts running units; raises before listening
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise SwitchError(f"cannot listen on {config.listen}: {e.strerror or e}") from None
        switcher = app[SWITCHER]
        log.info("listening on http://%s/v1 — models: %s", config.listen, ", ".join(config.models))
        journal.notify("READY=1", f"STATUS={status_line(switcher)}")

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(switcher, explicit_path, config)))
        await stop.wait()
        log.info("stopping; units are left as they are")
        journal.notify("STOPPING=1")
    finally:
        await runner.cleanup()


async def _reload(switcher, explicit_path: str | None, current: Config) -> None:
    """SIGHUP: use the config file anew; a bad one is refused and the running one stays."""
    journal.notify("RELOADING=1")
    try:
        new = _load(explicit_path or current.path)
        if (new.listen, new.max_body_bytes) != (current.listen, current.max_body_bytes):
            log.warning("reload: listen and max_body_bytes take effect on restart; keeping %s and %d bytes",
                        current.listen, current.max_body_bytes)
            new = replace(new, listen_host=current.listen_host, listen_port=current.listen_port,
                          max_body_bytes=current.max_body_bytes)
        await switcher.reload(new)
    except SwitchError as e:
        log.error("reload refused, the running config stays in force: %s", e.message)
    finally:
        journal.notify("READY=1", f"STATUS={status_line(switcher)}")


async def _check(config: Config) -> int:
    """One line per problem; exit status 1 when there is any."""
    from .systemd import Systemd

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
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{config.path}: {len(config.models)} models, all units known to systemd")
    return 1 if problems else 0
