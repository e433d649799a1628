"""hidbpfd/vm/qmp.py against a stand-in for qemu's QMP socket (the real one woke a suspended
systemd-tier guest, measured: docs/vm.md): the greeting and capabilities handshake,
SUSPEND answered by system_wakeup after the delay, other events ignored, errors reported."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from hidbpfd.vm.qmp import SuspendWaker, qmp_option


class FakeQemu:
    """Listens at ``path`` like ``-qmp unix:PATH,server=on,wait=off``; records commands."""

    def __init__(self, path: Path, events: list[str]) -> None:
        self.path = path
        self.events = events
        self.commands: list[tuple[str, float]] = []
        self.sent_at: list[float] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        f = conn.makefile("rb")
        conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        for line in f:
            cmd = json.loads(line)["execute"]
            self.commands.append((cmd, time.monotonic()))
            if cmd == "qmp_capabilities":
                conn.sendall(b'{"return": {}}\n')
                for name in self.events:
                    self.sent_at.append(time.monotonic())
                    conn.sendall(json.dumps({"event": name, "timestamp": {}}).encode() + b"\n")
            elif cmd == "system_wakeup":
                conn.sendall(b'{"error": {"class": "GenericError", "desc": "not suspended"}}\n')
                break
        conn.close()


def test_suspend_is_answered_by_system_wakeup(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    said: list[str] = []
    waker = SuspendWaker(path, wake_after_s=0.2, say=said.append)
    waker.start()  # before qemu made its socket, as in run_in_vm
    time.sleep(0.3)
    qemu = FakeQemu(path, ["RESET", "SUSPEND"])
    waker.thread.join(10)
    waker.stop()
    names = [c for c, _ in qemu.commands]
    assert names == ["qmp_capabilities", "system_wakeup"], names
    assert qemu.commands[1][1] - qemu.sent_at[1] >= 0.2
    assert waker.suspends == 1
    # qemu's RESET is said; an error answer is said; qemu ending ends the waker quietly
    assert said == [
        "hidbpfd-vm: qmp: RESET",
        "hidbpfd-vm: qmp: guest suspended; system_wakeup in 0.2 s",
        "hidbpfd-vm: qmp: system_wakeup: not suspended",
    ], said


def test_stop_without_qemu_is_quiet(tmp_path: Path) -> None:
    said: list[str] = []
    waker = SuspendWaker(tmp_path / "none.sock", say=said.append)
    waker.start()
    time.sleep(0.3)
    waker.stop()
    assert not waker.thread.is_alive() and said == []


def test_qmp_option() -> None:
    assert qmp_option(Path("/x/q.sock")) == "-qmp unix:/x/q.sock,server=on,wait=off"
