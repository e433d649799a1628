"""Resume re-initialisation through a real (private) D-Bus daemon: logind's
PrepareForSleep(false) runs the reinit policies with ``on = ["resume"]``; the same signal from
another sender is ignored. The sleep watcher alone (no BPF needed): only login1's signals count,
and every way of not having a bus (none there, no libsystemd, a hung one, one that goes away)
is one warning and no resume re-initialisation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.service import sdbus, sleep
from hidbpfd.service.sdbus import Bus, SdBusError
from hidbpfd.service.sleep import LOGIN1, LOGIN1_PATH, MANAGER, SleepWatcher
from tests.daemon.harness import PEN, VEND, running, until
from tests.helpers import LIMIT_S

pytestmark = [
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed"),
]

CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def _emit(address: str, start: bool, as_login1: bool) -> None:
    bus = Bus.open(address)
    try:
        if as_login1:
            bus.request_name(LOGIN1)
        bus.emit_bool(LOGIN1_PATH, MANAGER, "PrepareForSleep", start)
    finally:
        bus.close(flush=True)  # the signal is written out before the connection goes


async def emit_prepare_for_sleep(address: str, start: bool, *, as_login1: bool) -> None:
    """Send PrepareForSleep(start) on the bus at ``address``, from a connection owning
    org.freedesktop.login1 or (an impostor) owning nothing; sd-bus's blocking calls run in a
    thread so the loop (and the daemon on it) keeps going."""
    await asyncio.to_thread(_emit, address, start, as_login1)


@pytest.mark.bpf
def test_resume_runs_reinit(private_bus: tuple[str, subprocess.Popen[bytes]]) -> None:
    address, _ = private_bus
    tmp_path = Path(address.removeprefix("unix:path=")).parent

    async def body() -> None:
        async with running(tmp_path, sleep_bus=address) as r:
            assert r.d.sleep is not None and r.d.sleep.bus is not None, "daemon did not subscribe"
            await until(lambda: len(r.got(VEND.key, "feature")) == 1, "reinit on added")
            await emit_prepare_for_sleep(address, False, as_login1=False)  # an impostor
            await emit_prepare_for_sleep(address, True, as_login1=True)  # going to sleep: nothing
            await emit_prepare_for_sleep(address, False, as_login1=True)  # resumed
            await until(lambda: len(r.got(VEND.key, "feature")) == 2, "reinit on resume")
            assert r.d.sleep.resumes == 1, "the impostor's signal was not ignored"
            assert r.got(VEND.key, "output") == [bytes.fromhex("10ff801101")] * 2
            assert r.got(PEN.key, "output") == []  # no resume policy there

    asyncio.run(body())


@contextlib.contextmanager
def private_dbus(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private dbus-daemon: its address and its process (to stop it early).

    Ready once it prints its address: it does so after listen(); its socket file exists from
    bind() on, and a connect() in between is refused."""
    sock = tmp_path / "bus.sock"
    (tmp_path / "bus.conf").write_text(CONF.format(path=sock))
    proc = subprocess.Popen(
        ["dbus-daemon", "--nofork", "--print-address", f"--config-file={tmp_path / 'bus.conf'}"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        up, _, _ = select.select([proc.stdout], [], [], LIMIT_S)
        assert up and proc.stdout.readline().startswith(b"unix:"), "private bus did not come up"
        yield f"unix:path={sock}", proc
    finally:
        proc.terminate()
        proc.wait(LIMIT_S)
        proc.stdout.close()


@pytest.fixture
def private_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`private_dbus`. The subscription timeout (10 s, for a hung system bus) is only a
    failure bound here: this bus answers, maybe slowly on a loaded machine."""
    monkeypatch.setattr(sleep, "SUBSCRIBE_TIMEOUT_S", LIMIT_S / 2)
    with private_dbus(tmp_path) as bus:
        yield bus


def no_bus_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "no re-initialisation after resume" in r.getMessage()
    ]


def test_watcher_counts_login1_only(private_bus: tuple[str, subprocess.Popen[bytes]]) -> None:
    address, _ = private_bus
    seen: list[str] = []

    async def body() -> None:
        w = SleepWatcher(
            lambda: seen.append("resume"), lambda: seen.append("suspend"), bus_address=address
        )
        assert await w.start()
        try:
            await emit_prepare_for_sleep(address, True, as_login1=False)  # impostors first:
            await emit_prepare_for_sleep(address, False, as_login1=False)  # delivered first
            await emit_prepare_for_sleep(address, True, as_login1=True)
            await emit_prepare_for_sleep(address, False, as_login1=True)
            await until(lambda: len(seen) >= 2, "login1's suspend and resume")
            assert seen == ["suspend", "resume"], "an impostor's signal was not ignored"
            assert w.resumes == 1
        finally:
            w.stop()
        assert w.bus is None
        w.stop()  # twice is fine
        await emit_prepare_for_sleep(address, False, as_login1=True)  # nobody listens
        await asyncio.sleep(0.05)
        assert w.resumes == 1

    asyncio.run(body())


def test_watcher_without_bus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = SleepWatcher(lambda: None, bus_address=f"unix:path={tmp_path / 'none.sock'}")
    assert asyncio.run(w.start()) is False
    assert w.bus is None
    [msg] = no_bus_warnings(caplog)
    assert msg.startswith("no system bus (sd_bus_start: No such file or directory")


def test_watcher_without_libsystemd(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SdBusError, match=re.escape("dlopen libsystemd-none.so.0")):
        sdbus.Libsystemd("libsystemd-none.so.0")

    def missing() -> sdbus.Libsystemd:
        return sdbus.Libsystemd("libsystemd-none.so.0")

    monkeypatch.setattr(sdbus, "libsystemd", missing)
    w = SleepWatcher(lambda: None, bus_address="unix:path=/nonexistent")
    assert asyncio.run(w.start()) is False
    [msg] = no_bus_warnings(caplog)
    assert "dlopen libsystemd-none.so.0" in msg


def test_watcher_hung_bus_does_not_stall_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bus that accepts the connection and never answers: start() gives up after its timeout,
    and the loop kept running meanwhile."""
    monkeypatch.setattr(sleep, "SUBSCRIBE_TIMEOUT_S", 0.3)
    path = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen()

        async def body() -> int:
            ticks = 0

            async def tick() -> None:  # counts loop iterations: thousands unless stalled
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(tick())
                w = SleepWatcher(lambda: None, bus_address=f"unix:path={path}")
                assert await w.start() is False
                t.cancel()
            return ticks

        ticks = asyncio.run(body())
    assert ticks >= 10, "the loop was stalled while connecting"
    [msg] = no_bus_warnings(caplog)
    assert "no answer to AddMatch within 0.3 s" in msg


def test_watcher_bus_lost(
    private_bus: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    address, proc = private_bus

    async def body() -> None:
        w = SleepWatcher(lambda: None, bus_address=address)
        assert await w.start()
        proc.terminate()
        await until(lambda: w.bus is None, "the lost bus closed")

    asyncio.run(body())
    [msg] = no_bus_warnings(caplog)
    assert msg.startswith("system bus lost (")
