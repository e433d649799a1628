"""The daemon as a service, on this kernel: the systemd notify protocol over a real
NOTIFY_SOCKET (READY, STATUS, RELOADING + MONOTONIC_USEC, STOPPING, WATCHDOG), the watchdog
stopping when the loop is stuck, and the control socket (status, monitor, reload, and refusing
other users)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hidbpfd.service.control import request, stream
from hidbpfd.service.notify import Notifier
from tests.daemon.harness import KBD, OUT_OF_PROX, PEN, running, until
from tests.helpers import LIMIT_S

pytestmark = pytest.mark.bpf


class NotifyListener:
    """A NOTIFY_SOCKET: a datagram socket read by a thread (so it hears even when the
    daemon's loop is stuck), every message timestamped."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()

    def mark(self, text: str) -> None:
        """Queue ``text`` on the socket: it is read in order with the daemon's datagrams."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), str(self.path))

    def states(self) -> list[str]:
        return [m for _, m in self.messages]


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NotifyListener:
    path = tmp_path / "notify.sock"
    listener = NotifyListener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener  # type: ignore[misc]
    listener.close()


def test_notify_protocol(tmp_path: Path, notify: NotifyListener) -> None:
    async def body() -> None:
        async with running(tmp_path, notifier=Notifier()) as r:
            await until(lambda: any(m.startswith("READY=1") for m in notify.states()), "READY=1")
            ready = next(m for m in notify.states() if m.startswith("READY=1"))
            assert "STATUS=3 of 4 HID devices managed" in ready
            await until(lambda: "WATCHDOG=1" in notify.states(), "watchdog ping")
            r.d.reload()
            await until(
                lambda: sum(m.startswith("READY=1") for m in notify.states()) == 2,
                "READY after reload",
            )
            reloading = [m for m in notify.states() if m.startswith("RELOADING=1")]
            assert len(reloading) == 1 and "MONOTONIC_USEC=" in reloading[0]
            usec = int(reloading[0].split("MONOTONIC_USEC=")[1])
            assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000
        await until(lambda: "STOPPING=1" in notify.states(), "STOPPING=1")
        assert notify.states().index("STOPPING=1") > max(
            i for i, m in enumerate(notify.states()) if m.startswith("READY=1")
        )

    asyncio.run(body())


def test_watchdog_stops_when_the_loop_is_stuck(tmp_path: Path, notify: NotifyListener) -> None:
    async def body() -> None:
        async with running(tmp_path, notifier=Notifier()):
            await until(lambda: notify.states().count("WATCHDOG=1") >= 2, "pings")
            notify.mark("stuck")
            time.sleep(0.5)  # noqa: ASYNC251 - on purpose: the loop makes no progress for 10 ping periods
            notify.mark("unstuck")

            def since_unstuck() -> list[str]:
                states = notify.states()
                return states[states.index("unstuck") :] if "unstuck" in states else []

            await until(lambda: "WATCHDOG=1" in since_unstuck(), "pings resume")
        states = notify.states()
        during = states[states.index("stuck") : states.index("unstuck")].count("WATCHDOG=1")
        assert during == 0, f"{during} watchdog pings while the loop was stuck"

    asyncio.run(body())


def test_no_notify_socket_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    async def body() -> None:
        async with running(tmp_path, notifier=Notifier()) as r:
            assert not r.d.notifier.enabled and r.d.notifier.watchdog_pings == 0

    asyncio.run(body())


def test_control_socket_status_monitor_reload(tmp_path: Path) -> None:
    sock = str(tmp_path / "run" / "control.sock")

    async def body() -> None:
        async with running(tmp_path, socket_path=sock) as r:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            lines: list[dict[str, object]] = []

            def watch() -> None:
                for item in stream(sock):
                    lines.append(item)
                    if item.get("kind") == "inject" and item.get("device") == KBD.key:
                        return

            t = threading.Thread(target=watch, daemon=True)
            t.start()
            await until(lambda: len(r.d._subscribers) == 1, "monitor subscribed")
            r.feed(KBD, bytes.fromhex("01006800"))
            await until(lambda: not t.is_alive(), "monitor saw the injection")
            kinds = [x["kind"] for x in lines if x.get("device") == KBD.key]
            assert kinds[:2] == ["hold", "inject"], kinds
            await until(
                lambda: r.d._subscribers == [], "monitor unsubscribed after the client left"
            )

            await until(
                lambda: r.d.dispatch.slots[KBD.key].counters.injected == 2, "second injection"
            )
            st = await asyncio.to_thread(request, sock, "status", timeout=LIMIT_S)
            devs = {d["hid_id"]: d for d in st["devices"]}
            assert (
                devs[KBD.key]["counters"]["injected"] == 2
                and devs[KBD.key]["counters"]["held"] == 1
            )
            assert devs[PEN.key]["managed"] and devs[PEN.key]["policies"][0].startswith(
                "50-28bd__0905-pen-proximity.toml#0"
            )
            assert st["ring_drops"] == 0 and st["latency"]["ring_to_dispatch"]["n"] >= 1

            (r.cfg / "50-1209__a003-release-guard.toml").write_text(
                "[device]\nvendor = 1\n[[policy]]\ntype = 'nope'\n"
            )
            res = await asyncio.to_thread(request, sock, "reload", timeout=LIMIT_S)
            assert res["ok"] is False and "unknown policy type 'nope'" in res["errors"][0]
            r.feed(PEN, OUT_OF_PROX)
            await until(
                lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX],
                "still serving after a bad reload",
            )

            # the CLI forms against the same socket
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hidbpfd", "status", "--socket", sock],
                capture_output=True,
                text=True,
            )
            assert (
                out.returncode == 0 and "50-1209__a001-macro-key.toml#0 f13-is-copy" in out.stdout
            ), out.stderr
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hidbpfd", "reload", "--socket", sock],
                capture_output=True,
                text=True,
            )
            assert out.returncode == 1 and "unknown policy type" in out.stderr

    asyncio.run(body())


NOBODY_CONNECT = """
import os, socket, sys, json
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b'{"cmd": "status"}\\n')
print(s.recv(4096).decode().strip())
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_control_socket_refuses_other_users(tmp_path: Path) -> None:
    rundir = Path(tempfile.mkdtemp(prefix="hidbpfd-test-"))  # pytest's base dir is 0700
    os.chmod(rundir, 0o755)  # like /run/hidbpfd: others may traverse, the socket decides
    sock = str(rundir / "control.sock")

    async def body() -> None:
        async with running(tmp_path, socket_path=sock) as r:

            def as_nobody() -> str:
                return subprocess.run(
                    [sys.executable, "-c", NOBODY_CONNECT, sock],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()

            # first line of defence: the socket file is 0600
            assert await asyncio.to_thread(as_nobody) == "EACCES"
            # second: even with the file opened up, the peer's uid is checked
            os.chmod(sock, 0o666)
            answer = json.loads(await asyncio.to_thread(as_nobody))
            assert answer == {"error": "permission denied"}
            assert r.d.control is not None and r.d.control.refused == 1

    try:
        asyncio.run(body())
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
