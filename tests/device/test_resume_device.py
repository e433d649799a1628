"""Resume re-initialisation on a real (uhid) device: a private dbus-daemon, logind's
PrepareForSleep(false) from the bus name org.freedesktop.login1, and the wake-up device of
config/50-1209__a002-wakeup-reinit.toml receives its output and feature reports again."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hidbpfd.replay.live import LiveSession
from hidbpfd.replay.recording import load as load_rec
from tests.daemon.test_resume_host import CONF, emit_prepare_for_sleep
from tests.device.conftest import run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="no dbus-daemon"),
]


def test_resume_reinit_on_uhid_device(tmp_path: Path, uhid_available: None) -> None:
    sock = tmp_path / "bus.sock"
    (tmp_path / "bus.conf").write_text(CONF.format(path=sock))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={tmp_path / 'bus.conf'}"])
    address = f"unix:path={sock}"

    async def body() -> None:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline, "private bus did not come up"
            await asyncio.sleep(0.01)
        async with LiveSession([ROOT / "config"], sleep_bus=address) as live:
            dev = await live.add(load_rec(ROOT / "tests/captures/wakeup-reinit.hid").devices[0])
            while live.seen(dev, "feature") != [bytes.fromhex("0501")]:  # reinit on "added"
                assert time.monotonic() < deadline + 60, "no reinit on added"
                await asyncio.sleep(0.01)
            await emit_prepare_for_sleep(address, True, as_login1=True)  # suspend: nothing
            await emit_prepare_for_sleep(address, False, as_login1=True)  # resume
            while len(live.seen(dev, "feature")) < 2:
                assert time.monotonic() < deadline + 90, "no reinit after resume"
                await asyncio.sleep(0.01)
            assert live.seen(dev, "output") == [bytes.fromhex("10ff801101")] * 2
            assert live.daemon.sleep is not None and live.daemon.sleep.resumes == 1

    try:
        run(body(), 180)
    finally:
        bus.terminate()
        bus.wait(5)
