"""uhid devices: the event codec (everywhere) and real devices (where /dev/uhid exists)."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import statistics
import struct
import time

import pytest

from hidbpfd.devices.hidraw import HidrawReader, HidrawReportIO
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import (
    UHID_CLOSE,
    UHID_DEV_NUMBERED_FEATURE_REPORTS,
    UHID_DEV_NUMBERED_INPUT_REPORTS,
    UHID_DEV_NUMBERED_OUTPUT_REPORTS,
    UHID_EVENT_SIZE,
    UHID_FEATURE_REPORT,
    UHID_GET_REPORT,
    UHID_OPEN,
    UHID_OUTPUT,
    UHID_OUTPUT_REPORT,
    UHID_SET_REPORT,
    UHID_START,
    pack_create2,
    pack_get_report_reply,
    pack_input2,
    pack_set_report_reply,
    parse_event,
)
from tests.helpers import LIMIT_S

from .conftest import INPUT_ID, PRODUCT, VENDOR, VENDOR_RDESC, DeviceFactory, open_fds, run

# --- the codec: no kernel needed -------------------------------------------------------------


def test_struct_uhid_event_size_matches_the_kernel() -> None:
    # 4 (type) + 128 + 64 + 64 + 2 + 2 + 4 * 4 + 4096 (create2, the union's largest member)
    assert UHID_EVENT_SIZE == 4376
    assert len(pack_create2("n", b"\x01", 3, 1, 2)) == UHID_EVENT_SIZE


def test_create2_fields_land_at_the_kernel_offsets() -> None:
    ev = pack_create2("dev", b"\xaa\xbb", 0x03, 0x1234, 0x5678, 7, 9, "phys", "uniq")
    assert struct.unpack_from("=I", ev)[0] == 11  # UHID_CREATE2
    assert (
        ev[4:7] == b"dev" and ev[4 + 128 : 4 + 132] == b"phys" and ev[4 + 192 : 4 + 196] == b"uniq"
    )
    assert struct.unpack_from("=HHIIII", ev, 4 + 256) == (2, 0x03, 0x1234, 0x5678, 7, 9)
    assert ev[4 + 276 : 4 + 278] == b"\xaa\xbb"  # rd_data after 256 + 2 + 2 + 4 * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x" * 128}, "name"),
        ({"phys": "p" * 64}, "phys"),
        ({"descriptor": b""}, "descriptor"),
        ({"descriptor": b"\x00" * 4097}, "descriptor"),
    ],
)
def test_create2_refuses_what_the_kernel_would_truncate(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "name": "n",
        "descriptor": b"\x01",
        "bus": 3,
        "vendor": 1,
        "product": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pack_create2(**args)  # type: ignore[arg-type]


def test_small_events_are_packed_short() -> None:
    assert pack_input2(b"\x01\x02") == struct.pack("=IH", 12, 2) + b"\x01\x02"
    assert (
        pack_get_report_reply(7, 0, b"\x05\x01") == struct.pack("=IIHH", 10, 7, 0, 2) + b"\x05\x01"
    )
    assert pack_set_report_reply(8, errno.EIO) == struct.pack("=IIH", 14, 8, errno.EIO)
    with pytest.raises(ValueError):
        pack_input2(b"")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (struct.pack("=IQ", UHID_START, 0b101), {"type": UHID_START, "dev_flags": 0b101}),
        (
            struct.pack("=I", UHID_OUTPUT)
            + b"\x10abcde".ljust(4096, b"\0")
            + struct.pack("=HB", 6, 1),
            {"type": UHID_OUTPUT, "data": b"\x10abcde", "report_type": UHID_OUTPUT_REPORT},
        ),
        (
            struct.pack("=IIBB", UHID_GET_REPORT, 42, 5, 0),
            {"type": UHID_GET_REPORT, "request_id": 42, "report_number": 5},
        ),
        (
            struct.pack("=IIBBH", UHID_SET_REPORT, 43, 5, 0, 3) + b"\x05\x01\x02",
            {
                "type": UHID_SET_REPORT,
                "request_id": 43,
                "report_number": 5,
                "data": b"\x05\x01\x02",
            },
        ),
        (struct.pack("=I", UHID_OPEN), {"type": UHID_OPEN}),
    ],
)
def test_parse_event(raw: bytes, expected: dict[str, object]) -> None:
    ev = parse_event(raw, received_ns=123)
    assert ev.received_ns == 123
    for field, value in expected.items():
        assert getattr(ev, field) == value, field


# --- real devices ------------------------------------------------------------------------------


def test_device_appears_with_hid_name_and_hidraw_node(vendor_device: DeviceFactory) -> None:
    async def body() -> tuple[str | None, str, str | None, int]:
        async with vendor_device() as (dev, node):
            return dev.hid_name(), node, dev.hidraw_name(), dev.dev_flags

    hid, node, hidraw_name, dev_flags = run(body())
    assert hid is not None
    assert re.fullmatch(rf"0003:{VENDOR:04X}:{PRODUCT:04X}\.[0-9A-F]{{4,}}", hid)
    assert re.fullmatch(r"/dev/hidraw\d+", node)
    assert hidraw_name == os.path.basename(node)
    # every report of the descriptor carries an ID, and uhid says so in START
    numbered = (
        UHID_DEV_NUMBERED_FEATURE_REPORTS
        | UHID_DEV_NUMBERED_OUTPUT_REPORTS
        | UHID_DEV_NUMBERED_INPUT_REPORTS
    )
    assert dev_flags == numbered


def test_sysfs_shows_our_descriptor_while_the_device_lives(vendor_device: DeviceFactory) -> None:
    def read_rdesc(hid: str) -> bytes:
        with open(f"/sys/devices/virtual/misc/uhid/{hid}/report_descriptor", "rb") as f:
            return f.read()

    async def body() -> None:
        async with vendor_device() as (dev, _node):
            hid = dev.hid_name()
            assert hid is not None
            assert await asyncio.to_thread(read_rdesc, hid) == VENDOR_RDESC
        assert dev.hid_name() is None or not await asyncio.to_thread(
            os.path.exists, f"/sys/devices/virtual/misc/uhid/{hid}"
        )

    run(body())


def test_input_reports_reach_hidraw_readers(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node):
            with HidrawReader(node) as reader:
                reports = [bytes([INPUT_ID, i, 2 * i, 255 - i]) for i in range(20)]
                latencies = []
                for report in reports:
                    sent = dev.clock()
                    dev.input(report)
                    stamp, got = await reader.read(timeout_s=LIMIT_S)
                    assert got == report
                    latencies.append(stamp - sent)
                assert reader.pending() == 0
                print(f"uhid input -> hidraw read: p50 {statistics.median(latencies) / 1e3:.0f} µs")

    run(body())


def test_open_and_close_of_the_node_are_reported(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node):
            assert dev.open_count == 0  # udev has probed and closed the node again
            with HidrawReader(node):
                await dev.next_event(UHID_OPEN, timeout_s=LIMIT_S)
                assert dev.open_count == 1
            await dev.next_event(UHID_CLOSE, timeout_s=LIMIT_S)
            assert dev.open_count == 0

    run(body())


def test_set_report_is_stored_and_acknowledged(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node):
            rio = HidrawReportIO(node)
            try:
                await asyncio.to_thread(rio.set_feature, b"\x05\x11\x22")
                ev = await dev.next_event(UHID_SET_REPORT, timeout_s=LIMIT_S)
                assert (ev.report_type, ev.report_number, ev.data) == (
                    UHID_FEATURE_REPORT,
                    5,
                    b"\x05\x11\x22",
                )
                assert dev.reports[(UHID_FEATURE_REPORT, 5)] == b"\x05\x11\x22"
            finally:
                rio.close()

    run(body())


def test_input_before_create_is_refused() -> None:
    dev = UhidDevice()
    with pytest.raises(OSError) as info:
        dev.input(b"\x01\x00\x00\x00\x00")
    assert info.value.errno == errno.EBADF


def test_100_create_destroy_cycles_leave_no_fds(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        # one cycle first, so lazily created loop/selector fds are not counted as leaks
        async with vendor_device(wait_udev=False):
            pass
        before = open_fds()
        for _ in range(100):
            async with vendor_device(wait_udev=False) as (dev, node):
                with HidrawReader(node) as reader:
                    # Without waiting for udev the driver may still be probing, and the kernel
                    # drops input while it does (driver_input_lock): send until one gets through.
                    deadline = time.monotonic() + LIMIT_S
                    while True:
                        dev.input(bytes([INPUT_ID, 1, 2, 3, 4]))
                        try:
                            await reader.read(timeout_s=0.25)
                            break
                        except TimeoutError:
                            pass
                        if time.monotonic() > deadline:
                            raise AssertionError(f"no input reached hidraw within {LIMIT_S:g} s")
                HidrawReportIO(node).close()
        assert open_fds() == before

    run(body(), timeout_s=300)
