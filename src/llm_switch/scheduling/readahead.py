"""Reading the next model's GGUF files into the page cache while a switch to it waits
(docs/design.md, "Read-ahead"): one read at a time, from a thread, cancellable.

posix_fadvise(WILLNEED) returns at once with a sliver of the file resident (docs/performance.md
has the figures), so a thread reads the files in large sequential chunks and drops the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import mmap
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, Model
from ..config.values import format_size
from ..errors import SwitchError
from ..units.systemd import Systemd, UnitCommand

log = logging.getLogger(__name__)

CHUNK = 8 << 20           # bytes per read: large enough that the disk streams
CHECK_EVERY = 256 << 20   # bytes between two looks at MemAvailable
RESIDENT_ENOUGH = 0.95    # a file this much in the page cache is not read again
_MODEL_FLAGS = ("-m", "--model")
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Outcome:
    """What one read-ahead did; `skipped` says why it read nothing (or stopped early)."""

    model: str
    files: tuple[str, ...] = ()
    size: int = 0
    read: int = 0
    seconds: float = 0.0
    skipped: str | None = None


# -- pure parts ---------------------------------------------------------------------------------


def expand(word: str, env: Mapping[str, str]) -> str:
    """`$VAR` and `${VAR}` as systemd expands them in ExecStart (unset: empty)."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), word)


