"""What `llm-switch add` writes and checks, as pure functions: the model's name, its GGUF file,
its `models/NAME.env` (the form setup.sh writes its presets in) and the record `remove` reads."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import ConfigError

# a model name that is also a unit instance and a file name as it stands: no escaping anywhere
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PLAIN = re.compile(r"^[A-Za-z0-9._/:,+=@%-]*$")
GGUF_MAGIC = b"GGUF"
LOG_VERBOSITY = "4"  # the memory breakdown and the load phases are logged from 4 on (issue 22)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
                          "letter or digit (it names the unit llama-server@NAME.service and models/NAME.env)")


def check_gguf(path: Path) -> None:
    """The file exists and starts with GGUF's magic."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def quote(value: str, what: str) -> str:
    """A value as an EnvironmentFile line holds it: single quotes keep backslashes and `$` literal."""
    if "'" in value or "\n" in value:
        raise ConfigError(f"{what}: a value with a single quote or a newline cannot go into a model file "
                          f"(got {value!r})")
    return value if value and _PLAIN.match(value) else f"'{value}'"


def env_text(name: str, gguf: Path, variables: dict[str, str], rest: list[str]) -> str:
    """models/NAME.env: the GGUF, the variables, then LLAMA_ARGS for flags without one."""
    for word in rest:
        if any(c.isspace() for c in word):
            raise ConfigError(f"argument {word!r}: llama-server@.service splits LLAMA_ARGS at spaces, so an "
                              "argument with a space needs a LLAMA_ARG_* variable (this flag has none)")
    lines = [
        f"# {name}: {gguf.name}, added by `llm-switch add`.",
        f"# Read by llama-server@{name}.service. Each LLAMA_ARG_* line is the llama-server flag of that",
        "# name (`llama-server --help` shows them as \"env:\"); flags without a variable go in LLAMA_ARGS.",
        "# Yours to edit: `llm-switch remove` keeps this file once you change it. After an edit:",
        f"#   systemctl --user restart llama-server@{name}    (only needed if it is running)",
        f"LLAMA_ARG_MODEL={quote(str(gguf), 'the model file')}",
    ]
    for key, value in variables.items():
        lines.append(f"{key}={quote(value, key)}")
    if rest:
        lines.append(f"LLAMA_ARGS={quote(' '.join(rest), 'LLAMA_ARGS')}")
    return "\n".join(lines) + "\n"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
