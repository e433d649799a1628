"""``hidbpfd devices`` and ``hidbpfd record`` on a fake sysfs tree (host tier): the fields, the
matching and almost-matching policy files, the human table, DEVICE selection, and the capture
text ``record`` writes read back by the replay's parser. Real devices: tests/device/
test_devices_record.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.cli import main
from hidbpfd.devices import recorder
from hidbpfd.devices.recorder import SelectError, Target, event_line, header, parse_match, select
from hidbpfd.inventory import inventory, kernel_view, render
from hidbpfd.model import DeviceId
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.recording import parse

ROOT = Path(__file__).resolve().parents[2]
PEN = load_rec(ROOT / "tests/captures/artist24-pen-proximity.hid").devices[0].descriptor
K400 = load_rec(ROOT / "tests/captures/k400-release-guard.hid").devices[0].descriptor
RECEIVER = load_rec(ROOT / "tests/captures/receiver-dj-mode.hid").devices[0].descriptor
KV = kernel_view(
    {
        "hid_bpf_struct_ops": {"ok": False, "reason": "no struct hid_bpf_ops"},
        "tracing": {"ok": True, "reason": "fentry attaches"},
        "uhid": {"ok": False, "reason": "/dev/uhid missing"},
        "uinput": {"ok": False, "reason": "/dev/uinput missing"},
    },
    "kfunc hid_bpf_input_report not in kernel BTF",
)


def hid_device(
    sys: Path,
    parent: str,
    hid_id: str,
    name: str,
    phys: str,
    descriptor: bytes,
    hidraw: str,
    interface: int | None = None,
) -> None:
    where = sys / parent
    d = where / hid_id
    (d / "hidraw" / hidraw).mkdir(parents=True)
    if interface is not None:
        (where / "bInterfaceNumber").write_text(f"{interface:02x}\n")
    bus, vendor, product = hid_id.split(".", maxsplit=1)[0].split(":")
    (d / "uevent").write_text(
        f"DRIVER=hid-generic\nHID_ID={bus}:0000{vendor}:0000{product}\nHID_NAME={name}\n"
        f"HID_PHYS={phys}\nHID_UNIQ=\nMODALIAS=hid:b{bus}g0001v0000{vendor}p0000{product}\n"
    )
    (d / "report_descriptor").write_bytes(descriptor)
    drivers = sys / "bus/hid/drivers/hid-generic"
    drivers.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(drivers, d), d / "driver")
    links = sys / "bus/hid/devices"
    links.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, links), links / hid_id)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A two-interface tablet on USB (pen on 1, the K400-like keys on 0) and a Bluetooth
    keyboard (uhid: no USB interface)."""
    sys = tmp_path / "sys"
    usb = "devices/pci0000:00/0000:00:14.0/usb1/1-3"
    pen_phys, pad_phys = "usb-0000:00:14.0-3/input1", "usb-0000:00:14.0-3/input0"
    hid_device(sys, f"{usb}/1-3:1.0", "0003:28BD:093A.0001", "Tablet", pad_phys, K400, "hidraw0", 0)
    hid_device(sys, f"{usb}/1-3:1.1", "0003:28BD:093A.0002", "Tablet", pen_phys, PEN, "hidraw1", 1)
    hid_device(
        sys,
        "devices/virtual/misc/uhid",
        "0005:046D:B342.0003",
        "Keyboard K380",
        "aa:bb:cc:dd:ee:ff",
        K400,
        "hidraw2",
    )
    return sys


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "devices.d"
    cfg.mkdir()
    policy = '[[policy]]\ntype = "defer"\nmatch = "07 00"\ndelay_ms = 20\n'
    (cfg / "60-28bd__093a-pen.toml").write_text(
        "[device]\nvendor = 0x28bd\nproduct = 0x093a\nusage_page = 0x0d\n" + policy
    )
    (cfg / "60-28bd__093a-iface0.toml").write_text(
        "[device]\nvendor = 0x28bd\nproduct = 0x093a\ninterface = 0\n" + policy
    )
    (cfg / "60-046d__b342-bt.toml").write_text(
        '[device]\nbus = "bluetooth"\nvendor = 0x046d\nproduct = 0xb342\nreport_id = 3\n' + policy
    )
    return cfg


