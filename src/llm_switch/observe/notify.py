"""sd_notify(3) without libsystemd, and the STATUS= line kept up to date from the event bus."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from ..events import EventBus, MemoryMeasured, StateChanged, SwitchDone


def notify(*fields: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def keep_status(events: EventBus, line: Callable[[], str]) -> Callable[[], None]:
    """Send `STATUS=<line()>` on every state change and switch; returns the unsubscribe function."""
    return events.subscribe((StateChanged, SwitchDone, MemoryMeasured), lambda _: notify(f"STATUS={line()}"))
