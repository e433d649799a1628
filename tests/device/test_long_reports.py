"""Reports longer than a ring record are never silently let through (VM tier; issue 10, item 4).

A uhid device whose report descriptor declares a 200-byte input report (0x02), longer than the
128 bytes a ring record (and the in-kernel engine's held copy) carries. A ``defer`` policy
matching it used to be a silent no-op on both engines: the report passed at once, no log line.
Now the daemon refuses such a policy at load with the reason (file, policy, device, report ID
and length, the limit), on both engines; the device's other policies run. The 200-byte report
then reaches the readers, as the log says it will.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hidbpfd.replay.live import LiveSession
from hidbpfd.replay.recording import RecordedDevice
from tests.device.conftest import run
from tests.device.test_daemon_device import until
from tests.helpers import LONG_REPORT_RDESC, LONG_REPORT_REFUSAL, write_long_report_files

pytestmark = pytest.mark.device

LONG = bytes.fromhex("0200") + bytes(range(198))  # 200 bytes: report 0x02
MACRO = bytes.fromhex("0168") + bytes(6)  # 8 bytes: report 0x01


def long_device(product: int) -> RecordedDevice:
    return RecordedDevice(
        0,
        name=f"hidbpfd long reports {product:04x}",
        phys=f"hidbpfd-long/{product:04x}",
        bus=3,
        vendor=0x1234,
        product=product,
        descriptor=LONG_REPORT_RDESC,
    )


def test_defer_matching_a_200_byte_report_is_refused_on_both_engines(
    tmp_path: Path, uhid_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    cfg = tmp_path / "devices.d"
    cfg.mkdir()
    write_long_report_files(cfg, macro="01 04 00 00 00 00 00 00")

    async def body() -> None:
        async with LiveSession([cfg]) as live:
            d = live.daemon
            user = await live.add(long_device(0x5678))
            kern = await live.add(long_device(0x5679))
            await until(lambda: user.hid_id in d.managed, "the userspace device managed")
            await until(lambda: kern.hid_id in d.kernel_refused, "the kernel engine refused")

            # userspace engine: the defer is refused with the reason, the inject runs
            slot = d.dispatch.slots[user.hid_id]
            assert [b.label for b in slot.bindings] == ["50-1234__5678-long.toml#1 short-macro"]
            lines = [r.getMessage() for r in caplog.records if user.hid_id in r.getMessage()]
            assert len(lines) == 1, lines
            for part in LONG_REPORT_REFUSAL:
                assert part in lines[0], (part, lines[0])
            live.send(user, LONG)
            live.send(user, MACRO)
            await until(
                lambda: live.seen(user, "inject") == [bytes.fromhex("0104") + bytes(6)],
                "the short macro injected",
                live=live,
            )
            await until(lambda: live.seen(user, "pass") == [LONG, MACRO], "both reports passed")

            # in-kernel engine: refused whole, with the same reason, and said so
            reason = d.kernel_refused[kern.hid_id]
            assert "hold-long" in reason and "input report 0x02 of 200 bytes" in reason
            klines = [r.getMessage() for r in caplog.records if kern.hid_id in r.getMessage()]
            assert len(klines) == 1 and "do NOT run" in klines[0], klines
            entry = next(e for e in d.status()["devices"] if e["hid_id"] == kern.hid_id)
            assert "200 bytes" in entry["kernel_refused"]
            live.send(kern, LONG)
            await until(lambda: live.seen(kern, "pass") == [LONG], "the long report passed")

    run(body())
