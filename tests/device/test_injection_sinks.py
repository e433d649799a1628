"""The injection sinks besides the in-kernel injector, and how one is chosen per device.

- the choice (everywhere, with fakes): in-kernel injector first, our own mirrors get none, and
  every refused option is named in the log line;
- the uhid mirror (VM tier): a sibling HID device with the original's descriptor and identity
  appears, an injected report is read back from the mirror's hidraw node (and its evdev node,
  through the kernel's own hid-input), and never from the original's;
- the uinput sink (VM tier): an input device appears, an injected Ctrl+C report gives
  KEY_LEFTCTRL/KEY_C press then release, read back with python-evdev;
- 50 create/inject/close cycles of each leave fds, tasks, threads and kernel devices where they
  started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import evdev
import pytest
from evdev import ecodes as e

from hidbpfd.devices.chooser import BpfInjector, injector_factory
from hidbpfd.devices.hidraw import HidrawReader
from hidbpfd.devices.udev import HidDevice, device_id_from
from hidbpfd.devices.uhid import SYSFS_UHID, UhidDevice
from hidbpfd.devices.uhid_mirror import NAME_SUFFIX, PHYS_SUFFIX, UhidMirror, _fit, is_mirror
from hidbpfd.devices.uinput import UinputInjector
from hidbpfd.model import DeviceId
from hidbpfd.replay.recording import load
from tests.device.conftest import open_fds, run
from tests.helpers import LIMIT_S

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
MACRO = load(CAPTURES / "macro-key.hid").devices[0]
VENDOR = load(CAPTURES / "wakeup-reinit.hid").devices[0]
CTRL_C = bytes.fromhex("01 01 06 00")
RELEASE = bytes.fromhex("01 00 00 00")
CYCLES = 50
_serial = itertools.count(1)


class FakeSource:
    """The part of BpfEventSource the factory asks: is the in-kernel injector loaded?"""

    def __init__(self, loaded: bool) -> None:
        self.loaded = loaded
        self.skipped = {} if loaded else {"hidbpfd_io_input": "kfunc hid_bpf_input_report absent"}

    def has_program(self, name: str) -> bool:
        return self.loaded and name == "hidbpfd_io_input"


Checks = Mapping[str, Mapping[str, object]]


def probe_says(uhid: bool | None, uinput: bool | None) -> Callable[[], Checks]:
    """A probe answer; None for an option means "ask the real probe"."""

    def answer() -> Checks:
        from hidbpfd.kernel.probe import probe

        real = probe(load=False)
        out = dict(real)
        for key, ok in (("uhid", uhid), ("uinput", uinput)):
            if ok is not None:
                out[key] = {"ok": ok, "reason": f"/dev/{key} disabled for this test"}
        return out

    return answer


def factory(loaded: bool, uhid: bool | None, uinput: bool | None, **kw: Any) -> Any:
    return injector_factory(FakeSource(loaded), probe=probe_says(uhid, uinput), **kw)  # type: ignore[arg-type]


def fake_device(
    tmp_path: Path, descriptor: bytes, *, name: str = MACRO.name, phys: str = MACRO.phys
) -> tuple[HidDevice, Path]:
    """A HidDevice whose descriptor lives in a sysfs tree under ``tmp_path``."""
    hid_id = "0003:1209:A001.00FF"
    sys_root = tmp_path / "sys"
    node = sys_root / "bus/hid/devices" / hid_id
    node.mkdir(parents=True)
    (node / "report_descriptor").write_bytes(descriptor)
    dev = DeviceId(3, 0x1209, 0xA001, name, "", phys, hid_id)
    return HidDevice(dev, "/dev/hidraw-none", ""), sys_root


# --- the choice: fakes, runs everywhere ------------------------------------------------------


def test_in_kernel_injector_comes_first(tmp_path: Path) -> None:
    hd, sys_root = fake_device(tmp_path, MACRO.descriptor)
    inj = factory(True, True, True, sys_root=sys_root)(hd)
    assert isinstance(inj, BpfInjector) and inj.hid_id == 0xFF


def test_a_mirror_gets_no_sink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hidbpfd.devices.chooser")
    hd, sys_root = fake_device(
        tmp_path, MACRO.descriptor, name=MACRO.name + NAME_SUFFIX, phys=MACRO.phys + PHYS_SUFFIX
    )
    assert is_mirror(hd.id)
    assert factory(False, True, True, sys_root=sys_root)(hd) is None
    assert "is a hidbpfd uhid mirror; it gets no injection sink" in caplog.text


def test_none_names_every_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hd, sys_root = fake_device(tmp_path, MACRO.descriptor)
    assert factory(False, False, False, sys_root=sys_root)(hd) is None
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == (
        '0003:1209:A001.00FF "hidbpfd demo macro keyboard": no injection sink: '
        "in-kernel injector: kfunc hid_bpf_input_report absent; "
        "uhid: /dev/uhid disabled for this test; uinput: /dev/uinput disabled for this test"
    )


def test_a_failing_sink_falls_through_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """uhid: no descriptor in sysfs; uinput: a vendor device with nothing to map."""
    hd, sys_root = fake_device(tmp_path, VENDOR.descriptor)
    (sys_root / "bus/hid/devices" / hd.id.hid_id / "report_descriptor").unlink()
    node = tmp_path / "node"  # access() is all the factory checks before building
    node.touch()
    assert factory(False, True, False, sys_root=sys_root, uhid_path=str(node))(hd) is None
    assert "uhid: FileNotFoundError: [Errno 2] no report descriptor: " in caplog.text
    (sys_root / "bus/hid/devices" / hd.id.hid_id / "report_descriptor").write_bytes(
        VENDOR.descriptor
    )
    caplog.clear()
    assert factory(False, False, True, sys_root=sys_root, uinput_path=str(node))(hd) is None
    assert (
        "uinput: ValueError: nothing in the report descriptor maps to an evdev event" in caplog.text
    )


def test_an_unusable_node_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hd, sys_root = fake_device(tmp_path, MACRO.descriptor)
    missing = str(tmp_path / "no-such-uhid")
    assert factory(False, True, False, sys_root=sys_root, uhid_path=missing)(hd) is None
    assert f"uhid: {missing} is not readable and writable by uid" in caplog.text


def test_mirror_identity_fits_uhid() -> None:
    long = "x" * 200
    assert _fit(long, NAME_SUFFIX, 127).endswith(NAME_SUFFIX)
    assert len(_fit(long, NAME_SUFFIX, 127).encode()) == 127
    assert _fit("é" * 70, PHYS_SUFFIX, 63).endswith(PHYS_SUFFIX)  # never cut inside a character
    assert len(_fit("é" * 70, PHYS_SUFFIX, 63).encode()) <= 63


# --- on real devices (the VM) ----------------------------------------------------------------


@pytest.fixture
def uinput_available() -> None:
    """Skip (or fail under HIDBPFD_REQUIRE_DEVICE=1) unless /dev/uinput can be opened."""
    if os.access("/dev/uinput", os.R_OK | os.W_OK):
        return
    reason = "no usable /dev/uinput here; the device tier runs in the VM (hidbpfd vm)"
    if os.environ.get("HIDBPFD_REQUIRE_DEVICE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def uevent(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@contextlib.asynccontextmanager
async def original(rec: Any = MACRO) -> AsyncIterator[HidDevice]:
    """A uhid device playing the capture's device, as the daemon would see it."""
    dev = UhidDevice()
    dev.create(
        rec.name,
        rec.descriptor,
        rec.bus,
        rec.vendor,
        rec.product,
        phys=f"hidbpfd-test/{os.getpid()}/{next(_serial)}",
    )
    try:
        await dev.wait_started(LIMIT_S)
        node = await dev.wait_hidraw(LIMIT_S, udev=False)
        hid = dev.hid_name()
        assert hid is not None
        did = device_id_from(hid, uevent(SYSFS_UHID / hid / "uevent"))
        yield HidDevice(did, node, str(SYSFS_UHID / hid / "hidraw" / Path(node).name))
    finally:
        dev.destroy()