def words(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """ExecStart's words as systemd runs them: a word that is just `$VAR` splits at whitespace
    into several, `${VAR}` and `$VAR` inside a word expand in place."""
    out: list[str] = []
    for word in argv:
        if (m := re.fullmatch(r"\$(\w+)", word)) is not None:
            out += env.get(m.group(1), "").split()
        else:
            out.append(expand(word, env))
    return out


def model_path(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The GGUF file a llama-server command line loads: `-m`/`--model`, else LLAMA_ARG_MODEL."""
    words_ = words(argv, env)
    for i, word in enumerate(words_):
        if word in _MODEL_FLAGS and i + 1 < len(words_):
            return words_[i + 1] or None
        if word.startswith("--model="):
            return word.partition("=")[2] or None
    return env.get("LLAMA_ARG_MODEL") or None


def split_parts(path: str) -> list[str]:
    """Every part of a split GGUF (`x-00001-of-00003.gguf` names 3 files); else the file itself."""
    directory, name = os.path.split(path)
    m = _SPLIT.match(name)
    if m is None:
        return [path]
    total = int(m.group("total"))
    return [os.path.join(directory, f"{m.group('stem')}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (quotes removed, # comments skipped)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value, posix=True)
        except ValueError:
            words = [value]
        env[key.strip()] = " ".join(words)
    return env


def mem_available(meminfo: str) -> int | None:
    """MemAvailable in bytes from /proc/meminfo's text."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def environment(command: UnitCommand, read: Callable[[str], str]) -> dict[str, str]:
    """A unit's environment: its EnvironmentFile= files, then Environment= (which wins)."""
    env: dict[str, str] = {}
    for path in command.environment_files:
        try:
            env.update(parse_environment_file(read(path)))
        except OSError:
            continue  # systemd would fail the start, or ignore a `-` file: nothing to read ahead here
    for assignment in command.environment:
        key, _, value = assignment.partition("=")
        env[key] = value
    return env


# -- the reader (runs in a thread) ------------------------------------------------------------


def _read_meminfo() -> int | None:
    return mem_available(Path("/proc/meminfo").read_text())


def resident(path: str) -> float | None:
    """The share of `path`'s pages in the page cache (mincore(2) on a read-only mapping), or None
    where it cannot be told."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 1.0
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        if libc.mincore(address, size, vec) != 0:
            return None
        return (pages - vec.raw.count(0)) / pages  # one byte a page: 1 resident, 0 not
    finally:
        libc.munmap(address, size)


def read_files(name: str, files: Sequence[str], margin: int, stop: threading.Event,
               available: Callable[[], int | None] = _read_meminfo) -> Outcome:
    """Read `files` once, sequentially, dropping the data; only while MemAvailable exceeds what is
    left to read plus `margin`, and until `stop` is set."""
    t0 = time.monotonic()
    done, buf = 0, bytearray(CHUNK)
    try:
        size = sum(os.stat(f).st_size for f in files)
        next_check = 0
        for path in files:
            with open(path, "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while not stop.is_set():
                    if done >= next_check:
                        next_check = done + CHECK_EVERY
                        if (low := _too_little(size - done, margin, available)) is not None:
                            return Outcome(name, tuple(files), size, done, time.monotonic() - t0, low)
                    if not (n := f.readinto(buf)):
                        break
                    done += n
    except OSError as e:
        return Outcome(name, tuple(files), 0, done, time.monotonic() - t0,
                       f"cannot read {e.filename}: {e.strerror}")
    skipped = "cancelled" if stop.is_set() else None
    return Outcome(name, tuple(files), size, done, time.monotonic() - t0, skipped)


def _too_little(left: int, margin: int, available: Callable[[], int | None]) -> str | None:
    """Why reading `left` more bytes would eat into the margin, or None when it would not."""
    free = available()
    if free is None or free >= left + margin:
        return None
    return f"MemAvailable {format_size(free)} < {format_size(left)} to read + readahead_margin {format_size(margin)}"


# -- the object the scheduler holds -----------------------------------------------------------


class ReadAhead:
    """One read-ahead at a time: `next(model)` starts reading that model's files and cancels any
    other; `cancel()` stops it."""

    def __init__(self, config: Callable[[], Config], systemd: Systemd) -> None:
        self._config = config
        self._systemd = systemd
        self._name: str | None = None  # the model being read or read last
        self._stop = threading.Event()
        self._task: asyncio.Task | None = None

    def next(self, model: Model) -> None:
        """Read `model`'s files ahead, unless it is off for it or it was read ahead since it last started."""
        if not model.readahead or model.name == self._name:
            return
        self.cancel()
        self._name, self._stop = model.name, threading.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(model, self._stop),
                                                            name=f"llm-switch read-ahead ({model.name})")

    def started(self, name: str) -> None:
        """`name` was started: the next switch to it reads it again (its pages may go meanwhile)."""
        if self._name == name:
            self._name = None

    def cancel(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task, self._name = None, None

    async def _run(self, model: Model, stop: threading.Event) -> None:
        try:
            command = await self._command(model)
        except SwitchError as e:
            log.info("%s: not read ahead: %s", model.name, e.message)
            return
        margin = self._config().readahead_margin
        outcome = await asyncio.to_thread(_resolve_and_read, model.name, command, margin, stop)
        if outcome.skipped is None:
            log.info("%s: read ahead %s in %.2f s (%s)", model.name, format_size(outcome.read), outcome.seconds,
                     ", ".join(outcome.files))
        else:  # a unit that names no model file (not a llama-server) is no news
            log.log(logging.INFO if outcome.files else logging.DEBUG, "%s: not read ahead (%s after %.2f s): %s",
                    model.name, format_size(outcome.read), outcome.seconds, outcome.skipped)

    async def _command(self, model: Model) -> UnitCommand:
        if model.cmd is not None:
            return UnitCommand(model.cmd)
        return await self._systemd.command(model.unit)


def _resolve_and_read(name: str, command: UnitCommand, margin: int, stop: threading.Event) -> Outcome:
    """In the thread: the unit's environment files are read here too, off the event loop."""
    env = environment(command, lambda p: Path(p).read_text(errors="replace"))
    path = model_path(command.argv, env)
    if path is None:
        return Outcome(name, skipped="no -m/--model or LLAMA_ARG_MODEL in the unit's command")
    if not os.path.isabs(path):
        return Outcome(name, (path,), skipped="the model path is relative to the unit's working directory")
    files = split_parts(path)
    with contextlib.suppress(OSError):
        if all((share := resident(f)) is not None and share >= RESIDENT_ENOUGH for f in files):
            return Outcome(name, tuple(files), skipped="already in the page cache")  # a copy would only cost CPU
    return read_files(name, files, margin, stop)
