"""`llm-switch serve | check | status | load | unload | logs | litellm-config | add | remove | import`: parse arguments, load the
config, set up logging, run."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import uvloop

from .. import __doc__ as __package_doc__
from .. import config as config_mod
from ..config import Config
from ..config.keys import check_exposure
from ..errors import ConfigError, SwitchError
from ..observe.logging import setup_logging

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
    for name, what in (("load", "start a model (through the queue, as a request would) and wait until it is ready"),
                       ("unload", "stop a model after its requests finish"),
                       ("logs", "a model's log: its unit's journal lines")):
        control_p = sub.add_parser(name, help=what)
        control_p.add_argument("model")
        control_p.add_argument("--config")
        control_p.add_argument("--url", help="the switch's base URL (default: from the config's listen)")
        if name == "logs":
            control_p.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")
            control_p.add_argument("-n", "--lines", type=int, default=100, help="how many past lines (default 100)")
    litellm_p = sub.add_parser("litellm-config", help="print a LiteLLM proxy config for the models of one or "
                                                       "more switches (one per machine)")
    litellm_p.add_argument("--host", action="append", metavar="URL",
                           help="a switch's URL, e.g. http://gpu-box:3002 (repeat for more; default: this "
                                "machine's, from the config)")
    litellm_p.add_argument("--api-key", help="the key LiteLLM sends to the switches (default: none)")
    litellm_p.add_argument("--config")
    args = _parse(parser, sub, list(sys.argv[1:] if argv is None else argv))

    setup_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    if args.command == "status":
        from . import status
        return status.run(args)
    if args.command in ("load", "unload", "logs"):
        from . import control
        return control.run(args)
    if args.command in ("add", "remove", "import"):
        return _own_models(args)
    if args.command == "check":  # its own lines, every problem, no log prefix
        from . import check
        return check.run(args)
    if args.command == "litellm-config":
        from . import litellm
        return litellm.run(args)
    try:
        config = load_config(args.config, getattr(args, "listen", None))
    except ConfigError as e:
        log.error("%s", e.message)  # every problem, one a line, as `check` prints them
        return 2
    from .serve import Server
    try:
        # uvloop: a fifth less CPU per relayed request than asyncio's own loop (README, Performance)
        uvloop.run(Server(config, args.config).run())
    except SwitchError as e:
        log.error("%s", e.message)
        return 1
    return 0


def _parse(parser: argparse.ArgumentParser, sub, argv: list[str]) -> argparse.Namespace:
    """argparse, with what follows `--` kept apart: `add ... -- LLAMA-SERVER-ARGS`."""
    _own_models_commands(sub)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.llama_args = argv[cut + 1:]
    if args.llama_args and args.command != "add":
        parser.error("arguments after -- are for `llm-switch add` only")
    return args


def _own_models(args) -> int:
    from . import add, importer
    return (importer if args.command == "import" else add).run(args)


def _own_models_commands(sub) -> None:
    add_p = sub.add_parser("add", usage="llm-switch add NAME MODEL.gguf [--ctx N] [--alias A]... [--port P] "
                                        "[-- LLAMA-SERVER-ARGS...]",
                           help="add a GGUF file of your own as a model (models/NAME.env and config.yaml)",
                           description="Everything after -- goes to llama-server (as its LLAMA_ARG_* "
                                       "variable where it has one, else in LLAMA_ARGS).")
    add_p.add_argument("name", help="the model's name (letters, digits, '.', '_', '-')")
    add_p.add_argument("model", help="the .gguf file")
    add_p.add_argument("--ctx", type=int, help="context size (default: the model's own)")
    add_p.add_argument("--alias", action="append", default=[], help="another name clients may use (repeat)")
    add_p.add_argument("--port", type=int, help="the port its llama-server listens on (default: the shared "
                                                "backend port; a free one of its own when memory_budget is set)")
    add_p.add_argument("--config")
    remove_p = sub.add_parser("remove", help="undo `llm-switch add NAME` (model files you changed are kept)")
    remove_p.add_argument("name")
    remove_p.add_argument("--config")
    import_p = sub.add_parser("import", help="print an llm-switch config made from a llama-swap config.yaml "
                                             "(what cannot be carried over goes to stderr)")
    import_p.add_argument("path", help="llama-swap's config.yaml")


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
