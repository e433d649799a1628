"""Resume re-initialisation on a real (uhid) device: a private dbus-daemon, logind's
PrepareForSleep(false) from the bus name org.freedesktop.login1, and the wake-up device of
config/50-1209__a002-wakeup-reinit.toml receives its output and feature reports again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hidbpfd.replay.live import LiveSession
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.service import sleep
from tests.daemon.test_resume_host import emit_prepare_for_sleep, private_dbus
from tests.device.conftest import run
from tests.device.test_daemon_device import until
from tests.helpers import LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="no dbus-daemon"),
]


def test_resume_reinit_on_uhid_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uhid_available: None
) -> None:
    # the bus answers, maybe slowly: its 10 s subscription timeout is a failure bound here
    monkeypatch.setattr(sleep, "SUBSCRIBE_TIMEOUT_S", LIMIT_S / 2)

    async def body() -> None:
        async with LiveSession([ROOT / "config"], sleep_bus=address) as live:
            dev = await live.add(load_rec(ROOT / "tests/captures/wakeup-reinit.hid").devices[0])
            await until(
                lambda: live.seen(dev, "feature") == [bytes.fromhex("0501")], "reinit on added"
            )
            await emit_prepare_for_sleep(address, True, as_login1=True)  # suspend: nothing
            await emit_prepare_for_sleep(address, False, as_login1=True)  # resume
            await until(lambda: len(live.seen(dev, "feature")) >= 2, "reinit after resume")
            assert live.seen(dev, "output") == [bytes.fromhex("10ff801101")] * 2
            assert live.daemon.sleep is not None and live.daemon.sleep.resumes == 1

    with private_dbus(tmp_path) as (address, _):
        run(body())
