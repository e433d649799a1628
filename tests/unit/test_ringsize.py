"""The filter's ring buffer is sized from the devices with rules (issue 10, item 6):
:func:`hidbpfd.kernel.ringsize.ring_size` and what ``run`` counts (``devices_with_rules``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hidbpfd.config import load
from hidbpfd.config.settings import Settings
from hidbpfd.kernel import ringsize as R
from hidbpfd.kernel.filter_codec import RECORD_SIZE
from hidbpfd.runtime import devices_with_rules

ROOT = Path(__file__).resolve().parents[2]
PEN_UEVENT = "HID_ID=0003:000028BD:00000905\nHID_NAME=XP-Pen Deco Pen\nHID_UNIQ=\nHID_PHYS=usb-1\n"


def test_record_takes_its_size_and_header_in_the_ring() -> None:
    assert R.RECORD_ALLOC == 160 == RECORD_SIZE + 8
    assert (1 << 20) // R.RECORD_ALLOC == 6553  # the old fixed ring: what issue 10 overflowed


@pytest.mark.parametrize("devices", [0, 1, 2, 8, 13, 32, 64, 200, 5000])
def test_size_is_a_power_of_two_between_floor_and_cap(devices: int) -> None:
    s = R.ring_size(devices)
    assert s.bytes & (s.bytes - 1) == 0
    assert R.FLOOR_BYTES <= s.bytes <= R.CAP_BYTES
    need = (devices + R.SPARE_DEVICES) * int(R.REPORTS_PER_S * R.WINDOW_S)
    if need * R.RECORD_ALLOC <= R.CAP_BYTES:
        # a burst of every device at full rate over the window fits, and at most twice over
        assert need <= s.records
        assert s.bytes == R.FLOOR_BYTES or s.records < 2 * need
    else:
        assert s.bytes == R.CAP_BYTES and "capped" in s.why


def test_sizes_for_the_issue_and_the_vm_test() -> None:
    assert R.ring_size(8).bytes == 4 << 20  # tests/device/test_flood.py: 8 pens
    assert R.ring_size(32).bytes == 16 << 20  # issue 10: 32 pens
    assert R.ring_size(32).records >= 22_016  # its whole 10 s burst, even if never drained
    assert "32 device(s) with rules + 4 spare" in R.ring_size(32).describe()


def test_ring_kib_in_the_settings_overrides() -> None:
    s = R.ring_size(32, ring_kib=64)
    assert (s.bytes, s.why) == (64 * 1024, "ring_kib in the settings")
    assert Settings().ring_kib == 0  # default: sized
    with pytest.raises(ValueError, match="devices must be >= 0"):
        R.ring_size(-1)


def _sysfs(root: Path, name: str, uevent: str) -> None:
    d = root / "bus/hid/devices" / name
    d.mkdir(parents=True)
    (d / "uevent").write_text(uevent)


def test_devices_counted_are_those_a_userspace_file_gives_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "devices.d"
    shutil.copytree(ROOT / "config", cfg)
    sysfs = tmp_path / "sys"
    for i in range(3):
        _sysfs(sysfs, f"0003:28BD:0905.{i + 1:04X}", PEN_UEVENT)
    _sysfs(sysfs, "0003:0001:0002.0010", "HID_ID=0003:00000001:00000002\nHID_NAME=none\n")
    assert devices_with_rules(load([cfg]), sysfs) == 3
    # the same pens on the in-kernel engine write no record per report to this ring
    pen = cfg / "50-28bd__0905-pen-proximity.toml"
    pen.write_text('engine = "kernel"\n' + pen.read_text())
    assert devices_with_rules(load([cfg]), sysfs) == 0
    assert devices_with_rules(load([cfg]), tmp_path / "nothing") == 0
