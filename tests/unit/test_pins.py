"""Programs loaded by another loader: finding their pins (``ROOT/<sysname>/<object>/<map>``),
the ``pin_roots`` setting and ``run --pin-root``. The pins here are plain files: the scan only
looks at names (opening them is the VM test's, tests/device/test_pinned_programs_device.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.config.errors import ConfigErrors
from hidbpfd.config.settings import Settings, load_settings
from hidbpfd.kernel import pins
from hidbpfd.runtime import pinned_loader, pinned_scan

DEV = "0003:28BD:0905.000A"


@pytest.mark.parametrize(
    ("sysname", "hid_id"),
    [
        ("0003:28BD:0905.0001", 1),
        (DEV, 10),
        ("0005:046D:B034.01F3", 0x1F3),
        ("0003_28BD_0905_000A", 10),  # the pin directory's name (a bpffs takes no dots)
        ("0003:28bd:0905.0001", None),  # the kernel writes upper-case hex
        ("0003:28BD:0905", None),
        ("hidraw0", None),
        ("0003:28BD:0905.0001/x", None),
        ("", None),
    ],
)
def test_hid_id_of_sysname(sysname: str, hid_id: int | None) -> None:
    assert pins.hid_id_of(sysname) == hid_id


def test_pin_name() -> None:
    assert pins.pin_name("0003:28BD:0905.0001") == "0003_28BD_0905_0001"  # udev-hid-bpf's


def _pin(
    root: Path, sysname: str, obj: str, maps: tuple[str, ...] = pins.MAPS, *, raw: bool = False
) -> Path:
    d = root / (sysname if raw else pins.pin_name(sysname)) / obj
    d.mkdir(parents=True)
    for m in maps:
        (d / m).touch()
    return d


def test_scan_finds_objects_with_the_request_ring(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pen = _pin(a, DEV, "pen-proximity")
    _pin(a, DEV, "plain-fix", ("hid_bpf_ops", "some_map"))  # no <hidbpfd/api.h>: not listed
    _pin(a, "0003:28BD:0905.000B", "other-device")  # another device's
    half = _pin(b, DEV, "half", (pins.MAPS[0], pins.MAPS[1]))
    raw = _pin(b, DEV, "on-another-fs", raw=True)  # the sysname itself, dots and all
    (a / pins.pin_name(DEV) / "a-file").touch()  # not an object directory
    found = pins.scan([str(a), str(b), str(tmp_path / "missing")], DEV)
    assert [(p.root, p.name, p.path, p.missing) for p in found] == [
        (str(a), "pen-proximity", str(pen), ()),
        (str(b), "half", str(half), pins.MAPS[2:]),
        (str(b), "on-another-fs", str(raw), ()),
    ]
    assert found[0].label == f"pinned:{pen}"
    assert pins.scan([str(a)], "0003:28BD:0905.000C") == []
    assert pins.scan([str(a)], "../a") == []  # never a path outside a root's devices
    assert pins.scan([str(a)], pins.pin_name(DEV)) == []  # asked by sysname only


def test_the_daemon_scan_says_why_a_half_pinned_object_cannot_be_served(tmp_path: Path) -> None:
    pen = _pin(tmp_path, DEV, "pen")
    half = _pin(tmp_path, DEV, "zhalf", (pins.MAPS[0],))
    got = pinned_scan([str(tmp_path)])(DEV)
    assert got[0] == (str(pen), "")
    assert got[1][0] == str(half)
    assert got[1][1].startswith(pins.NOT_SERVED) and "hidbpfd_state" in got[1][1]


def test_a_pinned_instance_names_the_pin_it_cannot_open(tmp_path: Path) -> None:
    pen = _pin(tmp_path, DEV, "pen")  # plain files, not BPF objects
    inst = pinned_loader(str(pen), 10, lambda raw: None)
    assert inst.pinned.sysname == pins.pin_name(DEV) and inst.pinned.name == "pen"
    assert inst.callbacks == frozenset() and inst.engine == "userspace"
    with pytest.raises(OSError, match="hidbpfd_requests"):
        inst.load()
    assert inst.epoll_fd == -1  # nothing left open


def test_pin_roots_setting(tmp_path: Path) -> None:
    assert Settings().pin_roots == ("/sys/fs/bpf/hid",)
    f = tmp_path / "hidbpfd.toml"
    f.write_text('[daemon]\npin_roots = ["/sys/fs/bpf/hid", "/run/bpf"]\n')
    assert load_settings(f).pin_roots == ("/sys/fs/bpf/hid", "/run/bpf")
    f.write_text('[daemon]\npin_roots = "/sys/fs/bpf/hid"\n')
    with pytest.raises(ConfigErrors, match=r":2: daemon.pin_roots: .* must be a list"):
        load_settings(f)
    assert Settings().override(pin_roots=["/x"]).pin_roots == ("/x",)
    assert Settings().override(pin_roots=None).pin_roots == ("/sys/fs/bpf/hid",)