async def until(cond: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


def event_node(sysfs_input_parent: Path) -> str:
    """``/dev/input/eventN`` of the (single) input device under a sysfs device."""
    (inp,) = (sysfs_input_parent / "input").iterdir()
    (ev,) = (p for p in inp.iterdir() if p.name.startswith("event"))
    return f"/dev/input/{ev.name}"


async def read_keys(dev: evdev.InputDevice, frames: int, limit_s: float = LIMIT_S) -> list[str]:
    """Key presses/releases, each frame closed by "SYN", until ``frames`` frames; autorepeat
    (value 2), MSC_SCAN and frames left empty by them are left out."""
    out: list[str] = []
    frame: list[str] = []
    deadline = time.monotonic() + limit_s
    while out.count("SYN") < frames:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; read so far: {out} + {frame}")
        try:
            events = list(dev.read())
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        for ev in events:
            if ev.type == e.EV_SYN and ev.code == e.SYN_REPORT:
                if frame:
                    out.extend([*frame, "SYN"])
                frame = []
            elif ev.type == e.EV_KEY and ev.value in (0, 1):
                frame.append(f"{e.KEY[ev.code]} {ev.value}")
    return out


EXPECTED_KEYS = ["KEY_LEFTCTRL 1", "KEY_C 1", "SYN", "KEY_LEFTCTRL 0", "KEY_C 0", "SYN"]


def test_uhid_mirror(uhid_available: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hidbpfd.devices")

    async def body() -> None:
        async with original() as hd:
            mirror = factory(False, None, False)(hd)
            assert isinstance(mirror, UhidMirror), caplog.text
            try:
                assert (
                    f"{hd.id.describe()}: injecting through uhid mirror (not used: in-kernel "
                    "injector: kfunc hid_bpf_input_report absent)" in caplog.text
                )
                mirror.inject(CTRL_C)  # before it is up: kept, sent once it is
                assert list(mirror.pending) == [CTRL_C]
                await until(lambda: mirror.ready, "the mirror up")
                assert not mirror.pending and not mirror.failed
                hid = mirror.uhid.hid_name()
                assert hid is not None and mirror.name == f"uhid mirror ({hid})"
                assert hid.startswith("0003:1209:A001.") and hid != hd.id.hid_id
                ident = uevent(SYSFS_UHID / hid / "uevent")
                assert ident["HID_NAME"] == MACRO.name + " (hidbpfd)"
                assert ident["HID_PHYS"] == hd.id.phys + "/hidbpfd"
                assert ident["HID_ID"] == "0003:00001209:0000A001"
                assert (SYSFS_UHID / hid / "report_descriptor").read_bytes() == MACRO.descriptor
                mirror_id = device_id_from(hid, ident)
                assert is_mirror(mirror_id) and not is_mirror(hd.id)
                assert factory(False, None, None)(HidDevice(mirror_id, mirror.hidraw, "")) is None

                keys = evdev.InputDevice(event_node(SYSFS_UHID / hid))
                with HidrawReader(mirror.hidraw) as seen, HidrawReader(hd.hidraw) as orig:
                    try:
                        assert keys.name == MACRO.name + " (hidbpfd)"
                        # the report queued before it was up went through: Ctrl+C is held
                        assert sorted(keys.active_keys()) == sorted([e.KEY_LEFTCTRL, e.KEY_C])
                        for report in (RELEASE, CTRL_C, RELEASE):
                            mirror.inject(report)
                        for report in (RELEASE, CTRL_C, RELEASE):
                            assert (await seen.read(LIMIT_S))[1] == report
                        got = await read_keys(keys, 3)
                        assert got == ["KEY_LEFTCTRL 0", "KEY_C 0", "SYN", *EXPECTED_KEYS]
                        await asyncio.sleep(0.1)
                        assert orig.pending() == 0, "an injected report reached the original"
                    finally:
                        keys.close()
            finally:
                mirror.close()
            assert not (SYSFS_UHID / hid).exists(), "the mirror outlived close()"
            with pytest.raises(OSError) as err:
                mirror.inject(CTRL_C)
            assert err.value.errno == errno.EBADF

    run(body())


def test_uinput_sink(uinput_available: None, tmp_path: Path) -> None:
    hd, sys_root = fake_device(tmp_path, MACRO.descriptor)

    async def body() -> str:
        sink = factory(False, False, None, sys_root=sys_root)(hd)
        assert isinstance(sink, UinputInjector)
        try:
            assert sink.sysname.startswith("input") and sink.name == f"uinput ({sink.sysname})"
            node = sink.event_node()
            await until(lambda: os.path.exists(node), f"{node}")
            dev = evdev.InputDevice(node)
            try:
                assert dev.name == MACRO.name + " (hidbpfd)"
                assert dev.phys == MACRO.phys + "/hidbpfd"
                assert (dev.info.bustype, dev.info.vendor, dev.info.product) == (3, 0x1209, 0xA001)
                caps = dev.capabilities()
                assert {e.KEY_LEFTCTRL, e.KEY_C, e.KEY_F13} <= set(caps[e.EV_KEY])
                assert e.EV_REP in caps[e.EV_SYN] and e.EV_FF not in caps[e.EV_SYN]
                sink.inject(CTRL_C)
                sink.inject(RELEASE)
                assert await read_keys(dev, 2) == EXPECTED_KEYS
                sink.inject(RELEASE)  # nothing changed: no events
                await asyncio.sleep(0.1)
                with pytest.raises(BlockingIOError):
                    list(dev.read())
            finally:
                dev.close()
        finally:
            sink.close()
        return sink.sysname

    sysname = run(body())
    assert not os.path.exists(f"/sys/devices/virtual/input/{sysname}"), "outlived close()"


def counts() -> dict[str, int]:
    tasks = len(asyncio.all_tasks())
    uhid = len([p for p in SYSFS_UHID.iterdir() if ":" in p.name]) if SYSFS_UHID.exists() else 0
    inputs = len(os.listdir("/sys/devices/virtual/input"))
    return {
        "fds": open_fds(),
        "tasks": tasks,
        "threads": threading.active_count(),
        "uhid devices": uhid,
        "virtual input devices": inputs,
    }


def test_cycles_leave_nothing_behind(
    uhid_available: None, uinput_available: None, tmp_path: Path
) -> None:
    fake, sys_root = fake_device(tmp_path, MACRO.descriptor)

    async def body() -> None:
        async with original() as hd:
            mirrors = factory(False, None, False)
            uinputs = factory(False, False, None, sys_root=sys_root)

            async def mirror_cycle(i: int) -> None:
                m = mirrors(hd)
                assert isinstance(m, UhidMirror)
                m.inject(CTRL_C)
                if i % 2:  # every other one: closed before it came up
                    await until(lambda: m.ready, "mirror up")
                    m.inject(RELEASE)
                m.close()
                await asyncio.sleep(0)

            async def uinput_cycle(i: int) -> None:
                u = uinputs(fake)
                assert isinstance(u, UinputInjector)
                u.inject(CTRL_C)
                u.inject(RELEASE)
                u.close()
                await asyncio.sleep(0)

            await mirror_cycle(1)  # warm-up: imports, the probe's cache
            await uinput_cycle(1)
            await asyncio.sleep(0.05)
            start = counts()
            t0 = time.monotonic()
            for i in range(CYCLES):
                await mirror_cycle(i)
                await uinput_cycle(i)
            took = time.monotonic() - t0
            await until(lambda: counts() == start, f"back to {start} (now {counts()})")
            print(f"{CYCLES} mirror + uinput cycles in {took:.1f} s; at the end {counts()}")

    run(body(), timeout_s=300)
