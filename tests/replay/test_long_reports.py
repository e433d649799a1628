"""The virtual replay refuses, as the daemon does, a policy that could hold a report longer than
a ring record (issue 10, item 4): the capture's descriptor declares a 200-byte input report; the
defer matching it is refused with an ERROR line and the report passes, the other policy runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hidbpfd.replay.recording import RecordedDevice, Recording
from hidbpfd.replay.virtual import replay
from tests.helpers import LONG_REPORT_RDESC, config_from, long_report_policies


def test_replay_refuses_a_defer_that_could_hold_a_200_byte_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    long = bytes.fromhex("0200") + bytes(198)
    macro = bytes.fromhex("0168") + bytes(6)
    dev = RecordedDevice(
        0, name="long", bus=3, vendor=0x1234, product=0x5678, descriptor=LONG_REPORT_RDESC
    )
    dev.events = [(0, long), (1_000_000, macro)]
    trace = [
        (x.kind, x.data)
        for x in replay(Recording("<test>", [dev]), config_from(tmp_path, long_report_policies()))
    ]
    assert trace == [("pass", long.hex()), ("pass", macro.hex()), ("inject", "0104")]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "hold-long" in line and "input report 0x02 of 200 bytes" in line and "128" in line
