"""The benchmark's uhid devices, one per engine, seen from the device side: written on uhid,
read on hidraw, each sample stamped here; and waiting for the daemon to take them on."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from hidbpfd.bench.devices.daemon_process import DaemonProcess
from hidbpfd.bench.devices.plan import DESCRIPTOR, PRODUCTS, VENDOR, BenchUnavailable

# ----------------------------------------------------------------------------- the devices


@dataclass(slots=True)
class BenchDevice:
    """One engine's uhid device, seen from the device side."""

    engine: str
    uhid: Any  # hidbpfd.devices.uhid.UhidDevice
    hid_id: str = ""
    hidraw: str = ""
    reader: Any = None  # hidbpfd.devices.hidraw.HidrawReader while latency is measured
    note: str = ""
    """Why this engine does not serve the device (its rows then have no samples)."""
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, scenario: str, metric: str, value: float) -> None:
        self.samples.setdefault((scenario, metric), []).append(value)

    def write(self, report: bytes) -> int:
        """Send a report; returns when (monotonic ns, taken just before the write)."""
        t = time.monotonic_ns()
        self.uhid.input(report)
        return t

    async def read_until(self, want: bytes, timeout_s: float) -> int | None:
        """When ``want`` is read on hidraw (others are skipped), or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                stamp, report = await self.reader.read(timeout_s=left)
            except TimeoutError:
                return None
            if report == want:
                return int(stamp)
        return None

    def open_reader(self) -> None:
        from hidbpfd.devices.hidraw import HidrawReader

        if self.reader is None:
            self.reader = HidrawReader(self.hidraw)

    def close_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


async def create_device(
    engine: str, *, product: int = 0, descriptor: bytes = DESCRIPTOR, label: str = ""
) -> BenchDevice:
    """``engine``'s uhid device (the policies' one; ``product``, ``descriptor`` and ``label``
    for another, e.g. the example programs')."""
    from hidbpfd.devices.uhid import UhidDevice
    from hidbpfd.devices.uhid_protocol import BUS_USB

    what = f"{label} {engine}" if label else engine
    dev = UhidDevice()
    dev.create(
        f"hidbpfd bench {what}",
        descriptor,
        BUS_USB,
        VENDOR,
        product or PRODUCTS[engine],
        phys=f"hidbpfd-bench/{os.getpid()}/{what.replace(' ', '-')}",
    )
    bd = BenchDevice(engine, dev)
    await dev.wait_started(timeout_s=30)
    bd.hidraw = await dev.wait_hidraw(timeout_s=30)
    bd.hid_id = dev.hid_name() or ""
    return bd


def device_status(st: dict[str, Any], hid_id: str) -> dict[str, Any]:
    return next((d for d in st.get("devices", []) if d.get("hid_id") == hid_id), {})


async def wait_managed(d: DaemonProcess, devs: dict[str, BenchDevice], timeout_s: float) -> None:
    """Until the daemon serves both devices (or has said why the kernel engine cannot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await d.status()
        done = True
        for bd in devs.values():
            entry = device_status(st, bd.hid_id)
            if bd.engine == "kernel" and entry.get("kernel_refused"):
                bd.note = f"in-kernel engine refused: {entry['kernel_refused']}"
            elif not entry.get("managed") or entry.get("engine", "userspace") != bd.engine:
                done = False
        if done:
            return
        if time.monotonic() > deadline:
            raise BenchUnavailable(
                f"the daemon did not take both devices on within {timeout_s:g} s:\n" + d.log_tail()
            )
        await asyncio.sleep(0.1)
