"""systemd's D-Bus API on the session bus (the user manager): one method per manager call.

Jobs are awaited by listening for `JobRemoved`, subscribed before any job is sent. D-Bus errors
are translated into the switch's own errors here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from ..errors import JobFailed, StartFailed, SwitchError, SystemdUnavailable, UnitNotFound

log = logging.getLogger(__name__)

_DEST = "org.freedesktop.systemd1"
_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT = "org.freedesktop.systemd1.Unit"
_SERVICE = "org.freedesktop.systemd1.Service"
_PROPS = "org.freedesktop.DBus.Properties"
_UINT64_MAX = (1 << 64) - 1  # systemd's "not known"
_JOB_REMOVED = f"type='signal',sender='{_DEST}',interface='{_MANAGER}',member='JobRemoved',path='{_PATH}'"
_UNIT_CHANGED = (f"type='signal',sender='{_DEST}',interface='{_PROPS}',member='PropertiesChanged',"
                 f"path_namespace='{_PATH}/unit'")


class ActiveState(StrEnum):
    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"

    @property
    def running(self) -> bool:
        return self in (ActiveState.ACTIVE, ActiveState.RELOADING, ActiveState.ACTIVATING)


@dataclass(frozen=True)
class UnitCommand:
    """A service's last ExecStart line, its Environment= assignments (`KEY=value`) and the paths
    of its EnvironmentFile= files."""

    argv: tuple[str, ...]
    environment: tuple[str, ...] = ()
    environment_files: tuple[str, ...] = ()


class _BusDropped(SystemdUnavailable):
    """The connection dropped while a job was pending; its outcome is read again after reconnecting."""


class Systemd:
    """A client of the user manager. When the bus drops it reconnects at once, subscribes again and
    tells `on_reconnect` listeners; calls made meanwhile wait up to `reconnect_wait` seconds."""

    def __init__(self, job_timeout: float = 90.0, reconnect_wait: float = 15.0) -> None:
        self.job_timeout = job_timeout
        self.reconnect_wait = reconnect_wait
        self._bus: MessageBus | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._finished: dict[str, str] = {}  # results of jobs whose path we did not know yet
        self._unit_listeners: list[Callable[[str, ActiveState], None]] = []
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._watcher: asyncio.Task | None = None
        self._ever_connected = False
        self._closed = False

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._connected()

    def watch_units(self, callback: Callable[[str, ActiveState], None]) -> None:
        """Call `callback(unit, state)` whenever a unit's ActiveState changes (PropertiesChanged)."""
        self._unit_listeners.append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after the connection came back (signals missed meanwhile are lost)."""
        self._reconnect_listeners.append(callback)

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _connected(self) -> MessageBus:
        bus = self._bus
        if bus is not None and bus.connected:
            return bus
        async with self._connecting:
            if self._bus is not None and self._bus.connected:
                return self._bus
            # the first connection fails at once; after a drop, wait a while for the bus to return
            deadline = time.monotonic() + (self.reconnect_wait if self._ever_connected else 0)
            while True:
                try:
                    bus = await self._open()
                    break
                except SystemdUnavailable:
                    if self._closed or time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.1)
            self._fail_pending_jobs()
            reconnected, self._bus, self._ever_connected = self._ever_connected, bus, True
            self._watcher = asyncio.get_running_loop().create_task(self._watch(bus), name="llm-switch D-Bus watch")
            log.debug("connected to the user manager at %s", bus.unique_name)
            if reconnected:
                log.info("reconnected to the user manager")
                for callback in self._reconnect_listeners:
                    callback()
            return bus

    async def _open(self) -> MessageBus:
        try:
            bus = await MessageBus(bus_type=BusType.SESSION).connect()
        except Exception as e:  # noqa: BLE001 (address missing, socket gone, auth refused: all mean unreachable)
            raise SystemdUnavailable(
                f"cannot reach the systemd user manager over D-Bus ({e}); is DBUS_SESSION_BUS_ADDRESS set "
                "and `systemd --user` running?"
            ) from None
        bus.add_message_handler(self._on_message)
        try:
            for rule in (_JOB_REMOVED, _UNIT_CHANGED):
                await self._raw_call(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                     "AddMatch", "s", [rule])
            await self._raw_call(bus, _DEST, _PATH, _MANAGER, "Subscribe")
        except (DBusError, OSError, EOFError, SystemdUnavailable) as e:
            bus.disconnect()
            raise SystemdUnavailable(f"cannot subscribe to the user manager's signals ({e})") from None
        return bus

    async def _watch(self, bus: MessageBus) -> None:
        """Reconnect as soon as the bus drops, not on the next call: unit signals must resume."""
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()
        if self._closed or self._bus is not bus:
            return
        log.warning("D-Bus connection to the user manager lost; reconnecting")
        self._bus = None
        self._fail_pending_jobs()
        try:
            await self._connected()
        except SystemdUnavailable as e:
            log.error("%s; the next call tries again", e.message)

    def _fail_pending_jobs(self) -> None:
        for fut in self._jobs.values():
            if not fut.done():
                fut.set_exception(_BusDropped("the D-Bus connection to the user manager dropped"))
        self._jobs.clear()
        self._finished.clear()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        if msg.member == "JobRemoved" and msg.interface == _MANAGER:
            _id, job, _unit, result = msg.body
            fut = self._jobs.pop(job, None)
            if fut is None:
                self._finished[job] = result
                if len(self._finished) > 256:  # jobs nobody waits for (other clients')
                    self._finished.pop(next(iter(self._finished)))
            elif not fut.done():
                fut.set_result(result)
        elif msg.member == "PropertiesChanged" and msg.interface == _PROPS and msg.body and msg.body[0] == _UNIT:
            state = msg.body[1].get("ActiveState")
            if state is not None and state.value in ActiveState.__members__.values():
                unit = _unit_name(msg.path)
                for callback in self._unit_listeners:
                    callback(unit, ActiveState(state.value))
        return False

    async def _raw_call(self, bus: MessageBus, dest, path, iface, member, signature="", body=()) -> list:
        reply = await bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                       signature=signature, body=list(body)))
        if reply is None:
            raise SystemdUnavailable(f"no reply from systemd to {member}")
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name, reply.body[0] if reply.body else "")
        return reply.body

    async def _call(self, member: str, signature: str = "", body=(), path: str = _PATH, iface: str = _MANAGER) -> list:
        for attempt in (1, 2):
            bus = await self._connected()
            try:
                return await self._raw_call(bus, _DEST, path, iface, member, signature, body)
            except DBusError:
                raise
            except (OSError, EOFError, ConnectionError, SwitchError) as e:
                if attempt == 2:
                    raise SystemdUnavailable(f"D-Bus call {member} failed: {e}") from None
                log.warning("D-Bus connection to the user manager lost (%s); reconnecting", e)
                self._bus = None
        raise AssertionError("unreachable")

    # -- jobs ---------------------------------------------------------------------------------

    async def _job(self, unit: str, verb: str, member: str, signature: str, body: list) -> None:
        try:
            (job,) = await self._call(member, signature, body)
        except DBusError as e:
            raise _translate(unit, e) from None
        if job in self._finished:
            result = self._finished.pop(job)
        else:
            fut = self._jobs[job] = asyncio.get_running_loop().create_future()
            try:
                result = await asyncio.wait_for(fut, self.job_timeout)
            except TimeoutError:
                self._jobs.pop(job, None)
                raise JobFailed(unit, verb, f"no result after {self.job_timeout:.0f} s") from None
            except _BusDropped:
                result = await self._outcome(unit, verb)
        if result != "done":
            raise JobFailed(unit, verb, result)

    async def _outcome(self, unit: str, verb: str) -> str:
        """A job's result read from the unit's state, for a job whose JobRemoved was lost with the bus."""
        deadline = time.monotonic() + self.job_timeout
        while True:
            state = (await self.active_states([unit])).get(unit, ActiveState.INACTIVE)
            if verb == "start" and state is not ActiveState.DEACTIVATING:
                return "done" if state.running else "failed"
            if verb == "stop" and state in (ActiveState.INACTIVE, ActiveState.FAILED):
                return "done"
            if time.monotonic() >= deadline:
                return "timeout"
            await asyncio.sleep(0.05)

    async def start(self, unit: str) -> None:
        """StartUnit and wait for its job; raises UnitNotFound or JobFailed."""
        await self._job(unit, "start", "StartUnit", "ss", [unit, "replace"])

    async def stop(self, unit: str) -> None:
        """StopUnit and wait for its job (the unit's processes have exited). A unit systemd does not
        know is already stopped."""
        try:
            await self._job(unit, "stop", "StopUnit", "ss", [unit, "replace"])
        except UnitNotFound:
            pass

    async def reload(self, unit: str) -> None:
        """ReloadUnit and wait for its job (for the switch's own unit: its ExecReload sends SIGHUP)."""
        await self._job(unit, "reload", "ReloadUnit", "ss", [unit, "replace"])

    async def start_transient(self, unit: str, argv: tuple[str, ...], description: str) -> None:
        """Run argv as a transient service. Type=exec: the start job fails when the program cannot be
        executed; inactive-or-failed units are collected so the name can be used again."""
        await self.reset_failed(unit)
        props = [
            ["Description", Variant("s", description)],
            ["Type", Variant("s", "exec")],
            ["CollectMode", Variant("s", "inactive-or-failed")],
            ["ExecStart", Variant("a(sasb)", [[argv[0], list(argv), False]])],
        ]
        await self._job(unit, "start", "StartTransientUnit", "ssa(sv)a(sa(sv))", [unit, "fail", props, []])

    async def reset_failed(self, unit: str) -> None:
        try:
            await self._call("ResetFailedUnit", "s", [unit])
        except DBusError:
            pass  # not loaded or not failed: nothing to reset

    # -- state --------------------------------------------------------------------------------

    async def active_states(self, units: list[str]) -> dict[str, ActiveState]:
        """ActiveState of several units in one round trip; units systemd has not loaded are inactive."""
        (rows,) = await self._call("ListUnitsByNames", "as", [units])
        return {row[0]: ActiveState(row[3]) for row in rows}

    async def load_state(self, unit: str) -> str:
        """`loaded`, `not-found`, `bad-setting`, `error` or `masked`."""
        try:
            (path,) = await self._call("LoadUnit", "s", [unit])
        except DBusError as e:
            raise _translate(unit, e) from None
        return await self._property(path, _UNIT, "LoadState")

    async def failure(self, unit: str) -> str:
        """What systemd says about a unit that stopped: its result and exit status."""
        try:
            (path,) = await self._call("GetUnit", "s", [unit])
            state, result, code, status = await asyncio.gather(
                self._property(path, _UNIT, "ActiveState"),
                self._property(path, _SERVICE, "Result"),
                self._property(path, _SERVICE, "ExecMainCode"),
                self._property(path, _SERVICE, "ExecMainStatus"),
            )
        except DBusError:
            return "the unit is gone"
        # ExecMainCode is a CLD_* code: 1 exited, 2 killed, 3 dumped core
        how = {1: f"status {status}", 2: f"signal {status}", 3: f"signal {status}, core dumped"}.get(code, "")
        return f"{state}, result '{result}'" + (f", {how}" if how else "")

    async def memory(self, unit: str) -> tuple[int | None, int | None]:
        """(MemoryCurrent in bytes, MainPID) of a running unit; None where systemd does not know."""
        try:
            (path,) = await self._call("GetUnit", "s", [unit])
            current, pid = await asyncio.gather(self._property(path, _SERVICE, "MemoryCurrent"),
                                                self._property(path, _SERVICE, "MainPID"))
        except DBusError:
            return None, None
        return (None if current >= _UINT64_MAX else current), (pid or None)

    async def command(self, unit: str) -> UnitCommand:
        """What a unit runs, as systemd loaded it: specifiers are resolved, `$VAR` references are
        not (systemd expands them when it executes the command)."""
        try:
            (path,) = await self._call("LoadUnit", "s", [unit])
            exec_start, environment, files = await asyncio.gather(
                self._property(path, _SERVICE, "ExecStart"),
                self._property(path, _SERVICE, "Environment"),
                self._property(path, _SERVICE, "EnvironmentFiles"))
        except DBusError as e:
            raise _translate(unit, e) from None
        argv = tuple(exec_start[-1][1]) if exec_start else ()  # a(sasbttttuii): (path, argv, …) per line
        return UnitCommand(argv, tuple(environment), tuple(path for path, _optional in files))

    async def _property(self, path: str, iface: str, name: str):
        (value,) = await self._call("Get", "ss", [iface, name], path=path, iface=_PROPS)
        return value.value


def _unit_name(path: str) -> str:
    """The unit name of a unit's object path: systemd escapes each byte but [A-Za-z0-9] as _xx."""
    label = path.rsplit("/", 1)[-1]
    raw = re.sub(rb"_([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), label.encode())
    return raw.decode(errors="replace")


def _translate(unit: str, e: DBusError) -> SwitchError:
    if e.type in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"):
        return UnitNotFound(f"systemd has no unit {unit} ({e.text}); check the unit name in config.yaml "
                            "and run `systemctl --user daemon-reload` after adding unit files")
    return StartFailed(f"{unit}: systemd refused: {e.text} ({e.type})")
