"""The daemon harness for host tests: the real daemon, BPF source (reports fed through the
feeder program), ring buffer, timerfd and control socket; a fake udev watcher and recording
sinks, because this kernel has no HID devices."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.daemon import Daemon
from hidbpfd.devices.udev import HidDevice
from hidbpfd.model import DeviceId
from tests.helpers import LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
PEN = DeviceId(3, 0x28BD, 0x0905, "XP-Pen Deco Pen", hid_id="0003:28BD:0905.0101")
KBD = DeviceId(3, 0x1209, 0xA001, "macro keyboard", hid_id="0003:1209:A001.0102")
VEND = DeviceId(3, 0x1209, 0xA002, "wake-up device", hid_id="0003:1209:A002.0103")
OTHER = DeviceId(3, 0x0001, 0x0002, "no policy", hid_id="0003:0001:0002.0104")
OUT_OF_PROX = bytes.fromhex("0200000000000000")
IN_RANGE = bytes.fromhex("0220e803d0070000")


class FakeWatcher:
    """Stands in for HidWatcher: the test adds and removes devices."""

    instance: FakeWatcher | None = None

    def __init__(
        self,
        on_add: Callable[[HidDevice], None],
        on_remove: Callable[[HidDevice], None],
        on_change: Any,
    ) -> None:
        self.on_add, self.on_remove = on_add, on_remove
        self.initial = [PEN, KBD, VEND, OTHER]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for d in self.initial:
            self.add(d)

    def add(self, d: DeviceId) -> None:
        self.on_add(HidDevice(d, f"/dev/fake-{d.kernel_id}", f"/sys/fake/{d.hid_id}"))

    def remove(self, d: DeviceId) -> None:
        self.on_remove(HidDevice(d, f"/dev/fake-{d.kernel_id}", f"/sys/fake/{d.hid_id}"))

    def stop(self) -> None:
        pass


class Recorder:
    """Injector + report I/O of one device, recording what it was asked to do."""

    def __init__(self, log: list[tuple[str, str, bytes]], key: str) -> None:
        self.log, self.key, self.name = log, key, "recorder"
        self.features: dict[int, bytes] = {}

    def inject(self, data: bytes) -> None:
        self.log.append((self.key, "inject", data))

    def output(self, data: bytes) -> None:
        self.log.append((self.key, "output", data))

    def set_feature(self, data: bytes) -> None:
        self.features[data[0]] = data
        self.log.append((self.key, "feature", data))

    def get_feature(self, report_id: int, length: int) -> bytes:
        return self.features.get(report_id, bytes([report_id]))[:length]

    def close(self) -> None:
        pass


@dataclass
class Running:
    d: Daemon
    src: Any
    log: list[tuple[str, str, bytes]]
    w: FakeWatcher
    cfg: Path

    def feed(self, dev: DeviceId, report: bytes) -> None:
        self.src.feed(dev.kernel_id, report)

    def got(self, key: str, kind: str) -> list[bytes]:
        return [data for k, kd, data in self.log if k == key and kd == kind]


@asynccontextmanager
async def running(tmp_path: Path, **daemon_kwargs: Any) -> AsyncIterator[Running]:
    daemon_kwargs.setdefault("sleep_bus", None)
    from hidbpfd.kernel.libbpf import BpfError
    from hidbpfd.kernel.source import BpfEventSource, BpfUnavailable

    class FeederSource(BpfEventSource):
        """The real source; this kernel has no HID device to attach to, so 'attaching'
        means the test feeds the device's reports through the feeder, which can hold."""

        def attach_device(self, hid_id: int) -> str:
            return "feeder"

        def can_hold(self, hid_id: int) -> bool:
            return True

        def detach_device(self, hid_id: int) -> None:
            pass

    cfg = tmp_path / "devices.d"
    shutil.copytree(ROOT / "config", cfg)
    log: list[tuple[str, str, bytes]] = []
    recorders: dict[str, Recorder] = {}
    watchers: list[FakeWatcher] = []
    sources: list[FeederSource] = []

    def rec(hd: HidDevice) -> Recorder:
        return recorders.setdefault(hd.id.key, Recorder(log, hd.id.key))

    def make_source(cb: Callable[[Any], None]) -> FeederSource:
        s = FeederSource(cb, ring_bytes=1 << 16)
        sources.append(s)
        return s

    def make_watcher(*a: Any) -> FakeWatcher:
        w = FakeWatcher(*a)
        watchers.append(w)
        return w

    d = Daemon(
        [cfg],
        make_source,
        rec,
        lambda hd: lambda: rec(hd),
        watcher_factory=make_watcher,
        **daemon_kwargs,
    )  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(d.run())
    ready = asyncio.ensure_future(d.ready.wait())
    done, _ = await asyncio.wait(
        {task, ready}, timeout=LIMIT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        ready.cancel()
        exc = task.exception()
        if isinstance(exc, (BpfUnavailable, BpfError, OSError)):
            pytest.skip(f"BPF unavailable here: {exc}")
        raise AssertionError(f"daemon exited early: {exc!r}")
    assert ready in done, f"daemon not ready within {LIMIT_S:g} s"
    try:
        yield Running(d, sources[0], log, watchers[0], cfg)
    finally:
        d.stop()
        assert await asyncio.wait_for(task, LIMIT_S) == 0


async def until(cond: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> None:
    """Wait for a condition; the daemon's work happens on this same loop."""
    try:
        async with asyncio.timeout(limit_s):
            while not cond():  # noqa: ASYNC110 - polling daemon state, not waiting on time
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


def pending(r: Running, dev: DeviceId) -> int:
    return r.d.scheduler.count_where(lambda k: isinstance(k, tuple) and k[0] == dev.key)
