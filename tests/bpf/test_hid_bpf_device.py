"""HID-BPF end to end on a uhid device (VM tier: ``python -m hidbpfd.vm -- pytest tests/bpf``).

The struct_ops holds matching reports from hidraw and reports them; the injectors put a
report into the device's stream (passing the filter untouched), send output reports and
set/get feature reports. Skipped with the probe's reason where HID-BPF or uhid is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hidbpfd.model import DeviceRule, Pattern, Rule, RuleFlag
from hidbpfd.probe import probe
from tests.bpf.conftest import Collected, require_bpf
from tests.bpf.uhid_device import (
    UHID_GET_REPORT,
    UHID_OUTPUT,
    UHID_SET_REPORT,
    UhidDevice,
    read_hidraw,
)

pytestmark = [pytest.mark.bpf, pytest.mark.device]


def report(*head: int) -> bytes:
    """An 8-byte input report (ID 1 + 7 bytes) starting with ``head``."""
    return bytes(head) + bytes(8 - len(head))


@pytest.fixture
def rig() -> Iterator[tuple[Collected, UhidDevice, int]]:
    require_bpf()
    facts = probe()
    for key in ("hid_bpf_struct_ops", "uhid"):
        if not facts[key]["ok"]:
            pytest.skip(f"{key}: {facts[key]['reason']}")
    c = Collected()
    c.source.open()
    dev = UhidDevice()
    raw = os.open(dev.hidraw_path(), os.O_RDWR | os.O_NONBLOCK)
    try:
        yield c, dev, raw
    finally:
        os.close(raw)
        c.source.close()
        dev.close()


def test_struct_ops_holds_and_reports(rig: tuple[Collected, UhidDevice, int]) -> None:
    c, dev, raw = rig
    src = c.source
    src.set_rules(
        dev.hid_id,
        [
            DeviceRule(Rule(Pattern.parse("01 ff"), RuleFlag.HOLD), 0),
            DeviceRule(Rule(Pattern.parse("01 aa")), 1),
        ],
    )
    assert src.attach_device(dev.hid_id) == "hid_bpf"
    assert src.can_hold(dev.hid_id)

    dev.send(report(1, 0xFF, 1))  # held
    dev.send(report(1, 0xAA, 2))  # reported, passes
    dev.send(report(1, 0x00, 3))  # no rule: passes quietly
    assert read_hidraw(raw, 1.0) == [report(1, 0xAA, 2), report(1, 0x00, 3)]
    recs = c.take()
    assert [(r.data, r.matched, r.held) for r in recs] == [
        (report(1, 0xFF, 1), 0b01, True),
        (report(1, 0xAA, 2), 0b10, False),
    ]
    assert all(r.hid_id == dev.hid_id for r in recs)

    # the daemon re-injects the held report: it reaches readers and is not filtered again
    if "hidbpfd_io_input" in src.skipped:
        pytest.skip(src.skipped["hidbpfd_io_input"])
    src.inject(dev.hid_id, report(1, 0xFF, 1))
    assert read_hidraw(raw, 1.0) == [report(1, 0xFF, 1)]
    assert c.take() == []

    src.detach_device(dev.hid_id)
    dev.send(report(1, 0xFF, 4))
    assert read_hidraw(raw, 1.0) == [report(1, 0xFF, 4)]
    src.clear_rules(dev.hid_id)


def test_output_and_feature_reports(rig: tuple[Collected, UhidDevice, int]) -> None:
    c, dev, _raw = rig
    src = c.source
    for prog in ("hidbpfd_io_output", "hidbpfd_io_set_feature", "hidbpfd_io_get_feature"):
        if prog in src.skipped:
            pytest.skip(f"{prog}: {src.skipped[prog]}")
    out = bytes([2, 1, 2, 3, 4, 5, 6, 7])
    feat = bytes([3, 9, 8, 7, 6, 5, 4, 3])
    # the injector blocks until the device answers: call it off-thread, play the device here
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(src.output, dev.hid_id, out)
        assert dev.answer_one(5.0) == (UHID_OUTPUT, out)
        assert sent.result(5.0) == len(out)

        fut = pool.submit(src.set_feature, dev.hid_id, feat)
        assert dev.answer_one(5.0) == (UHID_SET_REPORT, feat)
        fut.result(5.0)

        got = pool.submit(src.get_feature, dev.hid_id, 3, 8)
        assert dev.answer_one(5.0, get_reply=feat) == (UHID_GET_REPORT, b"\x03")
        assert got.result(5.0) == feat


def test_unknown_device_is_a_clear_error(rig: tuple[Collected, UhidDevice, int]) -> None:
    c, _dev, _raw = rig
    if "hidbpfd_io_output" in c.source.skipped:
        pytest.skip(c.source.skipped["hidbpfd_io_output"])
    with pytest.raises(OSError, match="hidbpfd_io_output"):
        c.source.output(0xFFFF, b"\x02\x00")


def test_tracing_fallback_observes_without_holding(rig: tuple[Collected, UhidDevice, int]) -> None:
    c, dev, raw = rig
    src = c.source
    if not probe()["tracing"]["ok"]:
        pytest.skip(f"tracing: {probe()['tracing']['reason']}")
    src.set_rules(dev.hid_id, [DeviceRule(Rule(Pattern.parse("01 ff"), RuleFlag.HOLD), 0)])
    assert src.attach_device(dev.hid_id, modes=("tracing",)) == "tracing"
    assert not src.can_hold(dev.hid_id)

    dev.send(report(1, 0xFF, 1))  # would be held by HID-BPF: here it passes, and is reported
    dev.send(report(1, 0x00, 2))
    assert read_hidraw(raw, 1.0) == [report(1, 0xFF, 1), report(1, 0x00, 2)]
    recs = c.take()
    assert [(r.data, r.matched, r.held) for r in recs] == [(report(1, 0xFF, 1), 1, False)]

    src.detach_device(dev.hid_id)
    dev.send(report(1, 0xFF, 3))
    assert read_hidraw(raw, 1.0) == [report(1, 0xFF, 3)]
    assert c.take() == []
    src.clear_rules(dev.hid_id)
