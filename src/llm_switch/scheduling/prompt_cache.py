"""The prompt cache across switches: before a model's unit stops, llama-server writes each slot
that holds a long enough prompt to disk; after the model is ready again, and before queued
requests are admitted, the slots are read back, so a conversation that returns is not prefilled
again.

Files: `<prompt_cache_dir>/<model>/<identity>-slot<N>-<tokens>.bin`, written and read by
llama-server itself (its `--slot-save-path` must be `<prompt_cache_dir>/<model>`). `identity`
hashes the model file's path, size and mtime (path from `/props`): a file saved from another GGUF
is never restored, and is deleted. All models' files share one budget (`prompt_cache_max`); the
least recently saved or restored go first.

Nothing here fails a switch: a save or restore that fails costs only the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..backends.llama_server import Backends
from ..config import PromptCacheSettings, format_size
from .model import ModelRuntime
from .snapshot import CacheSnapshot, Transfer

log = logging.getLogger(__name__)

FILE = re.compile(r"^(?P<identity>[0-9a-f]{16})-slot(?P<slot>\d+)-(?P<tokens>\d+)\.bin$")
_SAVING = ".saving"
_NO_SAVE_PATH = "its backend has no --slot-save-path (add --slot-save-path {folder})"  # a file llama-server is writing, renamed once its token count is known


def identity(path: str, size: int, mtime_ns: int) -> str:
    """The key of a model file's slot files: a replaced or rewritten GGUF gets another one."""
    return hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()[:16]


def file_name(ident: str, slot: int, tokens: int) -> str:
    return f"{ident}-slot{slot}-{tokens}.bin"


def cache_files(root: str | os.PathLike) -> list[tuple[Path, os.stat_result]]:
    """Every slot file under `root` (all models), with its stat."""
    out = []
    for path in Path(root).rglob("*.bin"):
        if FILE.match(path.name):
            try:
                out.append((path, path.stat()))
            except OSError:
                pass  # deleted meanwhile
    return out


def over_budget(files: list[tuple[Path, os.stat_result]], max_bytes: int) -> list[Path]:
    """The least recently used files to delete so that the rest fit `max_bytes`."""
    total = sum(st.st_size for _, st in files)
    evict = []
    for path, st in sorted(files, key=lambda f: f[1].st_mtime_ns):
        if total <= max_bytes:
            break
        evict.append(path)
        total -= st.st_size
    return evict


@dataclass
class ModelCache:
    """One model's cache state, for the snapshot and for deciding what to skip."""

    off: str | None = None  # why the cache does nothing for this model now; None: on
    broken: str | None = None  # identity whose restores came back short: off until the model file changes
    saved: Transfer | None = None
    restored: Transfer | None = None
    saves: int = 0
    restores: int = 0
    save_s: float = 0.0  # totals
    restore_s: float = 0.0
    files: int = 0  # on disk, counted after each save, restore and eviction
    bytes: int = 0


