"""hidraw output and feature requests against a real uhid device, and their failures."""

from __future__ import annotations

import asyncio
import errno
import statistics

import pytest

from hidbpfd.devices.hidraw import (
    HIDIOCGFEATURE,
    HIDIOCSFEATURE,
    DeviceGone,
    HidrawError,
    HidrawReader,
    HidrawReportIO,
    HidrawSink,
    HidrawTimeout,
    ReportRefused,
)
from hidbpfd.devices.uhid_protocol import (
    UHID_FEATURE_REPORT,
    UHID_GET_REPORT,
    UHID_OUTPUT,
    UHID_OUTPUT_REPORT,
    UHID_SET_REPORT,
    UhidEvent,
)
from tests.helpers import LIMIT_S

from .conftest import FEATURE_ID, INPUT_ID, OUTPUT_ID, DeviceFactory, run


def test_ioctl_numbers_match_linux_hidraw_h() -> None:
    # from a C program including <linux/hidraw.h>, for a 3-byte buffer
    assert HIDIOCSFEATURE(3) == 0xC0034806
    assert HIDIOCGFEATURE(3) == 0xC0034807


def test_errors_are_oserrors_with_errno_and_path() -> None:
    with pytest.raises(DeviceGone) as info:
        HidrawReportIO("/dev/hidraw-that-does-not-exist")
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOENT
    assert info.value.device_path == "/dev/hidraw-that-does-not-exist"
    assert "hidraw-that-does-not-exist" in str(info.value)


def test_output_report_arrives_as_uhid_output(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node), HidrawSink(node, timeout_s=LIMIT_S) as sink:
            latencies = []
            for i in range(20):
                report = bytes([OUTPUT_ID, i, i + 1, i + 2, i + 3, i + 4])
                sent = dev.clock()
                await sink.output(report)
                ev = await dev.next_event(UHID_OUTPUT, timeout_s=LIMIT_S)
                assert (ev.data, ev.report_type) == (report, UHID_OUTPUT_REPORT)
                latencies.append(ev.received_ns - sent)
            print(f"hidraw output -> UHID_OUTPUT: p50 {statistics.median(latencies) / 1e3:.0f} µs")

    run(body())


def test_set_and_get_feature_round_trip(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node), HidrawSink(node, timeout_s=LIMIT_S) as sink:
            await sink.set_feature(bytes([FEATURE_ID, 0xAA, 0xBB]))
            ev = await dev.next_event(UHID_SET_REPORT, timeout_s=LIMIT_S)
            assert (ev.report_type, ev.report_number, ev.data) == (
                UHID_FEATURE_REPORT,
                FEATURE_ID,
                bytes([FEATURE_ID, 0xAA, 0xBB]),
            )
            # the default GET_REPORT handler answers with the last SET_REPORT
            assert await sink.get_feature(FEATURE_ID, 3) == bytes([FEATURE_ID, 0xAA, 0xBB])
            ev = await dev.next_event(UHID_GET_REPORT, timeout_s=LIMIT_S)
            assert (ev.report_type, ev.report_number) == (UHID_FEATURE_REPORT, FEATURE_ID)

    run(body())


def test_get_feature_through_a_handler(vendor_device: DeviceFactory) -> None:
    def answer(ev: UhidEvent) -> bytes | int:
        return bytes([ev.report_number, 0x12, 0x34]) if ev.report_number == FEATURE_ID else 0

    async def body() -> None:
        async with (
            vendor_device(get_report=answer) as (_dev, node),
            HidrawSink(node, timeout_s=LIMIT_S) as sink,
        ):
            assert await sink.get_feature(FEATURE_ID, 3) == bytes([FEATURE_ID, 0x12, 0x34])

    run(body())


def test_a_deferred_reply_is_waited_for(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()

        def later(ev: UhidEvent) -> None:
            loop.call_later(0.05, dev.reply_get_report, ev.request_id, bytes([FEATURE_ID, 7, 8]))

        async with (
            vendor_device(get_report=later) as (dev, node),
            HidrawSink(node, timeout_s=LIMIT_S) as sink,
        ):
            assert await sink.get_feature(FEATURE_ID, 3) == bytes([FEATURE_ID, 7, 8])

    run(body())


def test_a_refused_get_feature_is_report_refused_not_gone(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (_dev, node), HidrawSink(node, timeout_s=LIMIT_S) as sink:
            # nothing was SET yet, so the default handler answers with an error (EIO)
            with pytest.raises(ReportRefused) as info:
                await sink.get_feature(FEATURE_ID, 3)
            assert info.value.errno == errno.EIO
            assert not isinstance(info.value, DeviceGone)
            assert "refused" in str(info.value)

    run(body())


def test_no_answer_is_a_timeout(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with (
            vendor_device(get_report=lambda ev: None) as (_dev, node),
            HidrawSink(node, timeout_s=0.3) as sink,
        ):
            with pytest.raises(HidrawTimeout) as info:
                await sink.get_feature(FEATURE_ID, 3)
            assert info.value.errno == errno.ETIMEDOUT
            assert isinstance(info.value, HidrawError)

    run(body())


def test_destroying_the_device_during_a_feature_write_is_device_gone(
    vendor_device: DeviceFactory,
) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()

        def vanish(ev: UhidEvent) -> None:
            loop.call_soon(dev.destroy)  # the device dies instead of answering

        async with (
            vendor_device(set_report=vanish) as (dev, node),
            HidrawSink(node, timeout_s=LIMIT_S) as sink,
        ):
            with pytest.raises(DeviceGone) as info:
                await sink.set_feature(bytes([FEATURE_ID, 1, 2]))
            assert info.value.errno in (errno.EIO, errno.ENODEV)
            assert info.value.device_path == node
            # and everything after that is gone too
            with pytest.raises(DeviceGone) as info:
                await sink.output(bytes([OUTPUT_ID, 1, 2, 3, 4, 5]))
            assert info.value.errno == errno.ENODEV

    run(body())


def test_output_to_a_destroyed_device_is_device_gone(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node):
            rio = HidrawReportIO(node)
            try:
                dev.destroy()
                with pytest.raises(DeviceGone) as info:
                    await asyncio.to_thread(rio.output, bytes([OUTPUT_ID, 1, 2, 3, 4, 5]))
                assert info.value.errno == errno.ENODEV
                assert "gone" in str(info.value)
            finally:
                rio.close()

    run(body())


def test_reader_ends_when_the_device_goes(vendor_device: DeviceFactory) -> None:
    async def body() -> None:
        async with vendor_device() as (dev, node):
            with HidrawReader(node) as reader:
                dev.input(bytes([INPUT_ID, 9, 9, 9, 9]))
                dev.destroy()
                seen = [report async for _stamp, report in reader]
                assert seen == [bytes([INPUT_ID, 9, 9, 9, 9])]
                with pytest.raises(DeviceGone):
                    await reader.read(timeout_s=LIMIT_S)

    run(body())
