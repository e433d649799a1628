"""Waking a suspended guest of the systemd tier: a small QMP client (qemu's JSON monitor).

A guest that suspends to RAM (ACPI S3: ``systemctl suspend`` with ``/sys/power/mem_sleep`` at
``deep``) stays so under emulation until something wakes it. qemu reports the suspend on its
QMP socket as a ``SUSPEND`` event, and its ``system_wakeup`` command is the power button of a
sleeping machine. :class:`SuspendWaker` listens on that socket in a thread and answers every
``SUSPEND`` with ``system_wakeup`` after :data:`WAKE_AFTER_S`: measured, the guest then resumes
(logind's ``PrepareForSleep(true)``, the kernel's S3 and resume). What still stops a test from
using it: virtme-ng's output and exit-code ports (virtio-serial) lose their host side on the
resume, so the command's writes block (docs/vm.md, the systemd tier). Standard library only:
it runs on the host, before anything else of the project works.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

WAKE_AFTER_S: Final = 1.0  # a guest asleep this long; its tests see a real gap
CONNECT_TIMEOUT_S: Final = 60.0  # qemu creates the socket when it starts (vng builds first)
REPLY_TIMEOUT_S: Final = 30.0  # qemu's monitor, under a loaded host
MARKER: Final = "hidbpfd-vm: qmp"  # how the waker's lines start on stderr
SAID: Final = ("WAKEUP", "RESET")  # qemu's events said on stderr too (the guest woke, a reset)


def qmp_option(path: Path) -> str:
    """The qemu option that makes ``path`` a QMP server socket qemu does not wait for."""
    return f"-qmp unix:{path},server=on,wait=off"


class QmpError(Exception):
    """qemu answered a command with an error, or the socket broke."""


class Closed(QmpError):
    """qemu closed the socket (it ended)."""


class Qmp:
    """One QMP connection: the greeting, ``qmp_capabilities``, then commands and events."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        """Events read while waiting for a command's reply, oldest first."""
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise Closed("qemu closed the QMP socket")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value. Events meanwhile go to :attr:`events`."""
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise QmpError(f"{command}: {msg['error'].get('desc', msg['error'])}")
            elif "return" in msg:
                return msg["return"]

    def next_event(self) -> dict[str, Any]:
        """The next event (blocks; the socket's timeout applies)."""
        if self.events:
            return self.events.pop(0)
        while True:
            msg = self._read()
            if "event" in msg:
                return msg

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(path: Path, timeout_s: float, stop: threading.Event | None = None) -> Qmp | None:
    """Connect to the QMP socket at ``path`` once qemu has made it; None when ``stop`` is set
    or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(REPLY_TIMEOUT_S)
            sock.connect(os.fspath(path))
            return Qmp(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            time.sleep(0.2)
        except (OSError, QmpError, ValueError):
            sock.close()
            raise
    return None


class SuspendWaker:
    """A thread that answers each ``SUSPEND`` event of qemu with ``system_wakeup``.

    Started by :func:`hidbpfd.vm.boot.run_in_vm` in the systemd tier, before qemu starts; it
    connects once qemu has made the socket. Each suspend and wake-up is said on stderr (lines
    starting :data:`MARKER`). :meth:`stop` ends it (qemu ending ends it too).
    """

    def __init__(
        self,
        path: Path,
        *,
        wake_after_s: float = WAKE_AFTER_S,
        say: Callable[[str], None] = print,
    ) -> None:
        self.path = path
        self.wake_after_s = wake_after_s
        self.say = say
        self.stop_event = threading.Event()
        self.suspends = 0
        self.qmp: Qmp | None = None
        self.thread = threading.Thread(target=self._run, name="qmp-waker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            qmp = connect(self.path, CONNECT_TIMEOUT_S, self.stop_event)
            if qmp is None:
                if not self.stop_event.is_set():
                    self.say(f"{MARKER}: no QMP socket at {self.path}: suspended guests stay so")
                return
            self.qmp = qmp
            qmp.sock.settimeout(None)
            while not self.stop_event.is_set():
                event = qmp.next_event()
                if event.get("event") in SAID:
                    self.say(f"{MARKER}: {event['event']}")
                if event.get("event") != "SUSPEND":
                    continue
                self.suspends += 1
                self.say(f"{MARKER}: guest suspended; system_wakeup in {self.wake_after_s:g} s")
                if self.stop_event.wait(self.wake_after_s):
                    return
                qmp.sock.settimeout(REPLY_TIMEOUT_S)
                try:
                    qmp.execute("system_wakeup")
                    self.say(f"{MARKER}: system_wakeup sent")
                except QmpError as e:  # e.g. it woke by itself meanwhile
                    self.say(f"{MARKER}: {e}")
                qmp.sock.settimeout(None)
        except Closed:
            return  # qemu ended
        except (OSError, QmpError, ValueError) as e:
            if not self.stop_event.is_set():
                self.say(f"{MARKER}: the waker stopped: {e}")

    def stop(self) -> None:
        """End the thread (closes the socket); safe twice."""
        self.stop_event.set()
        if self.qmp is not None:
            with contextlib.suppress(OSError):
                self.qmp.sock.shutdown(socket.SHUT_RDWR)
        if self.thread.is_alive():
            self.thread.join(5)
        if self.qmp is not None:
            self.qmp.close()