def listing(sysfs: Path, config: Path) -> dict[str, Any]:
    inv = inventory(
        [config],
        str(sysfs / "no-daemon.sock"),
        hid_devices=sysfs / "bus/hid/devices",
        sys_root=sysfs,
        kv=KV,
    )
    return {d["hid_id"]: d for d in json.loads(json.dumps(inv))["devices"]} | {"": inv}


def test_devices_fields(sysfs: Path, config: Path) -> None:
    by = listing(sysfs, config)
    pad, pen, bt = by["0003:28BD:093A.0001"], by["0003:28BD:093A.0002"], by["0005:046D:B342.0003"]
    assert (pen["bus"], pen["vendor"], pen["product"], pen["name"]) == (
        "usb",
        "28bd",
        "093a",
        "Tablet",
    )
    assert (pen["phys"], pen["uniq"], pen["hidraw"], pen["driver"]) == (
        "usb-0000:00:14.0-3/input1",
        "",
        "/dev/hidraw1",
        "hid-generic",
    )
    assert (pad["interface"], pen["interface"], bt["interface"]) == (0, 1, None)
    assert pen["descriptor"] == {
        "applications": ["Digitizer 0x02"],
        "input": [{"id": 7, "size": 10}],
        "output": [],
        "feature": [],
    }
    assert bt["descriptor"]["input"] == [{"id": 1, "size": 8}, {"id": 3, "size": 5}]
    assert bt["descriptor"]["output"] == [{"id": 14, "size": 2}]
    assert bt["bus"] == "bluetooth"
    assert pen["kernel"]["filter"] == "observe only"
    assert pen["kernel"]["inject_sink"] == "none"
    assert "uhid: /dev/uhid missing" in pen["kernel"]["inject_reason"]
    assert pen["daemon"] == "no daemon" and by[""]["daemon"] == "no daemon"


def test_devices_matches_and_near_misses(sysfs: Path, config: Path) -> None:
    by = listing(sysfs, config)
    names = {k: [Path(p).name for p in d["policies"]] for k, d in by.items() if k}
    assert names == {
        "0003:28BD:093A.0001": ["60-28bd__093a-iface0.toml"],
        "0003:28BD:093A.0002": ["60-28bd__093a-pen.toml"],
        "0005:046D:B342.0003": ["60-046d__b342-bt.toml"],
    }
    near = {
        k: [(Path(m["file"]).name, m["key"]) for m in d["near_misses"]] for k, d in by.items() if k
    }
    assert near == {
        "0003:28BD:093A.0001": [("60-28bd__093a-pen.toml", "usage_page")],
        "0003:28BD:093A.0002": [("60-28bd__093a-iface0.toml", "interface")],
        "0005:046D:B342.0003": [],
    }


def test_devices_table(sysfs: Path, config: Path) -> None:
    inv = inventory(
        [config],
        str(sysfs / "none.sock"),
        hid_devices=sysfs / "bus/hid/devices",
        sys_root=sysfs,
        kv=KV,
    )
    text = render(inv)
    lines = text.splitlines()
    assert lines[0] == "daemon: no daemon"
    assert lines[1].split() == ["HID", "ID", "HIDRAW", "BUS", "VID:PID", "DRIVER", "NAME"]
    pen = text[text.index("0003:28BD:093A.0002") :]
    assert "/dev/hidraw1" in pen.splitlines()[0] and "28bd:093a" in pen.splitlines()[0]
    assert "interface 1" in pen
    assert "applications: Digitizer 0x02; reports: input #7 10 B" in pen
    assert "policies: 60-28bd__093a-pen.toml" in pen
    assert "almost: 60-28bd__093a-iface0.toml ([device] interface differs)" in pen
    assert "kernel: observe only; inject via none" in pen


