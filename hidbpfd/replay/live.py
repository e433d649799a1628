"""The daemon on real (uhid) devices, observed from both sides: ``replay --device uhid``, the
demo and the device tests.

A :class:`LiveSession` starts the real daemon in-process (BPF source, HID-BPF attach, in-kernel
injector, hidraw sinks, udev), creates one uhid device per device of a capture (its descriptor,
name, bus, vendor, product, phys, uniq), and records:

- what the device's **readers** see: every report read from its hidraw node. A report equal to
  the oldest report we sent that has not been accounted for yet is a ``pass``; anything else is
  an ``inject`` (reports the filter held are taken off the list when the daemon hears of them);
- what the **device** receives: ``UHID_OUTPUT`` → ``output``, ``UHID_SET_REPORT`` of a feature
  report → ``feature``.

Times are seconds since the first report was sent, like the virtual replay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hidbpfd.config.settings import Settings
from hidbpfd.daemon import Daemon
from hidbpfd.devices.descriptor import PAGE_LED, DescriptorError, ReportKind, parse
from hidbpfd.devices.hidraw import HidrawReader
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import (
    UHID_FEATURE_REPORT,
    UHID_OUTPUT,
    UHID_SET_REPORT,
    UhidEvent,
)
from hidbpfd.engine.dispatch import Outcome
from hidbpfd.replay.recording import RecordedDevice, Recording
from hidbpfd.replay.virtual import TraceLine
from hidbpfd.runtime import build_daemon


async def settle_udev(timeout_s: float = 30.0) -> None:
    """Wait until udev has handled the new devices' events (a new keyboard brings input, event
    and LED devices whose rules compete for the CPU), so that playback measures the daemon, not
    udev's start-up. A no-op where udev is not running."""
    await asyncio.to_thread(_settle, timeout_s)


def _settle(timeout_s: float) -> None:
    if not os.path.exists("/run/udev/control") or shutil.which("udevadm") is None:
        return
    subprocess.run(
        ["udevadm", "settle", f"--timeout={int(timeout_s)}"],
        check=False,
        capture_output=True,
    )


@dataclass(slots=True)
class LiveDevice:
    """One uhid device of the session and what was seen on it."""

    rec: RecordedDevice
    uhid: UhidDevice
    hidraw: str = ""
    hid_id: str = ""
    reader: HidrawReader | None = None
    unaccounted: deque[bytes] = field(default_factory=deque)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    led_ids: frozenset[int] = frozenset()
    """Output reports made only of LED usages: the kernel writes these itself (the LED class
    devices that input-leds registers for every keyboard sync their state when udev sets them
    up, at a time no one controls). They are kept apart (:attr:`LiveSession.leds`), not in the
    trace."""


def led_report_ids(descriptor: bytes) -> frozenset[int]:
    """IDs of the output reports whose every non-constant field is on the LED page (0x08); -1
    stands for the one unnumbered output report."""
    try:
        desc = parse(descriptor)
    except DescriptorError:
        return frozenset()
    if not desc.numbered:
        data = [f for f in desc.fields if f.kind is ReportKind.OUTPUT and not f.constant]
        leds = data and all(u >> 16 == PAGE_LED for f in data for u in f.usages)
        return frozenset({-1}) if leds else frozenset()
    ids = set()
    for rid in desc.report_ids(ReportKind.OUTPUT):
        data = [f for f in desc.fields_of(rid, ReportKind.OUTPUT) if not f.constant]
        if data and all(u >> 16 == PAGE_LED for f in data for u in f.usages):
            ids.add(rid)
    return frozenset(ids)


