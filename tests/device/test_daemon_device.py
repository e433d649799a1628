"""The daemon end to end on real uhid devices (VM tier): hotplug with pending work, a device
removed during a write while another keeps working, a bad reload, and 100 hotplug cycles that
leave fds and tasks where they started."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hidbpfd.replay.live import LiveSession
from hidbpfd.replay.recording import RecordedDevice
from hidbpfd.replay.recording import load as load_rec
from tests.device.conftest import open_fds, run
from tests.helpers import LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
OUT_OF_PROX = bytes.fromhex("0200000000000000")
IN_RANGE = bytes.fromhex("0220e803d0070000")
pytestmark = pytest.mark.device


def device(capture: str) -> RecordedDevice:
    return load_rec(ROOT / "tests/captures" / capture).devices[0]


def config(tmp_path: Path, *, delay_ms: int = 20) -> Path:
    cfg = tmp_path / "devices.d"
    shutil.copytree(ROOT / "config", cfg)
    pen = cfg / "50-28bd__0905-pen-proximity.toml"
    pen.write_text(pen.read_text().replace("delay_ms = 20", f"delay_ms = {delay_ms}"))
    return cfg


async def until(
    cond: Callable[[], bool], what: str, limit_s: float = LIMIT_S, live: LiveSession | None = None
) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            seen = (
                ""
                if live is None
                else "\nseen: " + repr(live.lines) + "\noutcomes: " + repr(live.outcomes[-20:])
            )
            raise AssertionError(f"timed out waiting for: {what}{seen}")
        await asyncio.sleep(0.005)


def pending(live: LiveSession, hid_id: str) -> int:
    return live.daemon.scheduler.count_where(lambda k: isinstance(k, tuple) and k[0] == hid_id)


def test_hotplug_with_pending_work(tmp_path: Path, uhid_available: None) -> None:
    async def body() -> None:
        async with LiveSession([config(tmp_path, delay_ms=3000)]) as live:
            pen = await live.add(device("pen-proximity.hid"))
            assert live.daemon.managed[pen.hid_id].attach == "hid_bpf"
            live.send(pen, OUT_OF_PROX)  # held in the kernel, re-injection pending for 3 s
            await until(lambda: pending(live, pen.hid_id) == 1, "re-injection pending")
            old_id = pen.hid_id
            await live.remove(pen)
            assert pending(live, old_id) == 0, "pending work of a removed device survived"
            again = await live.add(device("pen-proximity.hid"))  # re-add starts clean
            assert again.hid_id != old_id
            slot = live.daemon.dispatch.slots[again.hid_id]
            assert slot.counters.seen == 0 and pending(live, again.hid_id) == 0
            live.send(again, OUT_OF_PROX)
            await until(
                lambda: live.seen(again, "inject") == [OUT_OF_PROX],
                "re-injection on the new device",
                30,
            )
            assert live.seen(again, "pass") == []

    run(body(), 120)


def test_device_removed_during_a_write(
    tmp_path: Path, uhid_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)

    async def body() -> None:
        async with LiveSession([config(tmp_path)]) as live:
            pen = await live.add(device("pen-proximity.hid"))
            # a device that never answers SET_REPORT: the feature write blocks in the kernel
            stuck = await live.add(device("wakeup-reinit.hid"), set_report=lambda ev: None)
            # reinit on added: the output goes through, then the feature write blocks
            await until(lambda: live.seen(stuck, "feature") != [], "SET_REPORT reached the device")
            await live.remove(stuck)  # vanishes mid-write
            await until(
                lambda: any(
                    stuck.hid_id in r.getMessage() and "feature failed" in r.getMessage()
                    for r in caplog.records
                ),
                "one clear error line",
            )
            lines = [r.getMessage() for r in caplog.records if stuck.hid_id in r.getMessage()]
            assert (
                len(lines) == 1 and "50-1209__a002-wakeup-reinit.toml#0 restore-mode" in lines[0]
            ), lines
            # the other device is served as before
            live.send(pen, OUT_OF_PROX)
            await until(lambda: live.seen(pen, "inject") == [OUT_OF_PROX], "pen still served")

    run(body(), 120)


def test_bad_reload_keeps_serving(tmp_path: Path, uhid_available: None) -> None:
    async def body() -> None:
        cfg = config(tmp_path)
        async with LiveSession([cfg]) as live:
            pen = await live.add(device("pen-proximity.hid"))
            (cfg / "50-28bd__0905-pen-proximity.toml").write_text(
                "[device]\nvendor = 0x28bd\n[[policy]]\ntype = 'defer'\nmatch = '02 00'\ndelay_ms = -1\n"
            )
            res = live.daemon.reload()
            assert [e.key for e in res.errors] == ["policy[0].delay_ms"] and res.changed == []
            assert live.daemon.managed[pen.hid_id].attach == "hid_bpf"
            live.send(pen, IN_RANGE)
            live.send(pen, OUT_OF_PROX)
            await until(
                lambda: live.seen(pen, "inject") == [OUT_OF_PROX],
                "last good policy still deferring",
            )
            assert live.seen(pen, "pass") == [IN_RANGE]

    run(body(), 120)


def test_hotplug_cycles_leave_no_leaks(tmp_path: Path, uhid_available: None) -> None:
    cycles = int(os.environ.get("HIDBPFD_HOTPLUG_CYCLES", "100"))

    async def body() -> None:
        async with LiveSession([config(tmp_path)]) as live:

            async def cycle() -> None:
                dev = await live.add(device("macro-key.hid"))
                assert dev.hid_id in live.daemon.managed
                await live.remove(dev)
                try:
                    await until(lambda: not live.daemon._pending_close, "device closed")
                except AssertionError:
                    for t in live.daemon._pending_close:
                        t.print_stack()
                    raise

            await cycle()  # warm up: executor threads, caches
            start = (open_fds(), len(asyncio.all_tasks()), threading.active_count())
            for _ in range(cycles):
                await cycle()
            # fds, tasks and threads (a thread stuck in the kernel would show here)
            assert (open_fds(), len(asyncio.all_tasks()), threading.active_count()) == start
            assert live.daemon.managed == {} and live.daemon.by_kid == {}

    run(body(), 60 + cycles * 10)
