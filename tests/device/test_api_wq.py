"""The in-kernel engine of ``<hidbpfd/api.h>`` (``api_wq.h``) on real uhid devices.

tests/bpf/programs/api_wq_demo.bpf.c (see its header for what each report does) is built with
``-DHIDBPFD_ENGINE_KERNEL`` against the guest's BTF, loaded with the project's ctypes libbpf
layer and attached as a HID-BPF struct_ops to a uhid device (a BPF link, ``hid_id`` set in the
struct_ops data, as ``hidbpfd.kernel.engine`` does). What the program asks for is checked
where it must show up: input reports on the device's hidraw node, output and feature reports
as uhid events. No daemon is involved.

Times: a held report must not arrive before its delay (a kernel timer never fires early, so
this holds however slow the machine); upper bounds are only the tier's LIMIT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.devices.hidraw import HidrawReader
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import UHID_GET_REPORT, UHID_OUTPUT, UHID_SET_REPORT, UhidEvent
from hidbpfd.kernel import libbpf as lb
from tests.bpf.api_wq_build import DEMO, build, missing_tools, open_for
from tests.device.conftest import DeviceFactory, run
from tests.helpers import LIMIT_S

pytestmark = pytest.mark.device

QUIET_S = 0.3
"""How long "nothing more arrives" is watched after everything due has arrived."""


@pytest.fixture(scope="module")
def demo_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo program, built once for the running kernel."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    return build(DEMO, tmp_path_factory.mktemp("api_wq"))


@contextlib.asynccontextmanager
async def attached(
    vendor_device: DeviceFactory, obj: Path, **kwargs: Any
) -> AsyncIterator[tuple[UhidDevice, HidrawReader]]:
    """A vendor uhid device (``kwargs`` for UhidDevice) with the demo attached, and a reader
    on its hidraw node."""
    async with vendor_device(**kwargs) as (dev, node):
        hid_id = dev.kernel_id()
        assert hid_id is not None
        bpf = open_for(obj, "demo_ops", hid_id)
        try:
            with lb.capture_log(quiet=True) as lines:
                try:
                    bpf.load()
                except lb.BpfError as e:
                    raise AssertionError("\n".join([str(e), *lines[-40:]])) from e
            link = bpf.map("demo_ops").attach_struct_ops()
            try:
                with HidrawReader(node) as reader:
                    yield dev, reader
            finally:
                link.destroy()
        finally:
            bpf.close()


async def reports(reader: HidrawReader, n: int) -> list[tuple[int, bytes]]:
    """The next ``n`` reports on hidraw, then nothing more for QUIET_S."""
    got = [await reader.read(timeout_s=LIMIT_S) for _ in range(n)]
    with contextlib.suppress(TimeoutError):
        extra = await reader.read(timeout_s=QUIET_S)
        raise AssertionError(f"unexpected report after {[r.hex() for _, r in got]}: {extra}")
    return got


def send(dev: UhidDevice, hex_report: str) -> int:
    """Send an input report; the time just before it was sent."""
    t = dev.clock()
    dev.input(bytes.fromhex(hex_report))
    return t


def test_a_deferred_report_arrives_after_its_delay_and_not_before(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            sent = send(dev, "01 00 0a 77 00")  # out of proximity, held 100 ms
            [(t, rep)] = await reports(reader, 1)
            assert rep == bytes.fromhex("01 00 0a 77 00")  # re-injected once, whole
            assert t - sent >= 100_000_000, f"arrived {(t - sent) / 1e6:.1f} ms after sending"

    run(body())


def test_a_cancel_drops_the_held_report(vendor_device: DeviceFactory, demo_object: Path) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            send(dev, "01 00 14 01 00")  # held 200 ms
            send(dev, "01 20 00 02 00")  # in range: cancels it, and passes
            [(_, rep)] = await reports(reader, 1)
            assert rep == bytes.fromhex("01 20 00 02 00")
            await asyncio.sleep(0.3)  # past the held report's delay: still nothing
            with pytest.raises(TimeoutError):
                await reader.read(timeout_s=QUIET_S)

    run(body())


def test_rearming_a_key_releases_the_older_report_first(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            send(dev, "01 00 ff aa 00")  # held 2.55 s
            second = send(dev, "01 00 0a bb 00")  # same key, 100 ms: the first comes out now
            (t1, r1), (t2, r2) = await reports(reader, 2)
            assert (r1, r2) == (bytes.fromhex("01 00 ff aa 00"), bytes.fromhex("01 00 0a bb 00"))
            # the first was released by the re-arm, not by its own 2.55 s timer (it came first)
            assert t1 <= t2
            assert t2 - second >= 100_000_000

    run(body())


def test_output_feature_and_call_reach_the_device_in_order(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            send(dev, "01 0f 12 34 00")  # woke up
            out = await dev.next_event(UHID_OUTPUT, timeout_s=LIMIT_S)
            assert out.data == bytes.fromhex("10 a1 a2 a3 a4 a5")
            feat = await dev.next_event(UHID_SET_REPORT, timeout_s=LIMIT_S)
            assert feat.data == bytes.fromhex("05 12 34")
            get = await dev.next_event(UHID_GET_REPORT, timeout_s=LIMIT_S)
            assert get.report_number == 0x05  # the callback reads it back (answered by uhid)
            # the report passes, then the callback's: what it read, and that it matched
            (_, r1), (_, r2) = await reports(reader, 2)
            assert r1 == bytes.fromhex("01 0f 12 34 00")
            assert r2 == bytes.fromhex("01 ca 12 34 01")

    run(body())


def test_injections_run_in_order_now_and_later(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            sent = send(dev, "01 30 00 00 00")
            got = await reports(reader, 3)
            assert [r.hex() for _, r in got] == ["0130000000", "0131000000", "0132000000"]
            assert got[2][0] - sent >= 20_000_000

    run(body())


async def output_and_feature(dev: UhidDevice) -> tuple[UhidEvent, UhidEvent]:
    """The next OUTPUT and SET_REPORT events, whichever comes first."""
    seen: dict[int, UhidEvent] = {}
    while len(seen) < 2:
        ev = await dev.next_event(UHID_OUTPUT, UHID_SET_REPORT, timeout_s=LIMIT_S)
        assert ev.type not in seen, f"a second {ev.name}: {ev.data.hex()}"
        seen[ev.type] = ev
    return seen[UHID_OUTPUT], seen[UHID_SET_REPORT]


def test_keyed_requests_run_when_due(vendor_device: DeviceFactory, demo_object: Path) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            sent = send(dev, "01 40 05 56 78")  # output, feature, input in 50 ms, keyed
            out, feat = await output_and_feature(dev)
            assert out.data == bytes.fromhex("10 b1 b2 b3 b4 b5")
            assert feat.data == bytes.fromhex("05 56 78")
            (_, r1), (t2, r2) = await reports(reader, 2)
            assert (r1, r2) == (bytes.fromhex("01 40 05 56 78"), bytes.fromhex("01 41 56 78 00"))
            assert min(out.received_ns, feat.received_ns, t2) - sent >= 50_000_000

    run(body())


def test_cancel_drops_keyed_requests_and_a_pending_call(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            sent = send(dev, "01 40 64 56 78")  # keyed output, feature, input in 1 s
            send(dev, "01 50 64 9a bc")  # feature now, its read-back in 1 s
            send(dev, "01 41 00 00 00")  # cancels all four
            feat = await dev.next_event(UHID_SET_REPORT, timeout_s=LIMIT_S)
            assert feat.data == bytes.fromhex("05 9a bc")  # the unkeyed one, at once
            got = await reports(reader, 3)
            assert [r.hex() for _, r in got] == ["0140645678", "0150649abc", "0141000000"]
            # past their delay: nothing more reached the device
            await asyncio.sleep(max(0.0, (sent + 1_300_000_000 - dev.clock()) / 1e9))
            while not dev.events.empty():
                ev = dev.events.get_nowait()
                assert ev.type not in (UHID_OUTPUT, UHID_SET_REPORT, UHID_GET_REPORT), ev
            with pytest.raises(TimeoutError):
                await reader.read(timeout_s=QUIET_S)

    run(body())


def test_a_call_rearmed_runs_once_with_the_new_argument(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            send(dev, "01 50 64 11 22")  # set 05 11 22, read back in 1 s, expecting 1122
            send(dev, "01 50 64 33 44")  # set 05 33 44, re-arm: read back expecting 3344
            got = await reports(reader, 3)
            # both reports pass, then the one read-back: it saw 33 44 and expected it
            assert [r.hex() for _, r in got] == ["0150641122", "0150643344", "01ca334401"]

    run(body())


def test_a_report_that_cannot_be_held_passes_at_once(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    """HIDBPFD_POOL_MAX (32) reports held under as many keys fill the device's pool: the next
    one cannot be held and passes at once; the 32 held ones all come out after their delay."""

    async def body() -> None:
        async with attached(vendor_device, demo_object) as (dev, reader):
            sent = [send(dev, f"01 01 64 {i:02x} 00") for i in range(33)]  # each held 1 s
            # the last one first: held, it would have come out last
            _, first = await reader.read(timeout_s=LIMIT_S)
            assert first == bytes.fromhex("01 01 64 20 00")
            held = await reports(reader, 32)
            assert sorted(r for _, r in held) == [bytes([1, 1, 0x64, i, 0]) for i in range(32)]
            assert min(t for t, _ in held) - sent[0] >= 1_000_000_000
            # the pool is free again: the next one is held
            again = send(dev, "01 01 0a 40 00")
            [(t, rep)] = await reports(reader, 1)
            assert rep == bytes.fromhex("01 01 0a 40 00") and t - again >= 100_000_000

    run(body())


def test_a_call_retries_itself_until_the_read_back_matches(
    vendor_device: DeviceFactory, demo_object: Path
) -> None:
    """The device answers the first read-back wrong: the callback sets the feature again and
    schedules itself again (hidbpfd_call from its own body), and the second read-back
    matches. Everything reaches the device in the order it was asked for."""
    wrong = [bytes.fromhex("05 00 00")]

    def get_report(ev: UhidEvent) -> bytes | int:
        if wrong:
            return wrong.pop()
        return owner[0].reports.get((ev.report_type, ev.report_number), errno.EIO)

    owner: list[UhidDevice] = []

    async def body() -> None:
        async with attached(vendor_device, demo_object, get_report=get_report) as (dev, reader):
            owner.append(dev)
            send(dev, "01 0f 12 34 00")
            seen = []
            while len(seen) < 5:
                ev = await dev.next_event(
                    UHID_OUTPUT, UHID_SET_REPORT, UHID_GET_REPORT, timeout_s=LIMIT_S
                )
                seen.append((ev.name, ev.data.hex()))
            assert [name for name, _ in seen] == [
                "OUTPUT",
                "SET_REPORT",
                "GET_REPORT",  # answered 05 00 00
                "SET_REPORT",  # the retry sets it again
                "GET_REPORT",  # answered 05 12 34
            ]
            assert seen[3][1] == "051234"
            (_, r1), (_, r2) = await reports(reader, 2)
            assert r1 == bytes.fromhex("01 0f 12 34 00")
            assert r2 == bytes.fromhex("01 ca 12 34 11")  # matched, after one retry

    run(body())
