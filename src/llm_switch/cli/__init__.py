"""`llm-switch COMMAND`: parse arguments (cli/parser.py), set up logging, run the subcommand.
Every subcommand that asks the running switch reports its absence the same way (cli/client.py)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import replace

import uvloop

from .. import config as config_mod
from ..config import Config
from ..config.keys import check_exposure
from ..errors import ConfigError, SwitchError
from ..observe.logging import setup_logging
from . import client
from . import parser as parser_mod

log = logging.getLogger("llm_switch")


def main(argv: list[str] | None = None) -> int:
    args = _parse(parser_mod.build(), list(sys.argv[1:] if argv is None else argv))
    setup_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    if args.command == "serve":
        return _serve(args)
    try:
        return _run(args)
    except client.NotRunning as e:
        return e.report()
    except client.Refused as e:
        print(f"llm-switch {args.command}: {e.message}", file=sys.stderr)
        return client.REFUSED
    except ConfigError as e:  # a --url that is no address, a config the subcommand cannot use
        print(f"llm-switch {args.command}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# subcommand → the module and function that run it, imported when used (a tab press runs `ls`)
_RUNNERS = {"check": "check:run", "status": "status:run", "ps": "listing:run_ps", "ls": "listing:run_ls", "load": "control:run",
            "unload": "control:run", "logs": "control:run", "reload": "control:run", "add": "add:run",
            "remove": "add:run", "import": "importer:run", "litellm-config": "litellm:run",
            "completion": "completion:run"}


def _run(args) -> int:
    module, function = _RUNNERS[args.command].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), function)(args)


def _serve(args) -> int:
    try:
        config = load_config(args.config, getattr(args, "listen", None))
    except ConfigError as e:
        log.error("%s", e.message)  # every problem, one a line, as `check` prints them
        return 2
    from .serve import Server
    try:
        # uvloop: a fifth less CPU per relayed request than asyncio's own loop (docs/performance.md)
        uvloop.run(Server(config, args.config).run())
    except SwitchError as e:
        log.error("%s", e.message)
        return 1
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse, with what follows `--` kept apart: `add ... -- LLAMA-SERVER-ARGS`."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.llama_args = argv[cut + 1:]
    if args.llama_args and args.command != "add":
        parser.error("arguments after -- are for `llm-switch add` only")
    return args


def load_config(explicit: str | None, listen: str | None = None) -> Config:
    path = config_mod.find_path(explicit)
    config = config_mod.load(path)
    for warning in config.warnings:
        log.warning("%s: %s", path, warning)
    if listen:
        host, port = config_mod.parse_listen(listen, "--listen")
        config = replace(config, listen_host=host, listen_port=port)
        check_exposure(config)  # --listen off loopback needs keys as the config's listen does
    return config
