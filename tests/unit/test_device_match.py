"""The ``[device]`` keys for one interface of a multi-interface device (issue 15): validation with
file, line and key; matching by descriptor content and USB interface number; the facts read from
a descriptor, a phys string and a (fake) sysfs tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidbpfd.config import load
from hidbpfd.config.match import DeviceMatch
from hidbpfd.devices.facts import (
    descriptor_facts,
    interface_from_phys,
    sysfs_facts,
    usb_interface,
)
from hidbpfd.model import DeviceFacts, DeviceId
from hidbpfd.replay.recording import load as load_rec

ROOT = Path(__file__).resolve().parents[2]
PEN = load_rec(ROOT / "tests/captures/artist24-pen-proximity.hid").devices[0].descriptor
RECEIVER = load_rec(ROOT / "tests/captures/receiver-dj-mode.hid").devices[0].descriptor
K400 = load_rec(ROOT / "tests/captures/k400-release-guard.hid").devices[0].descriptor
DEV = DeviceId(3, 0x28BD, 0x093A, "UGTABLET 24 inch PenDisplay", "", "usb-x/input1")


def write(tmp_path: Path, device: str, name: str = "50-28bd__093a-test.toml") -> Path:
    f = tmp_path / name
    f.write_text(
        f'[device]\n{device}\n\n[[policy]]\ntype = "defer"\nmatch = "07 00"\ndelay_ms = 5\n'
    )
    return f


# ------------------------------------------------------------------------------ facts


def test_descriptor_facts_of_real_descriptors() -> None:
    pen = descriptor_facts(PEN)
    assert pen.applications == (0x000D0002,) and pen.report_ids == frozenset({7})
    rx = descriptor_facts(RECEIVER, 2)
    assert rx.applications == (0xFF000001, 0xFF000002, 0xFF000004)
    assert rx.report_ids == frozenset({0x10, 0x11, 0x20, 0x21}) and rx.interface == 2
    kb = descriptor_facts(K400)
    assert kb.applications == (0x00010006, 0x000C0001)
    assert kb.report_ids == frozenset({1, 3, 0x0E})  # 0x0e: the LED output report


def test_descriptor_facts_unknown_for_bad_or_missing_descriptors() -> None:
    assert descriptor_facts(b"") == DeviceFacts()
    assert descriptor_facts(b"\xc0", 1) == DeviceFacts(interface=1)  # end collection alone


@pytest.mark.parametrize(
    ("phys", "bus", "want"),
    [
        ("usb-0000:00:14.0-2/input2", 3, 2),
        ("usb-0000:00:14.0-2/input0", 3, 0),
        ("usb-0000:00:14.0-2/input2:1", 3, None),  # a receiver's paired device
        ("aa:bb:cc:dd:ee:ff", 5, None),  # Bluetooth (uhid): no interface
        ("usb-0000:00:14.0-2/input2", 5, None),
        ("", 3, None),
    ],
)
def test_interface_from_phys(phys: str, bus: int, want: int | None) -> None:
    assert interface_from_phys(phys, bus) == want


def fake_sysfs(tmp_path: Path) -> Path:
    """A USB tablet's pen interface (interface 1) and a uhid Bluetooth device."""
    sys = tmp_path / "sys"
    usb_if = sys / "devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.1"
    hid = usb_if / "0003:28BD:093A.0002"
    hid.mkdir(parents=True)
    (usb_if / "bInterfaceNumber").write_text("01\n")
    (hid / "report_descriptor").write_bytes(PEN)
    bt = sys / "devices/virtual/misc/uhid/0005:046D:404D.0003"
    bt.mkdir(parents=True)
    (bt / "report_descriptor").write_bytes(K400)
    links = sys / "bus/hid/devices"
    links.mkdir(parents=True)
    for d in (hid, bt):
        os.symlink(os.path.relpath(d, links), links / d.name)
    return sys


def test_usb_interface_from_the_sysfs_parent(tmp_path: Path) -> None:
    sys = fake_sysfs(tmp_path)
    links = sys / "bus/hid/devices"
    assert usb_interface(links / "0003:28BD:093A.0002", sys) == 1
    assert usb_interface(links / "0005:046D:404D.0003", sys) is None
    facts = sysfs_facts(links / "0003:28BD:093A.0002", sys)
    assert (facts.applications, facts.report_ids, facts.interface) == (
        (0x000D0002,),
        frozenset({7}),
        1,
    )
    assert facts.input_lengths is not None and [i for i, _ in facts.input_lengths] == [7]
    bt = sysfs_facts(links / "0005:046D:404D.0003", sys)
    assert bt.interface is None and bt.report_ids == frozenset({1, 3, 0x0E})


