"""Hotplug churn (VM tier; issue 10, item 2): managed uhid devices created and destroyed fast —
destroyed 0-300 ms after creation, some with a held report pending — while the daemon runs.

Afterwards fds (no ``/dev/hidrawN (deleted)`` left open), threads and, roughly, RSS are back
where they started, no asyncio future's exception went unretrieved, the kernel logged no BUG
(the old detach path, a struct_ops map element delete racing the device's removal, once ended
in a NULL dereference in ``hid_bpf_unreg``), our struct_ops count is back to its start, and the
daemon still serves a fresh device.

``HIDBPFD_CHURN_CYCLES`` sets the number of cycles (default :data:`CI_CYCLES`, sized to take
well under 2 minutes under emulation; the issue's 1,000 is run by hand:
``HIDBPFD_CHURN_CYCLES=1000 hidbpfd vm -- .venv/bin/python -m pytest -s tests/device/test_churn.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.kernel import orphans
from hidbpfd.replay.live import LiveSession
from tests.device.conftest import open_fds, run
from tests.device.test_daemon_device import OUT_OF_PROX, config, device, until

pytestmark = pytest.mark.device
CI_CYCLES = 40


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def deleted_hidraw() -> list[str]:
    """Our fds still open on a hidraw node that is gone."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/hidraw") and target.endswith("(deleted)"):
            out.append(target)
    return out


def kernel_log() -> list[str]:
    """The kernel's log lines (empty where dmesg cannot be read)."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines() if out.returncode == 0 else []


async def hold_one(live: LiveSession, dev: UhidDevice) -> int:
    """Once the daemon serves ``dev``, send a report it holds; 1 if it was held (within a few
    seconds; under load the daemon may not be there yet: then 0, and the cycle goes on)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        key = dev.hid_name()
        slot = live.daemon.dispatch.slots.get(key or "")
        if slot is not None:
            dev.input(OUT_OF_PROX)
            while time.monotonic() < deadline:
                if slot.counters.held:
                    return 1
                await asyncio.sleep(0.01)
            return 0
        await asyncio.sleep(0.01)
    return 0


def test_churn_leaves_nothing_behind(
    tmp_path: Path, uhid_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    cycles = int(os.environ.get("HIDBPFD_CHURN_CYCLES", str(CI_CYCLES)))
    caplog.set_level(logging.ERROR, logger="asyncio")
    rng = random.Random(10)  # the same storm every run
    pen = device("pen-proximity.hid")

    async def body() -> None:
        struct_ops_before = len(orphans.find())
        kmsg_before = len(kernel_log())
        # a long delay: a report held at destruction is still pending then
        async with LiveSession([config(tmp_path, delay_ms=5000)]) as live:
            d = live.daemon
            # warm up: executor threads, caches
            warm = await live.add(pen)
            await live.remove(warm)
            await until(lambda: not d._pending_close, "warm-up device closed")
            start = (open_fds(), threading.active_count(), rss_kib())
            t0 = time.monotonic()
            held = 0
            for i in range(cycles):
                dev = UhidDevice()
                dev.create(
                    pen.name,
                    pen.descriptor,
                    pen.bus,
                    pen.vendor,
                    pen.product,
                    phys=f"hidbpfd-churn/{i}",
                )
                if rng.random() < 0.5:
                    held += await hold_one(live, dev)
                await asyncio.sleep(rng.uniform(0, 0.3))
                dev.destroy()
            storm_s = time.monotonic() - t0
            await until(
                lambda: not d.managed and not d.present and not d._pending_close,
                "the daemon let go of every churned device",
                60,
            )
            await until(lambda: not deleted_hidraw(), "no fd left on a removed hidraw node", 30)
            await until(lambda: open_fds() <= start[0], "fds back to their start", 30)
            await until(
                lambda: threading.active_count() <= start[1], "threads back to their start", 30
            )
            end = (open_fds(), threading.active_count(), rss_kib())
            print(
                f"churn: {cycles} cycles in {storm_s:.1f} s ({held} with a held report); "
                f"fds {start[0]} -> {end[0]}, threads {start[1]} -> {end[1]}, "
                f"RSS {start[2]} -> {end[2]} KiB"
            )
            assert end[2] < start[2] + 16 * 1024, "RSS grew by more than 16 MiB"
            assert len(orphans.find()) == struct_ops_before
            # the daemon still serves a fresh device
            fresh = await live.add(pen)
            live.send(fresh, OUT_OF_PROX)
            await until(lambda: live.seen(fresh, "inject") == [OUT_OF_PROX], "fresh device served")
        gc.collect()  # asyncio reports an unretrieved exception when the future is freed
        unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert unretrieved == [], unretrieved[0].getMessage()
        bugs = [x for x in kernel_log()[kmsg_before:] if "BUG" in x or "Oops" in x]
        assert bugs == [], bugs

    run(body(), 120 + cycles * 5)
