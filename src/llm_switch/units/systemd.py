"""systemd's D-Bus API on the session bus (the user manager): one method per manager call.

Jobs are awaited by listening for `JobRemoved`, subscribed before any job is sent. D-Bus errors
are translated into the switch's own errors here, at the boundary.
"""

from __future__ import annotations

import asyncio
import logging
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


class Systemd:
    """A client of the user manager; reconnects on the next call after the bus drops."""

    def __init__(self, job_timeout: float = 90.0) -> None:
        self.job_timeout = job_timeout
        self._bus: MessageBus | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._finished: dict[str, str] = {}  # results of jobs whose path we did not know yet

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._connected()

    async def close(self) -> None:
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
            try:
                bus = await MessageBus(bus_type=BusType.SESSION).connect()
            except Exception as e:  # noqa: BLE001 (address missing, socket gone, auth refused: all mean unreachable)
                raise SystemdUnavailable(
                    f"cannot reach the systemd user manager over D-Bus ({e}); is DBUS_SESSION_BUS_ADDRESS set "
                    "and `systemd --user` running?"
                ) from None
            bus.add_message_handler(self._on_message)
            await self._raw_call(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                 "AddMatch", "s", [_JOB_REMOVED])
            await self._raw_call(bus, _DEST, _PATH, _MANAGER, "Subscribe")
            self._fail_pending_jobs()
            self._bus = bus
            log.debug("connected to the user manager at %s", bus.unique_name)
            return bus

    def _fail_pending_jobs(self) -> None:
        for fut in self._jobs.values():
            if not fut.done():
                fut.set_exception(SystemdUnavailable("the D-Bus connection to the user manager dropped"))
        self._jobs.clear()
        self._finished.clear()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved" and msg.interface == _MANAGER:
            _id, job, _unit, result = msg.body
            fut = self._jobs.pop(job, None)
            if fut is None:
                self._finished[job] = result
                if len(self._finished) > 256:  # jobs nobody waits for (other clients')
                    self._finished.pop(next(iter(self._finished)))
            elif not fut.done():
                fut.set_result(result)
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
        if result != "done":
            raise JobFailed(unit, verb, result)

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

    async def _property(self, path: str, iface: str, name: str):
        (value,) = await self._call("Get", "ss", [iface, name], path=path, iface=_PROPS)
        return value.value


def _translate(unit: str, e: DBusError) -> SwitchError:
    if e.type in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"):
        return UnitNotFound(f"systemd has no unit {unit} ({e.text}); check the unit name in config.yaml "
                            "and run `systemctl --user daemon-reload` after adding unit files")
    return StartFailed(f"{unit}: systemd refused: {e.text} ({e.type})")
