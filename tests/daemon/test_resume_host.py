"""Resume re-initialisation through a real (private) D-Bus daemon: logind's
PrepareForSleep(false) runs the reinit policies with ``on = ["resume"]``; the same signal from
another sender is ignored."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon.harness import PEN, VEND, running, until

pytestmark = [
    pytest.mark.bpf,
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


async def emit_prepare_for_sleep(address: str, start: bool, *, as_login1: bool) -> None:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    if as_login1:
        await bus.request_name("org.freedesktop.login1")
    await bus.send(
        Message(
            message_type=MessageType.SIGNAL,
            path="/org/freedesktop/login1",
            interface="org.freedesktop.login1.Manager",
            member="PrepareForSleep",
            signature="b",
            body=[start],
        )
    )
    await asyncio.sleep(0)  # let the write go out before disconnecting
    bus.disconnect()


def test_resume_runs_reinit(tmp_path: Path) -> None:
    sock = tmp_path / "bus.sock"
    (tmp_path / "bus.conf").write_text(CONF.format(path=sock))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={tmp_path / 'bus.conf'}"])
    address = f"unix:path={sock}"

    async def body() -> None:
        await until(sock.exists, "private bus up")
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

    try:
        asyncio.run(body())
    finally:
        bus.terminate()
        bus.wait(5)
