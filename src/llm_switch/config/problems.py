"""Every problem of a config at once, each as `FILE:LINE: key.path: message` (docs/configuration.md).

Converters raise ConfigError naming the key path; `Problems` records them and lets parsing go on
with a default, and `located` finds each key path's line in the YAML text."""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

import yaml

from ..errors import ConfigError

T = TypeVar("T")
_STEP = re.compile(r"(\.[^.\[]*|\[\d+\])$")  # the last step of a key path: `.name` or `[3]`


class Problems:
    """The ConfigErrors met while parsing, in order."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, problem: str) -> None:
        self.found.append(problem)

    def get(self, convert: Callable[..., T], *args: Any, default: T) -> T:
        """convert(*args), or `default` with its problem recorded."""
        try:
            return convert(*args)
        except ConfigError as e:
            self.found.extend(e.problems)
            return default

    def raise_any(self, text: str, where: str | None) -> None:
        """One ConfigError for all; located when the text came from a file (`where`)."""
        if self.found:
            lines = located(self.found, text, where) if where else self.found
            raise ConfigError("\n".join(lines), lines)


def located(problems: list[str] | tuple[str, ...], text: str, where: str) -> list[str]:
    """Each `key.path: message` as `FILE:LINE: key.path: message` (`FILE: …` where no line is known)."""
    try:
        lines = key_lines(yaml.compose(text))
    except (yaml.YAMLError, RecursionError):
        lines = {}
    placed = [(_line_of(problem.partition(": ")[0], lines), problem) for problem in problems]
    placed.sort(key=lambda p: p[0] or 0)  # in file order; stable: a line's problems keep theirs
    return [f"{where}:{line}: {problem}" if line else f"{where}: {problem}" for line, problem in placed]


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """{key path: line} of every key and list item under node, as messages name them
    (`models.coder.unit`, `api_keys[0]`)."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            out[path] = key.start_mark.line + 1
            out.update(key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = item.start_mark.line + 1
            out.update(key_lines(item, path))
    return out


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    """The line of path, else of the nearest key above it."""
    path = path.split(" (")[0]  # `api_keys[2].key_env (NAME)`
    while path:
        if path in lines:
            return lines[path]
        shorter = _STEP.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None


def yaml_error(e: yaml.YAMLError, where: str) -> ConfigError:
    """A YAML syntax error, named by file and line rather than `<unicode string>`."""
    mark = getattr(e, "problem_mark", None)
    what = " ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p) or str(e)
    at = f"{where}:{mark.line + 1}" if mark is not None else where
    return ConfigError(f"{at}: not valid YAML: {what}")