# ------------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("match", "facts", "bad"),
    [
        (DeviceMatch(usage_page=0x0D), descriptor_facts(PEN), ()),
        (DeviceMatch(usage_page=0x0D, usage=0x02), descriptor_facts(PEN), ()),
        (DeviceMatch(usage_page=0x0D, usage=0x01), descriptor_facts(PEN), ("usage",)),
        (DeviceMatch(usage_page=0x01), descriptor_facts(PEN), ("usage_page",)),
        (DeviceMatch(report_id=7), descriptor_facts(PEN), ()),
        (DeviceMatch(report_id=3), descriptor_facts(PEN), ("report_id",)),
        (DeviceMatch(interface=1), descriptor_facts(PEN, 1), ()),
        (DeviceMatch(interface=0), descriptor_facts(PEN, 1), ("interface",)),
        (DeviceMatch(interface=0), descriptor_facts(PEN), ("interface",)),  # not USB
        (DeviceMatch(usage_page=0x0D), None, ("usage_page",)),  # nothing known: no match
        (DeviceMatch(report_id=7), None, ("report_id",)),
        (
            DeviceMatch(vendor=0x28BD, product=0x0905, usage_page=0x0D),
            descriptor_facts(PEN),
            ("product",),
        ),
    ],
)
def test_match_and_mismatches(
    match: DeviceMatch, facts: DeviceFacts | None, bad: tuple[str, ...]
) -> None:
    assert match.mismatches(DEV, facts) == bad
    assert match.matches(DEV, facts) is (not bad)


def test_bluetooth_is_matched_like_usb() -> None:
    bt = DeviceId(5, 0x046D, 0xB342, "Keyboard K380", "", "aa:bb:cc:dd:ee:ff")
    m = DeviceMatch(bus=5, vendor=0x046D, product=0xB342, report_id=3)
    assert m.matches(bt, descriptor_facts(K400))
    assert m.mismatches(bt, descriptor_facts(PEN)) == ("report_id",)


def test_str_names_every_key() -> None:
    m = DeviceMatch(bus=3, vendor=0x28BD, usage_page=0x0D, usage=2, report_id=7, interface=1)
    assert str(m) == (
        "bus=usb vendor=0x28bd usage_page=0x000d usage=0x0002 report_id=7 interface=1"
    )


def test_one_interface_of_two_gets_the_policy(tmp_path: Path) -> None:
    """Same vendor/product/phys prefix, different descriptors: only the pen interface."""
    write(tmp_path, "vendor = 0x28bd\nproduct = 0x093a\nusage_page = 0x0d\nusage = 0x02")
    write(tmp_path, "vendor = 0x28bd\nproduct = 0x093a\ninterface = 2", "50-28bd__093a-b.toml")
    cfg = load([tmp_path])
    assert cfg.ok, cfg.errors
    pad = DeviceId(3, 0x28BD, 0x093A, "UGTABLET 24 inch PenDisplay", "", "usb-x/input0")
    assert [Path(f.path).name for f in cfg.files_for(DEV, descriptor_facts(PEN, 1))] == [
        "50-28bd__093a-test.toml"
    ]
    assert cfg.files_for(pad, descriptor_facts(K400, 0)) == []
    assert [Path(f.path).name for f in cfg.files_for(pad, descriptor_facts(RECEIVER, 2))] == [
        "50-28bd__093a-b.toml"
    ]


def test_same_identity_different_interface_keys_are_not_duplicates(tmp_path: Path) -> None:
    write(tmp_path, "vendor = 0x28bd\nusage_page = 0x0d")
    write(tmp_path, "vendor = 0x28bd\nusage_page = 0x01", "50-28bd__093a-b.toml")
    assert load([tmp_path]).ok


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("device", "line", "key", "what"),
    [
        ("vendor = 0x28bd\nusage = 2", 3, "device.usage", "usage without usage_page"),
        ("vendor = 0x28bd\nusage_page = 0x10000", 3, "device.usage_page", "is not a usage page"),
        ("vendor = 0x28bd\nreport_id = 0", 3, "device.report_id", "is not a report ID"),
        ("vendor = 0x28bd\nreport_id = 256", 3, "device.report_id", "is not a report ID"),
        ("vendor = 0x28bd\ninterface = -1", 3, "device.interface", "USB interface number"),
        ('vendor = 0x28bd\ninterface = "0"', 3, "device.interface", "USB interface number"),
        ("vendor = 0x28bd\ninterface = true", 3, "device.interface", "USB interface number"),
        ("vendor = 0x28bd\nusagepage = 13", 3, "device.usagepage", "did you mean 'usage_page'"),
    ],
)
def test_bad_interface_keys_are_located(
    tmp_path: Path, device: str, line: int, key: str, what: str
) -> None:
    f = write(tmp_path, device)
    cfg = load([f])
    assert not cfg.files
    msgs = [str(e) for e in cfg.errors]
    assert any(m.startswith(f"{f}:{line}: {key}:") and what in m for m in msgs), msgs
