"""HID-BPF end to end on a uhid device (VM tier: ``python -m hidbpfd.vm -- pytest tests/bpf``).

The struct_ops holds matching reports from hidraw and reports them; the injectors put a
report into the device's stream (passing the filter untouched), send output reports and
set/get feature reports. Skipped with the probe's reason where HID-BPF or uhid is missing.

The device is the package's :class:`~hidbpfd.devices.uhid.UhidDevice`, played on the test's
own loop (:func:`~tests.device.conftest.run`): it answers the kernel's GET/SET_REPORT from the
loop while an injector call that waits for that answer runs off it (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Final

import pytest

from hidbpfd.devices.hidraw import HidrawReader
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import BUS_VIRTUAL, UHID_GET_REPORT, UHID_OUTPUT, UHID_SET_REPORT
from hidbpfd.kernel.probe import probe
from hidbpfd.model import DeviceRule, Pattern, Rule, RuleFlag
from tests.bpf.conftest import Collected, require_bpf
from tests.device.conftest import run
from tests.helpers import LIMIT_S

pytestmark = [pytest.mark.bpf, pytest.mark.device]

VENDOR: Final = 0x1D6B
PRODUCT: Final = 0xB0F0
# Vendor page 0xff00: input report 1, output report 2, feature report 3, 7 bytes each.
RDESC: Final = bytes.fromhex(
    "06 00 ff 09 01 a1 01"
    " 85 01 15 00 26 ff 00 75 08 95 07 09 01 81 02"
    " 85 02 95 07 09 02 91 02"
    " 85 03 95 07 09 03 b1 02"
    " c0"
)
_serial = itertools.count(1)


def report(*head: int) -> bytes:
    """An 8-byte input report (ID 1 + 7 bytes) starting with ``head``."""
    return bytes(head) + bytes(8 - len(head))


@pytest.fixture
def hid_bpf() -> Iterator[Collected]:
    """An opened event source, where HID-BPF and uhid are there (else skip with the reason)."""
    require_bpf()
    facts = probe()
    for key in ("hid_bpf_struct_ops", "uhid"):
        if not facts[key]["ok"]:
            pytest.skip(f"{key}: {facts[key]['reason']}")
    c = Collected()
    c.source.open()
    yield c
    c.source.close()


@contextlib.asynccontextmanager
async def device() -> AsyncIterator[tuple[UhidDevice, HidrawReader, int]]:
    """``async with device() as (dev, reader, hid_id)``: the vendor device, up and handled by
    udev (the driver's probe is over: the kernel drops input while it runs), a reader of its
    hidraw node, and its ``struct hid_device.id``. Destroyed on exit."""
    dev = UhidDevice()
    dev.create(
        "hidbpfd test",
        RDESC,
        BUS_VIRTUAL,
        VENDOR,
        PRODUCT,
        phys=f"hidbpfd-test/{os.getpid()}/{next(_serial)}",
    )
    try:
        await dev.wait_started(LIMIT_S)
        node = await dev.wait_hidraw(timeout_s=LIMIT_S)
        hid_id = dev.kernel_id()
        assert hid_id is not None
        with HidrawReader(node) as reader:
            yield dev, reader, hid_id
    finally:
        dev.destroy()


async def reports(reader: HidrawReader, n: int, quiet_s: float = 0.05) -> list[bytes]:
    """What the device's readers got: the next ``n`` reports (each waited for up to LIMIT_S),
    then any that comes within ``quiet_s`` after them (one let through by mistake is right
    behind; a slow machine can only make this miss it, never invent one)."""
    out: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while len(out) < n:
            out.append((await reader.read(LIMIT_S))[1])
        out.append((await reader.read(quiet_s))[1])
    return out


def test_struct_ops_holds_and_reports(hid_bpf: Collected) -> None:
    src = hid_bpf.source

    async def body() -> None:
        async with device() as (dev, reader, hid_id):
            src.set_rules(
                hid_id,
                [
                    DeviceRule(Rule(Pattern.parse("01 ff"), RuleFlag.HOLD), 0),
                    DeviceRule(Rule(Pattern.parse("01 aa")), 1),
                ],
            )
            assert src.attach_device(hid_id) == "hid_bpf"
            assert src.can_hold(hid_id)

            dev.input(report(1, 0xFF, 1))  # held
            dev.input(report(1, 0xAA, 2))  # reported, passes
            dev.input(report(1, 0x00, 3))  # no rule: passes quietly
            assert await reports(reader, 2) == [report(1, 0xAA, 2), report(1, 0x00, 3)]
            recs = hid_bpf.take()
            assert [(r.data, r.matched, r.held) for r in recs] == [
                (report(1, 0xFF, 1), 0b01, True),
                (report(1, 0xAA, 2), 0b10, False),
            ]
            assert all(r.hid_id == hid_id for r in recs)

            # the daemon re-injects the held report: it reaches readers, not filtered again
            if "hidbpfd_io_input" in src.skipped:
                pytest.skip(src.skipped["hidbpfd_io_input"])
            src.inject(hid_id, report(1, 0xFF, 1))
            assert await reports(reader, 1) == [report(1, 0xFF, 1)]
            assert hid_bpf.take() == []

            src.detach_device(hid_id)
            dev.input(report(1, 0xFF, 4))
            assert await reports(reader, 1) == [report(1, 0xFF, 4)]
            src.clear_rules(hid_id)

    run(body(), 120)


def test_output_and_feature_reports(hid_bpf: Collected) -> None:
    src = hid_bpf.source
    for prog in ("hidbpfd_io_output", "hidbpfd_io_set_feature", "hidbpfd_io_get_feature"):
        if prog in src.skipped:
            pytest.skip(f"{prog}: {src.skipped[prog]}")
    out = bytes([2, 1, 2, 3, 4, 5, 6, 7])
    feat = bytes([3, 9, 8, 7, 6, 5, 4, 3])

    async def body() -> None:
        async with device() as (dev, _reader, hid_id):
            # the injector blocks until the device answers: off the loop, which plays the device
            assert await asyncio.to_thread(src.output, hid_id, out) == len(out)
            assert (await dev.next_event(UHID_OUTPUT, timeout_s=LIMIT_S)).data == out

            await asyncio.to_thread(src.set_feature, hid_id, feat)  # acknowledged, kept
            ev = await dev.next_event(UHID_SET_REPORT, timeout_s=LIMIT_S)
            assert (ev.report_number, ev.data) == (3, feat)

            # answered with the last SET_REPORT of that number
            assert await asyncio.to_thread(src.get_feature, hid_id, 3, 8) == feat
            assert (await dev.next_event(UHID_GET_REPORT, timeout_s=LIMIT_S)).report_number == 3

    run(body(), 120)


def test_unknown_device_is_a_clear_error(hid_bpf: Collected) -> None:
    if "hidbpfd_io_output" in hid_bpf.source.skipped:
        pytest.skip(hid_bpf.source.skipped["hidbpfd_io_output"])
    with pytest.raises(OSError, match="hidbpfd_io_output"):
        hid_bpf.source.output(0xFFFF, b"\x02\x00")


def test_tracing_fallback_observes_without_holding(hid_bpf: Collected) -> None:
    src = hid_bpf.source
    if not probe()["tracing"]["ok"]:
        pytest.skip(f"tracing: {probe()['tracing']['reason']}")

    async def body() -> None:
        async with device() as (dev, reader, hid_id):
            src.set_rules(hid_id, [DeviceRule(Rule(Pattern.parse("01 ff"), RuleFlag.HOLD), 0)])
            assert src.attach_device(hid_id, modes=("tracing",)) == "tracing"
            assert not src.can_hold(hid_id)

            dev.input(report(1, 0xFF, 1))  # HID-BPF would hold it: here it passes, reported
            dev.input(report(1, 0x00, 2))
            assert await reports(reader, 2) == [report(1, 0xFF, 1), report(1, 0x00, 2)]
            recs = hid_bpf.take()
            assert [(r.data, r.matched, r.held) for r in recs] == [(report(1, 0xFF, 1), 1, False)]

            src.detach_device(hid_id)
            dev.input(report(1, 0xFF, 3))
            assert await reports(reader, 1) == [report(1, 0xFF, 3)]
            assert hid_bpf.take() == []
            src.clear_rules(hid_id)

    run(body(), 120)
