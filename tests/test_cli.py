"""The command line's pure parts: help on every option, `ps`/`ls` tables, and the completion
scripts, the bash one run in a real bash with a real `llm-switch` on PATH."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_switch import __version__
from llm_switch.cli import completion, listing
from llm_switch.cli import parser as parser_mod
from llm_switch.config import parse

CONFIG = """\
listen: 127.0.0.1:3002
models:
  coder:
    unit: llama-server@coder.service
    aliases: [c, code]
    memory: 6G
  embed:
    cmd: /bin/sleep infinity
    url: http://127.0.0.1:9
"""


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = parser_mod.build()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_and_argument_has_help_text():
    bare = [f"{name} {a.option_strings[-1] if a.option_strings else a.dest}"
            for name, p in _subparsers().items() for a in p._actions
            if not isinstance(a, argparse._HelpAction) and not a.help]
    assert bare == []


def test_version():
    done = subprocess.run([sys.executable, "-m", "llm_switch", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"llm-switch {__version__}")


NOW = 10_000.0


@pytest.mark.parametrize("models,expected", [
    ([], "no model is running"),
    ([{"model": "b", "state": "stopped", "since": 1.0}], "no model is running"),
    ([{"model": "coder", "state": "ready", "since": NOW - 190, "in_flight": 2, "waiting": 1,
       "memory": {"declared": 6 << 30, "measured_ram": None, "measured_vram": 5 << 30}},
      {"model": "embed", "state": "starting", "since": NOW - 3, "in_flight": 0, "waiting": 4,
       "memory": {"declared": None, "measured_ram": 512 << 20, "measured_vram": None}},
      {"model": "gone", "state": "failed", "since": NOW}],
     "NAME   STATE     MEMORY    IN FLIGHT  WAITING  FOR\n"
     "coder  ready     5G VRAM   2          1        3 min\n"
     "embed  starting  512M RAM  0          4        3 s"),
    ([{"model": "m", "state": "stopping", "since": NOW - 3 * 3600 - 120, "memory": {"declared": 1 << 30}}],
     "NAME  STATE     MEMORY       IN FLIGHT  WAITING  FOR\n"
     "m     stopping  1G declared  0          0        3 h 2 min"),
    ([{"model": "bge", "state": "ready", "since": NOW - 5, "pin": True, "memory": {"declared": 1 << 30}}],
     "NAME  STATE           MEMORY       IN FLIGHT  WAITING  FOR\n"
     "bge   ready (pinned)  1G declared  0          0        5 s"),
])
def test_ps_table(models, expected):
    assert listing.ps_table(models, NOW) == expected


def test_ls_table_and_names():
    config = parse(CONFIG)
    assert listing.ls_table(config) == (
        "NAME   ALIASES  MEMORY  UNIT\n"
        "coder  c, code  6G      llama-server@coder.service\n"
        "embed  -        -       llm-switch-embed.service (cmd)")
    assert listing.names(config) == ["coder", "c", "code", "embed"]


def _complete(tmp_path: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed), with the script sourced."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "llm-switch").exists(), f"no llm-switch in {bin_dir}: pip install -e ."
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    script = tmp_path / "llm-switch.bash"
    script.write_text(completion.bash_script(completion.commands(parser_mod.build())))
    quoted = " ".join(f"'{w}'" for w in ("llm-switch", *words))
    done = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; '
                                         '_llm_switch; printf "%s\\n" "${COMPREPLY[@]}"'],
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                               "LLM_SWITCH_CONFIG": str(config)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


@pytest.mark.parametrize("words,expected", [
    (("lo",), ["load", "logs"]),
    (("load", ""), ["coder", "c", "code", "embed"]),
    (("unload", "co"), ["coder", "code"]),
    (("status", "--j"), ["--json"]),
    (("completion", ""), ["bash", "zsh"]),
    (("ps", "--url", ""), []),
])
def test_bash_completes_commands_options_and_model_names_from_the_config(tmp_path, words, expected):
    assert shutil.which("bash"), "bash is missing"
    assert _complete(tmp_path, *words) == expected


def test_bash_completes_model_names_from_the_config_named_by_config(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("coder", "writer"))
    assert _complete(tmp_path, "load", "--config", str(other), "w") == ["writer"]


def test_zsh_script_describes_every_command_and_completes_models():
    script = completion.zsh_script(completion.commands(parser_mod.build()))
    assert script.startswith("#compdef llm-switch\n")
    for name in _subparsers():
        assert f"\n    '{name}:" in script, name
    assert "llm-switch ls --names" in script and "compdef _llm_switch llm-switch" in script