class LiveSession:
    """Async context manager: the daemon running, devices created on demand, a trace kept."""

    def __init__(
        self,
        config_paths: Sequence[str | Path],
        *,
        manage_timeout_s: float = 30.0,
        sleep_bus: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.config_paths = list(config_paths)
        self.manage_timeout_s = manage_timeout_s
        self.devices: list[LiveDevice] = []
        self.lines: list[tuple[int, str, bytes, str]] = []  # (monotonic ns, kind, data, hid id)
        self.attached: dict[str, int] = {}  # hid id -> when the daemon took it on
        self.outcomes: list[Outcome] = []
        self.t0 = 0
        self.leds: list[tuple[int, bytes, str]] = []
        """(monotonic ns, report, hid id): the kernel's own LED state reports (not traced)."""
        self.sent: list[tuple[int, int, bytes]] = []
        """(monotonic ns, capture device index, report) of every report actually sent."""
        self.daemon: Daemon = build_daemon(
            self.config_paths, observers=[self._observe], sleep_bus=sleep_bus, settings=settings
        )
        self._task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> LiveSession:
        self._task = asyncio.get_running_loop().create_task(
            self.daemon.run(), name="hidbpfd-live-daemon"
        )
        ready = asyncio.ensure_future(self.daemon.ready.wait())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises the daemon's start-up error
            raise RuntimeError("the daemon stopped during start-up")
        if ready not in done:
            raise TimeoutError("the daemon was not ready within 60 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for d in self.devices:
            for t in d.tasks:
                t.cancel()
            if d.reader is not None:
                d.reader.close()
            d.uhid.destroy()
        for d in self.devices:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*d.tasks, return_exceptions=True)
        self.daemon.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    # --- devices -----------------------------------------------------------------------------

    async def add(self, rec: RecordedDevice, **uhid_kwargs: Any) -> LiveDevice:
        """Create the uhid device for ``rec`` (``uhid_kwargs`` go to :class:`UhidDevice`), open
        its hidraw node, and wait until the daemon has taken it on (or found no policy)."""
        dev = LiveDevice(rec, UhidDevice(**uhid_kwargs), led_ids=led_report_ids(rec.descriptor))
        dev.uhid.create(
            rec.name or f"hidbpfd replay {rec.index}",
            rec.descriptor,
            rec.bus,
            rec.vendor,
            rec.product,
            phys=rec.phys,
            uniq=rec.uniq,
        )
        self.devices.append(dev)
        dev.hidraw = await dev.uhid.wait_hidraw(timeout_s=self.manage_timeout_s)
        dev.hid_id = dev.uhid.hid_name() or ""
        dev.reader = HidrawReader(dev.hidraw)
        dev.tasks.append(
            asyncio.get_running_loop().create_task(self._read(dev), name=f"live-read-{dev.hid_id}")
        )
        dev.tasks.append(
            asyncio.get_running_loop().create_task(
                self._device_side(dev), name=f"live-uhid-{dev.hid_id}"
            )
        )
        deadline = time.monotonic() + self.manage_timeout_s
        while dev.hid_id not in self.daemon.present:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon never saw {dev.hid_id} ({dev.hidraw})")
            await asyncio.sleep(0.002)
        return dev

    # --- playing -----------------------------------------------------------------------------

    async def remove(self, dev: LiveDevice) -> None:
        """Unplug ``dev`` and wait until the daemon has let it go."""
        for t in dev.tasks:
            t.cancel()
        await asyncio.gather(*dev.tasks, return_exceptions=True)
        dev.tasks.clear()
        if dev.reader is not None:
            dev.reader.close()
            dev.reader = None
        dev.uhid.destroy()
        self.devices.remove(dev)
        deadline = time.monotonic() + self.manage_timeout_s
        while dev.hid_id in self.daemon.present or dev.hid_id in self.daemon.managed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon never let go of {dev.hid_id}")
            await asyncio.sleep(0.002)

    def send(self, dev: LiveDevice, report: bytes) -> None:
        """Send one input report from ``dev`` (accounted for, so the trace can tell passed
        reports from injected ones)."""
        dev.unaccounted.append(report)
        self.sent.append((time.monotonic_ns(), dev.rec.index, report))
        dev.uhid.input(report)

    def seen(self, dev: LiveDevice, kind: str) -> list[bytes]:
        """Reports of ``kind`` observed on ``dev`` so far."""
        return [data for _, k, data, hid in self.lines if hid == dev.hid_id and k == kind]

    async def play(self, rec: Recording, *, settle_s: float) -> list[TraceLine]:
        """Create every device, send every event at its time, wait ``settle_s`` after the last
        one, and return the trace in time order."""
        by_index = {d.index: await self.add(d) for d in rec.devices}
        await settle_udev()
        events = rec.events()
        if not events:
            return []
        first = events[0][0]
        self.t0 = time.monotonic_ns()
        for t_ns, rdev, data in events:
            delay = (self.t0 + (t_ns - first) - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            d = by_index[rdev.index]
            d.unaccounted.append(data)
            self.sent.append((time.monotonic_ns(), rdev.index, data))
            d.uhid.input(data)
        await asyncio.sleep(settle_s)
        return self.trace()

    def attach_offset(self) -> int | None:
        """When the first device was taken on, relative to the first report sent (ns, <= 0)."""
        return min(self.attached.values()) - self.t0 if self.attached else None

    def as_sent(self, rec: Recording) -> Recording:
        """``rec`` with each event at the time it was really sent: the virtual replay of this is
        what the daemon should have done given the real input timing (a stalled sender under
        emulation shifts reports; the daemon's own latency is what is left)."""
        devices = [replace(d, events=[]) for d in rec.devices]
        by_index = {d.index: d for d in devices}
        for t_ns, idx, data in self.sent:
            by_index[idx].events.append((t_ns - self.t0, data))
        return Recording(rec.path, devices)

    def trace(self) -> list[TraceLine]:
        """Lines so far, by time (seconds relative to the first report sent)."""
        return [
            TraceLine(self._rel(t), kind, data.hex(), dev)
            for t, kind, data, dev in sorted(self.lines, key=lambda x: x[0])
        ]

    # --- observing ---------------------------------------------------------------------------

    def _rel(self, t_ns: int) -> float:
        return round((t_ns - self.t0) / 1e9, 6)

    @staticmethod
    def _led(dev: LiveDevice, report: bytes) -> bool:
        return (-1 in dev.led_ids) or report[0] in dev.led_ids

    def _add(self, t_ns: int, kind: str, data: bytes, dev: LiveDevice) -> None:
        self.lines.append((t_ns, kind, data, dev.hid_id))

    def _observe(self, o: Outcome) -> None:
        self.outcomes.append(o)
        if o.kind == "added":
            self.attached[o.device.key] = o.t_ns
        if o.kind != "hold":
            return
        for d in self.devices:
            if d.hid_id == o.device.key and o.data in d.unaccounted:
                d.unaccounted.remove(o.data)

    async def _read(self, dev: LiveDevice) -> None:
        assert dev.reader is not None
        async for stamp, report in dev.reader:
            if report in dev.unaccounted:
                while dev.unaccounted and dev.unaccounted[0] != report:
                    dev.unaccounted.popleft()  # held reports the daemon has not reported yet
                dev.unaccounted.popleft()
                self._add(stamp, "pass", report, dev)
            else:
                self._add(stamp, "inject", report, dev)

    async def _device_side(self, dev: LiveDevice) -> None:
        while True:
            ev: UhidEvent = await dev.uhid.next_event(timeout_s=1e9)
            if ev.type == UHID_OUTPUT and ev.data and self._led(dev, ev.data):
                self.leds.append((ev.received_ns, ev.data, dev.hid_id))
            elif ev.type == UHID_OUTPUT:
                self._add(ev.received_ns, "output", ev.data, dev)
            elif ev.type == UHID_SET_REPORT and ev.report_type == UHID_FEATURE_REPORT:
                self._add(ev.received_ns, "feature", ev.data, dev)