class PromptCache:
    def __init__(self, settings: Callable[[], PromptCacheSettings], backends: Backends) -> None:
        self._settings = settings  # read at each use: a reload may change them
        self._backends = backends
        self.models: dict[str, ModelCache] = {}

    def attach(self, runtime: ModelRuntime) -> None:
        runtime.after_ready.append(self.restore)
        runtime.before_stop.append(self.save)

    def folder(self, name: str) -> Path:
        return Path(self._settings().dir) / name

    def snapshot(self, name: str, enabled: bool) -> CacheSnapshot:
        """On, off (with the reason) or unknown (not started since the switch started)."""
        mc = self.models.get(name) or ModelCache(off="not checked yet")
        off = "prompt_cache: false" if not enabled else mc.off
        state = "unknown" if name not in self.models and enabled else "off" if off else "on"
        files, size = (mc.files, mc.bytes) if off is None else (0, 0)
        return CacheSnapshot(state, off, str(self.folder(name)), files, size, mc.saves, mc.restores, mc.save_s,
                             mc.restore_s, mc.saved, mc.restored)

    def _count_files(self, names: list[str] | None = None) -> None:
        """The slot files on disk of `names` (default: every model the cache has seen)."""
        for name in names if names is not None else list(self.models):
            if (mc := self.models.get(name)) is not None:
                sizes = [st.st_size for _, st in cache_files(self.folder(name))]
                mc.files, mc.bytes = len(sizes), sum(sizes)

    # -- the hooks ----------------------------------------------------------------------------

    async def restore(self, runtime: ModelRuntime) -> None:
        """after_ready: read this model file's slot files back into their slots."""
        try:
            await self._restore(runtime)
        finally:
            self._count_files([runtime.name])

    async def save(self, runtime: ModelRuntime) -> None:
        """before_stop: write each slot that holds a prompt worth keeping."""
        try:
            await self._save(runtime)
        finally:
            self._count_files([runtime.name])

    async def _restore(self, runtime: ModelRuntime) -> None:
        name, url = runtime.name, runtime.model.url
        mc = self.models.setdefault(name, ModelCache())
        found = await self._identify(runtime, mc)
        if found is None:
            return
        ident, n_slots = found
        folder = self.folder(name)
        mine: dict[int, tuple[Path, int]] = {}
        for path, _ in cache_files(folder):
            m = FILE.match(path.name)
            if m["identity"] != ident:
                _unlink(path)  # saved from another model file: never restored
                log.info("%s: deleted slot file %s: saved from another model file", name, path.name)
            elif int(m["slot"]) < n_slots:
                mine[int(m["slot"])] = (path, int(m["tokens"]))
        if not mine:  # nothing to restore: ask whether it could save (erasing an empty slot costs nothing)
            if (await self._backends.slot_action(url, 0, "erase")).unsupported:
                self._turn_off(mc, name, _NO_SAVE_PATH.format(folder=folder))
            else:
                mc.off = None
            return
        t0 = time.monotonic()
        count = tokens = size = 0
        short = []
        for slot, (path, expected) in sorted(mine.items()):
            reply = await self._backends.slot_action(url, slot, "restore", path.name)
            if reply.unsupported:
                self._turn_off(mc, name, _NO_SAVE_PATH.format(folder=folder))
                return
            if not reply.ok:
                log.warning("%s: slot %d not restored from %s: %s; file deleted", name, slot, path.name, reply.message)
                _unlink(path)
                continue
            got = int(reply.body.get("n_restored") or 0)
            if got < expected:
                short.append(f"slot {slot}: {got} of {expected} tokens")
                continue
            count, tokens, size = count + 1, tokens + got, size + int(reply.body.get("n_read") or 0)
            _touch(path)
        if short:
            mc.broken = ident
            for path, _ in cache_files(folder):
                _unlink(path)
            self._turn_off(mc, name, "llama.cpp restored less than was saved (" + "; ".join(short) + "), as it does "
                           "for SWA and hybrid/recurrent models; off until the model file changes", logging.WARNING)
            return
        mc.off = None
        if count:
            done = Transfer(count, tokens, size, time.monotonic() - t0, time.time())
            mc.restored, mc.restores, mc.restore_s = done, mc.restores + 1, mc.restore_s + done.seconds
            log.info("%s: restored %s", name, done.text())

    async def _save(self, runtime: ModelRuntime) -> None:
        name, url = runtime.name, runtime.model.url
        mc = self.models.setdefault(name, ModelCache())
        found = await self._identify(runtime, mc)
        if found is None:
            return
        ident, n_slots = found
        min_tokens = self._settings().min_tokens
        slots = await self._backends.slots(url)
        if slots is None:  # --no-slots: save them all, keep the long ones
            chosen = list(range(n_slots))
        else:  # a slot that served a task since the start tells its last prompt's length
            chosen = [int(s["id"]) for s in slots
                      if isinstance(s.get("id"), int) and int(s.get("n_prompt_tokens") or 0) >= min_tokens]
        folder = self.folder(name)
        t0 = time.monotonic()
        saved = tokens = size = 0
        for slot in chosen:
            part = f"{ident}-slot{slot}{_SAVING}"
            reply = await self._backends.slot_action(url, slot, "save", part)
            if reply.unsupported:
                self._turn_off(mc, name, _NO_SAVE_PATH.format(folder=folder))
                return
            if not reply.ok:
                log.warning("%s: slot %d not saved: %s", name, slot, reply.message)
                continue
            mc.off = None
            path = folder / part
            if not path.exists():
                self._turn_off(mc, name, f"the backend saves slots elsewhere, not in {folder}: set its "
                               f"--slot-save-path to {folder}, or prompt_cache_dir to the parent of its "
                               "--slot-save-path", logging.WARNING)
                return
            n = int(reply.body.get("n_saved") or 0)
            if n < min_tokens:
                _unlink(path)
                continue
            for old in folder.glob(f"{ident}-slot{slot}-*.bin"):
                _unlink(old)
            try:
                path.rename(folder / file_name(ident, slot, n))
            except OSError as e:
                log.warning("%s: slot %d saved but not kept: %s", name, slot, e)
                _unlink(path)
                continue
            saved, tokens, size = saved + 1, tokens + n, size + int(reply.body.get("n_written") or 0)
        if saved:
            done = Transfer(saved, tokens, size, time.monotonic() - t0, time.time())
            mc.saved, mc.saves, mc.save_s = done, mc.saves + 1, mc.save_s + done.seconds
            log.info("%s: saved %s", name, done.text())
            self.enforce_budget()

    def enforce_budget(self) -> list[Path]:
        """Delete the least recently used slot files of all models until they fit prompt_cache_max."""
        settings = self._settings()
        evicted = over_budget(cache_files(settings.dir), settings.max_bytes)
        for path in evicted:
            _unlink(path)
        if evicted:
            self._count_files()
            log.info("prompt cache: deleted %d least recently used slot file(s) to stay within prompt_cache_max %s",
                     len(evicted), format_size(settings.max_bytes))
        return evicted

    # -- helpers ------------------------------------------------------------------------------

    async def _identify(self, runtime: ModelRuntime, mc: ModelCache) -> tuple[str, int] | None:
        """(identity of the model file, number of slots), or None when the cache is off for it."""
        name, url = runtime.name, runtime.model.url
        if not runtime.model.prompt_cache:
            mc.off = "prompt_cache: false"
            return None
        props = await self._backends.props(url)
        model_path = props.get("model_path") if props else None
        if not isinstance(model_path, str) or not model_path:
            self._turn_off(mc, name, f"{url}/props does not name a model file (not a llama-server?)")
            return None
        try:
            st = os.stat(model_path)
        except OSError as e:
            self._turn_off(mc, name, f"cannot identify its model file {model_path}: {e.strerror or e}")
            return None
        ident = identity(os.path.realpath(model_path), st.st_size, st.st_mtime_ns)
        if mc.broken == ident:
            return None  # mc.off says why
        if mc.broken is not None:
            mc.broken = mc.off = None  # a new model file gets a new chance
        n_slots = props.get("total_slots")
        return ident, n_slots if isinstance(n_slots, int) and n_slots > 0 else 1

    @staticmethod
    def _turn_off(mc: ModelCache, name: str, reason: str, level: int = logging.INFO) -> None:
        """Note why the cache does nothing for a model; logged once per reason."""
        if mc.off != reason:
            log.log(level, "%s: prompt cache off: %s", name, reason)
        mc.off = reason


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("prompt cache: cannot delete %s: %s", path, e.strerror or e)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass
