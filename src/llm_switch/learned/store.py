"""Learned memory, kept in the state directory (`learned-memory.json`) so that it survives a
restart of the switch. An entry holds for one model name, one model file (path, size, mtime) and
one set of unit arguments; a change to either drops it (issue 22, item 3)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FILE_NAME = "learned-memory.json"


def default_path() -> Path:
    """$XDG_STATE_HOME/llm-switch/learned-memory.json (%S/llm-switch in a user unit)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "llm-switch" / FILE_NAME


def file_identity(path: str | os.PathLike) -> list[Any] | None:
    """[path, size, mtime_ns] of the model file; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


class LearnedStore:
    """name → {"file": identity, "args": [...], "devices": {device: bytes}}; written at each change."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable, starting with no learned memory (%s)", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, name: str, identity: list[Any] | None, args: list[str]) -> dict[str, int] | None:
        """The learned bytes per device, or None; an entry for another file or other arguments is dropped."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        if identity is None or entry.get("file") != identity or entry.get("args") != list(args):
            del self._entries[name]
            self._write()
            return None
        return {k: int(v) for k, v in entry.get("devices", {}).items()}

    def put(self, name: str, identity: list[Any] | None, args: list[str], devices: dict[str, int]) -> None:
        if identity is None or not devices:
            return  # nothing to key it by, or nothing learned
        self._entries[name] = {"file": identity, "args": list(args), "devices": dict(devices)}
        self._write()

    def _write(self) -> None:
        """Replace the file at once, so a crash never leaves half of it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("%s: cannot save learned memory (%s)", self.path, e)
