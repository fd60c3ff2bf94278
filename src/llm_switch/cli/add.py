"""`llm-switch add NAME MODEL.gguf` and `llm-switch remove NAME`: a model of the user's own as
setup.sh would have made it (models/NAME.env + an entry in config.yaml), checked, and a running
switch reloaded. Every check runs before anything is written; a failed `llm-switch check` of the
result puts everything back."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .. import config as config_mod
from ..config import DEFAULT_BACKEND, Config
from ..errors import ConfigError, SwitchError
from ..units.systemd import ActiveState, Systemd
from . import config_text, llama_flags
from . import model_files as mf

SERVICE = "llm-switch.service"
_OWN_FLAGS = {"LLAMA_ARG_MODEL": "MODEL.gguf", "LLAMA_ARG_ALIAS": "add's --alias (config aliases) or NAME",
              "LLAMA_ARG_PORT": "add's --port", "LLAMA_ARG_HOST": "nothing (the unit binds 127.0.0.1)"}


@dataclass(frozen=True)
class Paths:
    config: Path
    models: Path  # %E/llm-switch/models: where llama-server@.service reads NAME.env
    records: Path  # what add wrote, for remove

    @classmethod
    def of(cls, explicit: str | None) -> Paths:
        conf = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "llm-switch"
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "llm-switch"
        return cls(config_mod.find_path(explicit), conf / "models", state / "added")

    def env(self, name: str) -> Path:
        return self.models / f"{name}.env"

    def record(self, name: str) -> Path:
        return self.records / f"{name}.json"


def run(args) -> int:
    paths = Paths.of(args.config)
    try:
        if args.command == "add":
            return add(args, paths)
        return remove(args.name, paths)
    except SwitchError as e:
        print(f"llm-switch {args.command}: {e.message}", file=sys.stderr)
        print("nothing was changed", file=sys.stderr)
        return 1


def add(args, paths: Paths) -> int:
    mf.check_name(args.name)
    gguf = Path(os.path.expanduser(args.model)).absolute()
    mf.check_gguf(gguf)
    config = config_mod.load(paths.config)
    text = paths.config.read_text(encoding="utf-8")
    for n in (args.name, *args.alias):
        if n in config.names:
            raise ConfigError(f"{n!r} is already taken by model {config.names[n]!r} in {paths.config}")
    if paths.env(args.name).exists():
        raise ConfigError(f"{paths.env(args.name)} already exists (a model file of yours or setup.sh's); "
                          "pick another name or remove that file")
    port, url = _port(args.port, config, text, paths)
    variables = {"LLAMA_ARG_ALIAS": args.name, "LLAMA_ARG_PORT": str(port), "LLAMA_ARG_LOG_VERBOSITY": mf.LOG_VERBOSITY}
    if args.ctx:
        variables["LLAMA_ARG_CTX_SIZE"] = str(args.ctx)
    extra_env, rest = _extra(args.llama_args, paths)
    if args.ctx and "LLAMA_ARG_CTX_SIZE" in extra_env:
        raise ConfigError("--ctx and a context size after -- both set it; give one of them")
    variables.update(extra_env)
    env = mf.env_text(args.name, gguf, variables, rest)
    spec: dict = {"unit": f"llama-server@{args.name}.service"}
    if url:
        spec["url"] = url
    if args.alias:
        spec["aliases"] = list(args.alias)
    new_text = config_text.add_model(text, args.name, spec, f"llm-switch add: models/{args.name}.env")
    _apply(paths, args.name, text, new_text, env)
    record = {"name": args.name, "env_file": str(paths.env(args.name)), "env_sha256": mf.sha256(env),
              "config": str(paths.config.absolute()), "model": str(gguf)}
    paths.records.mkdir(parents=True, exist_ok=True)
    paths.record(args.name).write_text(json.dumps(record, indent=1) + "\n")
    print(f"added {args.name}: {paths.env(args.name)} and models.{args.name} in {paths.config}"
          + (f" (on a port of its own, {port})" if url else ""))
    print(asyncio.run(_reload()))
    return 0


def _extra(args: list[str], paths: Paths) -> tuple[dict[str, str], list[str]]:
    """The arguments after `--`: as LLAMA_ARG_* variables where this llama-server has them."""
    if not args:
        return {}, []
    flags = _flags(paths)
    env, rest = llama_flags.split_args(args, flags)
    for key, use in _OWN_FLAGS.items():
        if key in env:
            raise ConfigError(f"{key} is set by add itself: use {use} instead of passing it after --")
    if not flags:
        print("note: llama-server --help could not be read, so every argument after -- goes in LLAMA_ARGS",
              file=sys.stderr)
    return env, rest


def _flags(paths: Paths) -> dict[str, llama_flags.Flag]:
    """The flag table of the llama-server that the units run (llama-server.env's LLAMA_SERVER)."""
    env = _read_env(paths.models.parent / "llama-server.env")
    binary = env.pop("LLAMA_SERVER", None) or os.environ.get("LLAMA_SERVER")
    text = llama_flags.help_text(binary, env) if binary else None
    return llama_flags.parse_help(text) if text else {}


def _read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        key, eq, value = line.partition("=")
        if eq and not key.lstrip().startswith("#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _port(asked: int | None, config: Config, text: str, paths: Paths) -> tuple[int, str | None]:
    """(LLAMA_ARG_PORT, the url config.yaml names or None for the shared `backend`)."""
    used = {urlsplit(m.url).port for m in config.models.values()} | {config.listen_port}
    for env_file in paths.models.glob("*.env"):
        if (p := _read_env(env_file).get("LLAMA_ARG_PORT", "")).isdigit():
            used.add(int(p))
    backend = (yaml.safe_load(text) or {}).get("backend", DEFAULT_BACKEND)
    shared = urlsplit(str(backend)).port or 80
    if asked is not None:
        if asked in used - {shared} or asked == config.listen_port:
            raise ConfigError(f"--port {asked} is already used by another model or by the switch")
        return asked, f"http://127.0.0.1:{asked}"
    if config.memory_budget is None:
        return shared, None  # models run one at a time: they share the backend port
    port = shared + 1
    while port in used or not _free(port):
        port += 1
    return port, f"http://127.0.0.1:{port}"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _apply(paths: Paths, name: str, old: str, new: str, env: str) -> None:
    """Write models/NAME.env and config.yaml, check the result as `llm-switch check` does; on any
    problem put both back."""
    env_path = paths.env(name)
    paths.models.mkdir(parents=True, exist_ok=True)
    with env_path.open("x", encoding="utf-8") as f:
        f.write(env)
    try:
        _write(paths.config, new)
        try:
            problems = asyncio.run(_check(config_mod.load(paths.config)))
        except ConfigError as e:
            problems = [e.message]
        if problems:
            raise ConfigError("the result fails `llm-switch check`: " + "; ".join(problems))
    except BaseException:
        _write(paths.config, old)
        env_path.unlink(missing_ok=True)
        raise


def _write(path: Path, text: str) -> None:
    """Replace a file at once (a reload never reads half of it), keeping its mode."""
    tmp = path.with_name(path.name + ".llm-switch-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)


async def _check(config: Config) -> list[str]:
    from .check import problems
    return await problems(config)


async def _reload() -> str:
    systemd = Systemd(job_timeout=30)
    try:
        await systemd.connect()
        state = (await systemd.active_states([SERVICE])).get(SERVICE, ActiveState.INACTIVE)
        if state is not ActiveState.ACTIVE:
            return f"{SERVICE} is not running ({state}): the change is used when it starts"
        await systemd.reload(SERVICE)
        return f"reloaded {SERVICE} (journalctl --user -u llm-switch says if the reload was refused)"
    except SwitchError as e:
        return f"could not reload {SERVICE}: {e.message}; run: systemctl --user reload llm-switch"
    finally:
        await systemd.close()


def remove(name: str, paths: Paths) -> int:
    record_path = paths.record(name)
    if not record_path.exists():
        raise ConfigError(f"{name!r} was not added by `llm-switch add` (no {record_path}); "
                          "remove it from config.yaml by hand")
    record = json.loads(record_path.read_text())
    config_path = Path(record.get("config") or paths.config)
    old = config_path.read_text(encoding="utf-8")
    new = config_text.remove_model(old, name) if name in (yaml.safe_load(old) or {}).get("models", {}) else old
    if new != old:
        _write(config_path, new)
        try:
            config_mod.load(config_path)
        except ConfigError as e:
            _write(config_path, old)
            raise ConfigError(f"without models.{name} the config is invalid: {e.message}") from None
        print(f"removed models.{name} from {config_path}")
    env_path = Path(record["env_file"])
    if env_path.exists():
        if mf.sha256(env_path.read_text(encoding="utf-8")) == record["env_sha256"]:
            env_path.unlink()
            print(f"removed {env_path}")
        else:
            print(f"kept {env_path}: you changed it after add wrote it (delete it yourself if you want it gone)")
    record_path.unlink()
    print(asyncio.run(_reload()))
    return 0
