"""The systemd notify protocol: READY, RELOADING, STOPPING, STATUS, and the watchdog.

Sent through systemd-python's ``systemd.daemon.notify`` when it is installed, else written to
``$NOTIFY_SOCKET`` directly (the protocol is one datagram of ``KEY=VALUE`` lines). Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon runs unchanged.

The watchdog is pinged by a callback scheduled on the daemon's own loop at half of
``$WATCHDOG_USEC``: if the loop stops making progress, the pings stop and systemd restarts us.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _raw_notify(state: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), addr)
    return True


def _default_send() -> Callable[[str], bool]:
    try:
        from systemd import daemon as sd_daemon
    except ImportError:
        return _raw_notify

    def send(state: str) -> bool:
        return bool(sd_daemon.notify(state))

    return send


class Notifier:
    """Tells systemd how the daemon is doing; owned by the daemon."""

    def __init__(self, send: Callable[[str], bool] | None = None) -> None:
        self._send = send or _default_send()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._watchdog: asyncio.TimerHandle | None = None
        self._status = ""
        self.watchdog_pings = 0

    def notify(self, state: str) -> None:
        """Send one message (no-op outside systemd); errors are logged, never raised."""
        if not self.enabled:
            return
        try:
            self._send(state)
        except OSError as e:
            log.warning("sd_notify(%r) failed: %s", state.split("\n", 1)[0], e)

    def ready(self, status: str = "") -> None:
        """READY=1 — after BPF is attached and existing devices are set up."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC, as systemd's Type=notify-reload expects."""
        self.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        """STOPPING=1 — at the start of shutdown."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """STATUS=<one line> — only sent when it changed."""
        if text != self._status:
            self._status = text
            self.notify(f"STATUS={text}")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """Ping WATCHDOG=1 from ``loop`` every half ``$WATCHDOG_USEC``; returns the period."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not self.enabled or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        period = int(usec) / 2e6

        def ping() -> None:
            self.notify("WATCHDOG=1")
            self.watchdog_pings += 1
            self._watchdog = loop.call_later(period, ping)

        ping()
        return period

    def stop_watchdog(self) -> None:
        """Stop pinging (shutdown)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
