"""The command line's grammar: every subcommand and option, each with its help text. Shell
completion (cli/completion.py) is generated from this same parser."""

from __future__ import annotations

import argparse

from .. import __doc__ as __package_doc__
from .. import __version__

CONFIG_HELP = "config file (default: $LLM_SWITCH_CONFIG, ~/.config/llm-switch/config.yaml, ./config.yaml)"
URL_HELP = "the switch's base URL (default: from the config's listen)"
# subcommands whose MODEL argument names a configured model (completed from the config)
MODEL_ARGUMENT = ("load", "unload", "logs")


def build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-switch", description=__package_doc__)
    parser.add_argument("--version", action="version", version=f"llm-switch {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serving(sub)
    _asking(sub)
    _own_models(sub)
    _other(sub)
    return parser


def _config_option(p: argparse.ArgumentParser, url: bool = False) -> None:
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    if url:
        p.add_argument("--url", help=URL_HELP)


def _serving(sub) -> None:
    serve_p = sub.add_parser("serve", help="run the switch")
    _config_option(serve_p)
    serve_p.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    serve_p.add_argument("--debug", action="store_true", help="log debug lines too")
    check_p = sub.add_parser("check", help="validate the config and ask systemd about every unit")
    _config_option(check_p)


def _asking(sub) -> None:
    """The subcommands that ask the running switch; each reports its absence the same way."""
    status_p = sub.add_parser("status", help="what is running, starting or failed, and the last switches")
    _config_option(status_p, url=True)
    status_p.add_argument("--json", action="store_true", help="print the switch's /status answer as JSON")
    _config_option(sub.add_parser("ps", help="the running models: state, memory, requests, for how long"),
                   url=True)
    for name, what, model_help in (
            ("load", "start a model (through the queue, as a request would) and wait until it is ready",
             "the model or alias to start"),
            ("unload", "stop a model after its requests finish; with no MODEL, every running model",
             "the model or alias to stop (default: all)"),
            ("logs", "a model's log: its unit's journal lines", "the model or alias whose log to show")):
        control_p = sub.add_parser(name, help=what)
        control_p.add_argument("model", nargs="?" if name == "unload" else None, metavar="MODEL", help=model_help)
        _config_option(control_p, url=True)
        if name == "logs":
            control_p.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")
            control_p.add_argument("-n", "--lines", type=int, default=100, help="how many past lines (default 100)")
    reload_p = sub.add_parser("reload", help="make the switch read its config file again, and say whether "
                                             "it applied it or why it refused it")
    _config_option(reload_p, url=True)


def _own_models(sub) -> None:
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
    _config_option(add_p)
    remove_p = sub.add_parser("remove", help="undo `llm-switch add NAME` (model files you changed are kept)")
    remove_p.add_argument("name", help="the model `llm-switch add` added")
    _config_option(remove_p)
    import_p = sub.add_parser("import", help="print an llm-switch config made from a llama-swap config.yaml "
                                             "(what cannot be carried over goes to stderr)")
    import_p.add_argument("path", help="llama-swap's config.yaml")


def _other(sub) -> None:
    ls_p = sub.add_parser("ls", help="every configured model and alias (from the config file)")
    _config_option(ls_p)
    ls_p.add_argument("--names", action="store_true", help="only the names and aliases, one per line")
    litellm_p = sub.add_parser("litellm-config", help="print a LiteLLM proxy config for the models of one or "
                                                       "more switches (one per machine)")
    litellm_p.add_argument("--host", action="append", metavar="URL",
                           help="a switch's URL, e.g. http://gpu-box:3002 (repeat for more; default: this "
                                "machine's, from the config)")
    litellm_p.add_argument("--api-key", help="the key LiteLLM sends to the switches (default: none)")
    _config_option(litellm_p)
    completion_p = sub.add_parser("completion", help="print the shell completion script "
                                                     "(setup.sh installs it; or: source <(llm-switch completion bash))")
    completion_p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
