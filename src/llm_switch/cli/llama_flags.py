"""llama-server's flags and their `LLAMA_ARG_*` variables, read from its `--help`; and a model's
extra arguments split into those variables and the rest (`LLAMA_ARGS`). Pure but for `help_text`."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

_FLAG = re.compile(r"(?:^|,\s+)(--?[A-Za-z0-9][A-Za-z0-9_-]*)")
_ENV = re.compile(r"\(env: (LLAMA_ARG_[A-Z0-9_]+)\)")
_DESCRIPTION_COLUMN = 40  # llama.cpp's common_params_print_usage pads the flags to this column


@dataclass(frozen=True)
class Flag:
    env: str
    takes_value: bool


def parse_help(text: str) -> dict[str, Flag]:
    """Every flag that has a variable, by each of its spellings (`-c`, `--ctx-size`). A `--no-X`
    spelling is left out: it would need the variable set to false, which not every build reads."""
    table: dict[str, Flag] = {}
    entries: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("-"):
            entries.append([line])
        elif entries and line.startswith(" "):
            entries[-1].append(line)
    for lines in entries:
        env = next((m.group(1) for ln in lines if (m := _ENV.search(ln))), None)
        if env is None:
            continue
        head = lines[0]
        spec = head[:_DESCRIPTION_COLUMN] if len(head) > _DESCRIPTION_COLUMN and \
            head[_DESCRIPTION_COLUMN - 1] == " " else head
        names = _FLAG.findall(spec)
        if not names:
            continue
        rest = spec[spec.rindex(names[-1]) + len(names[-1]):].strip()
        for name in names:
            if not name.startswith("--no-"):
                table[name] = Flag(env, bool(rest))
    return table


def split_args(args: list[str], flags: dict[str, Flag]) -> tuple[dict[str, str], list[str]]:
    """(`LLAMA_ARG_*` variables, the arguments left for `LLAMA_ARGS`). A flag given twice stays on
    the command line: a variable holds one value."""
    words = _words(args, flags)
    counts: dict[str, int] = {}
    for name, _ in words:
        counts[name] = counts.get(name, 0) + 1
    env: dict[str, str] = {}
    rest: list[str] = []
    for name, value in words:
        flag = flags.get(name)
        if flag is not None and counts[name] == 1:
            env[flag.env] = "true" if value is None else value
        else:
            rest += [name] if value is None else [name, value]
    return env, rest


def _words(args: list[str], flags: dict[str, Flag]) -> list[tuple[str, str | None]]:
    """(flag, value or None) pairs; `--flag=value` and `--flag value` alike."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if eq and name.startswith("-"):
            out.append((name, value))
        elif word in flags and flags[word].takes_value and i + 1 < len(args):
            out.append((word, args[i + 1]))
            i += 1
        elif word not in flags and word.startswith("-") and i + 1 < len(args) \
                and not args[i + 1].startswith("-"):
            out.append((word, args[i + 1]))  # an unknown flag with its value: kept together
            i += 1
        else:
            out.append((word, None))
        i += 1
    return out


def help_text(binary: str, env: dict[str, str], timeout: float = 60.0) -> str | None:
    """`llama-server --help`, or None when it cannot be run."""
    try:
        res = subprocess.run([binary, "--help"], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout + res.stderr if res.returncode == 0 else None
