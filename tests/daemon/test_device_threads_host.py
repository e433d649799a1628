"""Each device's blocking hidraw I/O runs on its own thread (issue 10, item 3), on the host: the
real :class:`~hidbpfd.devices.sinks.RoutingSink` and :class:`~hidbpfd.devices.sinks.DeviceIO`
with report nodes that block in a thread the way a silent device's GET_FEATURE blocks in the
kernel (until released here; ~5 s there). The VM test (``tests/device/test_silent_devices.py``)
does the same with real uhid devices.

40 silent devices: more than asyncio's default executor ever has threads (min(32, CPUs + 4)),
which these calls shared before, so before the fix the healthy device's call could not even
start until the silent ones were released.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path

from hidbpfd.devices.sinks import DeviceIO, RoutingSink
from hidbpfd.engine.clock import VirtualClock
from hidbpfd.engine.dispatch import Binding, Dispatcher, Outcome
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.model import DeviceId, Pattern
from hidbpfd.policies.params import Feature, Verify
from hidbpfd.policies.reinit import Reinit
from tests.helpers import LIMIT_S

SILENT = 40


class Silent:
    """A report node whose every call blocks until ``release`` is set, then fails (EIO)."""

    def __init__(self, release: threading.Event, entered: list[int], lock: threading.Lock) -> None:
        self.release, self.entered, self.lock = release, entered, lock

    def _block(self) -> None:
        with self.lock:
            self.entered[0] += 1
        self.release.wait(4 * LIMIT_S)
        raise OSError(errno.EIO, "Input/output error")

    def output(self, data: bytes) -> None:
        self._block()

    def set_feature(self, data: bytes) -> None:
        self._block()

    def get_feature(self, report_id: int, length: int) -> bytes:
        self._block()
        return b""

    def close(self) -> None:
        pass


class Healthy:
    """A report node that answers at once."""

    def output(self, data: bytes) -> None:
        pass

    def set_feature(self, data: bytes) -> None:
        pass

    def get_feature(self, report_id: int, length: int) -> bytes:
        return bytes([report_id, 1])

    def close(self) -> None:
        pass


def dev(n: int) -> DeviceId:
    return DeviceId(3, 0x1209, 0xA002, f"device {n}", hid_id=f"0003:1209:A002.{n:04X}")


async def until(cond: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + LIMIT_S
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.005)


def test_a_silent_device_never_delays_another() -> None:
    async def body() -> None:
        release = threading.Event()
        entered = [0]
        lock = threading.Lock()
        errors: list[tuple[str, str]] = []
        sink = RoutingSink(lambda d, origin, what: errors.append((d.key, what)))
        threads0 = threading.active_count()
        silent = [dev(i + 1) for i in range(SILENT)]
        for d in silent:
            sink.devices[d.key] = DeviceIO(
                d,
                None,
                lambda: Silent(release, entered, lock),
                sink.on_error,
                timeout_s=LIMIT_S,
            )
            sink.get_feature(d, 5, 2, "silent.toml#0 verify", lambda data, err: None)
        try:
            await until(
                lambda: entered[0] == SILENT,
                "every silent device blocked in a call of its own (a shared pool runs only a few at once)",
            )
            ok = dev(0x100)
            sink.devices[ok.key] = DeviceIO(ok, None, Healthy, sink.on_error, timeout_s=LIMIT_S)
            answer: asyncio.Future[tuple[bytes | None, str]] = (
                asyncio.get_running_loop().create_future()
            )
            sink.output(ok, b"\x10\x01", "ok.toml#0 reinit")
            sink.set_feature(ok, b"\x05\x01", "ok.toml#0 reinit")
            sink.get_feature(
                ok, 5, 2, "ok.toml#0 reinit", lambda data, err: answer.set_result((data, err))
            )
            assert await asyncio.wait_for(answer, LIMIT_S) == (b"\x05\x01", "")
            # causality, not timing: every silent call is still blocked
            assert not release.is_set() and entered[0] == SILENT
            assert errors == []
        finally:
            release.set()
            for io in list(sink.devices.values()):
                await io.close()
        await until(lambda: threading.active_count() <= threads0, "every device thread ended")

    asyncio.run(asyncio.wait_for(body(), 4 * LIMIT_S))


def test_one_error_line_per_trigger() -> None:
    """The dispatch says which sink error is the first of a policy's current trigger: a
    reinit's retries failing again are counted and observed, but not logged at ERROR again."""
    clock = VirtualClock()
    outcomes: list[Outcome] = []

    class NoSink:
        def inject(self, *a: object) -> None: ...
        def output(self, *a: object) -> None: ...
        def set_feature(self, *a: object) -> None: ...
        def get_feature(self, *a: object) -> None: ...

    d = Dispatcher(Scheduler(clock), NoSink(), [outcomes.append])
    policy = Reinit(
        send=(Feature(b"\x05\x01"),),
        on=("added", "resume"),
        verify=Verify(5, 2, Pattern.parse("05 01")),
        retries=2,
    )
    b = Binding(policy, str(Path("50-x.toml")), 0)
    device = dev(1)
    d.attach(device, [b])  # the "added" trigger
    first = [d.report_error(device, b.label, f"get_feature failed #{n}") for n in range(3)]
    d.device_event(device, "resume")  # a new trigger: its first error is logged again
    second = [d.report_error(device, b.label, f"get_feature failed #{n}") for n in range(2)]
    assert first == [True, False, False] and second == [True, False]
    assert d.slots[device.key].counters.errors == 5
    assert sum(o.kind == "error" for o in outcomes) == 5
    # an error for a device no longer served, or of no known policy, is always logged
    assert d.report_error(dev(2), b.label, "x") is True
    assert d.report_error(device, "other.toml#3 x", "x") is True
