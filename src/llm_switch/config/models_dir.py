"""`models_dir:` — every GGUF file in a folder is a model, named by its file stem, the way
llama.cpp's router treats `--models-dir` (issue 22, item 7).

    models_dir: ~/models
    models_defaults:            # all optional
      ctx: 8192                 # llama-server -c (default: the file's own)
      args: [-ngl, "99"]        # more llama-server arguments
      memory: auto              # or a size; under memory_budget, auto is the default
      llama_server: ~/llama.cpp/build/bin/llama-server   # default: llama-server.env, then PATH
      port: 3104                # the first port under a memory_budget (default: backend's + 100)

Each runs as a transient unit (as `cmd:` models do) bound to 127.0.0.1 at log verbosity 4. A
model in `models:` with the same name wins. The folder is read again at each reload. Searched
recursively; `mmproj-*` files and the second and later parts of split models are skipped; names
that collide and files that are not GGUF get one warning each.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from . import schema
from . import values as v

GGUF_MAGIC = b"GGUF"
_SPLIT = re.compile(r"-0*(\d+)-of-\d+$")
_KEYS = schema.names(schema.DIR_DEFAULTS)


def scan(directory: str) -> tuple[dict[str, Path], list[str]]:
    """{name: file} of the GGUF files under directory, and a warning per file left out."""
    found: dict[str, Path] = {}
    warnings: list[str] = []
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file() or path.suffix.lower() != ".gguf" or path.name.lower().startswith("mmproj"):
            continue
        stem = path.stem
        if (m := _SPLIT.search(stem)) and int(m[1]) != 1:
            continue  # llama-server loads the later parts from the first
        name = _SPLIT.sub("", stem)
        if not _is_gguf(path):
            warnings.append(f"models_dir: {path} is not a GGUF file (no GGUF magic); left out")
        elif name in found:
            warnings.append(f"models_dir: {path} has the name {name!r} of {found[name]}; left out (rename it)")
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*", name):
            warnings.append(f"models_dir: {path}: {name!r} is not a model name (a letter or digit first, no "
                            "spaces); left out (rename it)")
        else:
            found[name] = path
    return found, warnings


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def defaults(raw: Any, backend_url: str) -> dict[str, Any]:
    """models_defaults, checked; with the llama-server to run and its library path."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"models_defaults: must be a mapping of {', '.join(sorted(_KEYS))}")
    v.reject_unknown(raw, "models_defaults.", _KEYS)
    args = raw.get("args", [])
    if isinstance(args, str):
        args = args.split()
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise ConfigError("models_defaults.args: must be a list of llama-server arguments")
    binary, libs = _llama_server(raw.get("llama_server"))
    port = raw.get("port", (urlsplit(backend_url).port or 80) + 100)
    if not isinstance(port, int) or not 0 < port < 65000:
        raise ConfigError(f"models_defaults.port: must be a port number (got {port!r})")
    return {"ctx": v.positive_int(raw["ctx"], "models_defaults.ctx") if "ctx" in raw else None,
            "args": [str(a) for a in args], "memory": raw.get("memory"), "binary": binary, "libs": libs,
            "port": port}


def _llama_server(given: Any) -> tuple[str, str | None]:
    """models_defaults.llama_server, else llama-server.env's LLAMA_SERVER (what setup.sh writes for
    the model units), else llama-server on PATH."""
    env_file = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "llm-switch" / "llama-server.env"
    values: dict[str, str] = {}
    if env_file.is_file():
        for line in env_file.read_text(encoding="utf-8", errors="replace").splitlines():
            key, eq, value = line.partition("=")
            if eq and not key.lstrip().startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    binary = os.path.expanduser(given) if isinstance(given, str) else values.get("LLAMA_SERVER") \
        or shutil.which("llama-server")
    if not binary or not os.path.isabs(binary):
        raise ConfigError("models_dir: no llama-server found (not in llama-server.env nor on PATH); set "
                          "models_defaults.llama_server to its absolute path")
    return binary, values.get("LD_LIBRARY_PATH") if not isinstance(given, str) else None


def argv(name: str, path: Path, port: int, d: dict[str, Any]) -> tuple[str, ...]:
    """The transient unit's command line: env for the variables, then llama-server."""
    env = ["LLAMA_ARG_LOG_VERBOSITY=4"] + ([f"LD_LIBRARY_PATH={d['libs']}"] if d["libs"] else [])
    ctx = ["--ctx-size", str(d["ctx"])] if d["ctx"] else []
    return ("/usr/bin/env", *env, d["binary"], "--host", "127.0.0.1", "--port", str(port), "--model", str(path),
            "--alias", name, *ctx, *d["args"])