def test_devices_cli_without_devices_or_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hidbpfd.inventory as inv_mod

    monkeypatch.setattr(inv_mod, "HID_DEVICES", tmp_path / "nothing")
    assert (
        main(
            ["devices", "--json", "--socket", str(tmp_path / "s"), "--config", str(ROOT / "config")]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["devices"] == [] and out["daemon"] == "no daemon" and out["config_errors"] == []
    assert main(["devices", "--socket", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.strip() == "no HID devices (daemon: no daemon)"


# ------------------------------------------------------------------------------ record


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("vendor=0x28bd,product=0x0905", {"vendor": 0x28BD, "product": 0x0905}),
        ("name=XP-Pen*", {"name": "XP-Pen*"}),
        ("bus=bluetooth,report_id=3", {"bus": 5, "report_id": 3}),
        ("bus=3,usage_page=0x0d,usage=2", {"bus": 3, "usage_page": 13, "usage": 2}),
        ("interface=1", {"interface": 1}),
    ],
)
def test_parse_match(spec: str, want: dict[str, object]) -> None:
    m = parse_match(spec)
    assert {k: getattr(m, k) for k in m.keys} == want


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("vendor", "is not key=value"),
        ("colour=red", "is not key=value"),
        ("vendor=xp", "vendor 'xp' is not a number"),
        ("usage=2", "usage needs usage_page"),
    ],
)
def test_parse_match_errors(spec: str, why: str) -> None:
    with pytest.raises(SelectError, match=why):
        parse_match(spec)


def test_select(sysfs: Path) -> None:
    hid = sysfs / "bus/hid/devices"

    def picked(*specs: str) -> list[str]:
        return [t.id.hid_id for t in select(specs, hid, sysfs)]

    assert picked() == ["0003:28BD:093A.0001", "0003:28BD:093A.0002", "0005:046D:B342.0003"]
    assert picked("/dev/hidraw1") == ["0003:28BD:093A.0002"]
    assert picked("hidraw2", "0003:28bd:093a.0001") == [
        "0005:046D:B342.0003",
        "0003:28BD:093A.0001",
    ]
    assert picked("vendor=0x28bd") == ["0003:28BD:093A.0001", "0003:28BD:093A.0002"]
    assert picked("vendor=0x28bd,usage_page=0x0d") == ["0003:28BD:093A.0002"]
    assert picked("vendor=0x28bd,interface=0") == ["0003:28BD:093A.0001"]
    assert picked("bus=bluetooth", "hidraw2") == ["0005:046D:B342.0003"]  # each once
    with pytest.raises(SelectError, match="matches 'name=Wacom\\*'"):
        picked("name=Wacom*")
    with pytest.raises(SelectError, match="hidraw9"):
        picked("/dev/hidraw9")


def test_record_text_reads_back_as_a_capture() -> None:
    t0 = Target(DeviceId(3, 0x28BD, 0x093A, "Tablet", "", "usb-x/input1"), "/dev/hidraw1", PEN)
    t1 = Target(DeviceId(5, 0x046D, 0xB342, "K380", "aa:bb", "bt"), "/dev/hidraw2", K400)
    text = (
        header(0, t0)
        + header(1, t1)
        + "D: 0\n"
        + event_line(0, bytes.fromhex("0720e02e401f00000000"))
        + "D: 1\n"
        + event_line(1_234_567_000, bytes.fromhex("03e9000000"))
        + "D: 0\n"
        + event_line(2_000_001_999, bytes.fromhex("07000000000000000000"))
    )
    rec = parse(text)
    a, b = rec.devices
    assert (a.name, a.phys, a.bus, a.vendor, a.product, a.descriptor) == (
        "Tablet",
        "usb-x/input1",
        3,
        0x28BD,
        0x093A,
        PEN,
    )
    assert (b.uniq, b.bus, b.descriptor) == ("aa:bb", 5, K400)
    assert a.events == [
        (0, bytes.fromhex("0720e02e401f00000000")),
        (2_000_001_000, bytes.fromhex("07000000000000000000")),
    ]
    assert b.events == [(1_234_567_000, bytes.fromhex("03e9000000"))]


def test_record_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "HID_DEVICES", tmp_path / "nothing")
    assert main(["record", "--duration", "0.1"]) == 1
    assert "no HID device with a hidraw node is present" in capsys.readouterr().err
    assert main(["record", "vendor=oops"]) == 1
    assert "hidbpfd record: 'vendor=oops': vendor 'oops' is not a number. Try: hidbpfd devices" in (
        capsys.readouterr().err
    )
