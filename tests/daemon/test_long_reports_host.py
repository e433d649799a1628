"""Reports longer than a ring record are never a silent no-op (issue 10, item 4), on the host:
the real daemon (harness: BPF feeder, fake udev) meets devices whose report descriptor declares
a 200-byte input report. A policy that holds reports and can match it is refused on that device,
with the reason in the log and in ``status``, on both engines; the device's other policies run.
The VM test (``tests/device/test_long_reports.py``) does it with a uhid device."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hidbpfd.devices.facts import descriptor_facts
from hidbpfd.devices.udev import HidDevice
from hidbpfd.model import DeviceId
from hidbpfd.service.status_text import render_status
from tests.daemon.harness import running, until
from tests.helpers import (
    LONG_REPORT_RDESC,
    LONG_REPORT_REFUSAL,
    LONG_REPORT_USER_FILE,
    long_report_policies,
    write_long_report_files,
)

pytestmark = pytest.mark.bpf

USER = DeviceId(3, 0x1234, 0x5678, "long reports", hid_id="0003:1234:5678.0201")
KERN = DeviceId(3, 0x1234, 0x5679, "long reports (kernel engine)", hid_id="0003:1234:5679.0202")


def test_a_policy_that_could_hold_a_long_report_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)

    async def body() -> None:
        async with running(tmp_path) as r:
            write_long_report_files(r.cfg)
            assert r.d.reload().errors == []
            facts = descriptor_facts(LONG_REPORT_RDESC)
            for dev in (USER, KERN):
                r.w.on_add(HidDevice(dev, f"/dev/fake-{dev.kernel_id}", "/sys/fake", facts))

            # userspace engine: the defer is refused, the inject runs
            slot = r.d.dispatch.slots[USER.key]
            assert [b.label for b in slot.bindings] == ["50-1234__5678-long.toml#1 short-macro"]
            (line,) = [x.getMessage() for x in caplog.records if USER.key in x.getMessage()]
            for part in (*LONG_REPORT_REFUSAL, "refused"):
                assert part in line, (part, line)
            st = r.d.status()
            (entry,) = [e for e in st["devices"] if e["hid_id"] == USER.key]
            assert len(entry["refused"]) == 1 and "hold-long" in entry["refused"][0]
            text = render_status(st)
            assert "REFUSED /" in text and "policy 50-1234__5678-long.toml#1 short-macro" in text
            r.feed(USER, bytes.fromhex("0168") + bytes(6))
            await until(lambda: r.got(USER.key, "inject") == [bytes.fromhex("0104")], "macro")

            # in-kernel engine: the file is refused whole, with the same reason
            reason = r.d.kernel_refused[KERN.key]
            assert "hold-long" in reason and "input report 0x02 of 200 bytes" in reason
            (kline,) = [x.getMessage() for x in caplog.records if KERN.key in x.getMessage()]
            assert "do NOT run" in kline and "128 bytes" in kline

            # a reload re-checks (still refused, logged again, never silently applied)
            caplog.clear()
            (r.cfg / LONG_REPORT_USER_FILE).write_text(long_report_policies(0x5678, delay_ms=30))
            r.d.reload()
            assert [b.label for b in r.d.dispatch.slots[USER.key].bindings] == [
                "50-1234__5678-long.toml#1 short-macro"
            ]
            assert any("hold-long" in x.getMessage() for x in caplog.records)

    asyncio.run(body())
