"""``hidbpfd devices`` and ``hidbpfd record`` on real uhid devices (VM tier), and the interface
keys with the daemon running: a two-interface "tablet" — two uhid devices with the same vendor,
product and phys prefix but different report descriptors (the XP-Pen Artist 24 pen interface and
a keyboard/consumer one) — gets its policy on the pen interface only.

uhid devices have no USB parent, so the interface-number key is checked on a fake sysfs tree
(tests/unit/test_device_match.py); here the descriptor-content keys do the picking. The CLI runs
as a subprocess (as a user runs it) while this process's loop serves the uhid devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import BUS_USB
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.recording import parse
from tests.device.conftest import run

ROOT = Path(__file__).resolve().parents[2]
PEN = load_rec(ROOT / "tests/captures/artist24-pen-proximity.hid").devices[0].descriptor
KEYS = load_rec(ROOT / "tests/captures/k400-release-guard.hid").devices[0].descriptor
VENDOR = 0x1234
HIDBPFD = [sys.executable, "-m", "hidbpfd"]
pytestmark = pytest.mark.device

PEN_POLICY = """[device]
vendor = 0x1234
product = {product:#06x}
usage_page = 0x0d
usage = 0x02

[[policy]]
type = "defer"
name = "pen-out-of-proximity"
match = "07 00"
delay_ms = 20
on_cancel = "drop"
"""


@contextlib.asynccontextmanager
async def tablet(product: int) -> AsyncIterator[list[tuple[UhidDevice, str]]]:
    """Two uhid devices, one physical tablet: interface 0 keys, interface 1 pen."""
    devs: list[tuple[UhidDevice, str]] = []
    tag = f"usb-hidbpfd-test-{os.getpid()}-{product:04x}"
    try:
        for iface, descriptor in ((0, KEYS), (1, PEN)):
            dev = UhidDevice()
            dev.create(
                "hidbpfd test tablet",
                descriptor,
                BUS_USB,
                VENDOR,
                product,
                phys=f"{tag}/input{iface}",
            )
            devs.append((dev, ""))
        for i, (dev, _) in enumerate(devs):
            await dev.wait_started(90)
            devs[i] = (dev, await dev.wait_hidraw(90))
        yield devs
    finally:
        for dev, _ in devs:
            dev.destroy()


async def cli(*args: str, timeout_s: float = 600.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *HIDBPFD, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def devices_json(cfg: Path, sock: Path) -> dict[str, dict[str, Any]]:
    rc, out, err = await cli("devices", "--json", "--config", str(cfg), "--socket", str(sock))
    assert rc == 0, err
    inv = json.loads(out)
    return {d["hid_id"]: d for d in inv["devices"]} | {"": inv}


async def until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def config(tmp_path: Path, product: int) -> Path:
    cfg = tmp_path / "devices.d"
    cfg.mkdir()
    (cfg / "60-1234__pen-proximity.toml").write_text(PEN_POLICY.format(product=product))
    return cfg


def test_devices_lists_uhid_devices(tmp_path: Path, uhid_available: None) -> None:
    product = 0x5A01
    cfg = config(tmp_path, product)

    async def body() -> None:
        async with tablet(product) as [(keys, keys_node), (pen, pen_node)]:
            by = await devices_json(cfg, tmp_path / "no.sock")
            k, p = by[keys.hid_name() or ""], by[pen.hid_name() or ""]
            for entry, node, iface in ((k, keys_node, 0), (p, pen_node, 1)):
                assert entry["hidraw"] == node
                assert (entry["bus"], entry["vendor"], entry["product"]) == (
                    "usb",
                    "1234",
                    f"{product:04x}",
                )
                assert entry["name"] == "hidbpfd test tablet"
                assert entry["phys"].endswith(f"/input{iface}")
                assert entry["interface"] is None  # uhid: no USB interface
                assert entry["driver"]  # hid-generic (or whatever bound it)
                assert entry["daemon"] == "no daemon"
            assert p["descriptor"]["applications"] == ["Digitizer 0x02"]
            assert p["descriptor"]["input"] == [{"id": 7, "size": 10}]
            assert k["descriptor"]["input"] == [{"id": 1, "size": 8}, {"id": 3, "size": 5}]
            assert k["descriptor"]["output"] == [{"id": 14, "size": 2}]
            assert [Path(f).name for f in p["policies"]] == ["60-1234__pen-proximity.toml"]
            assert p["near_misses"] == []
            assert k["policies"] == []
            assert [(Path(m["file"]).name, m["key"]) for m in k["near_misses"]] == [
                ("60-1234__pen-proximity.toml", "usage_page")
            ]
            assert p["kernel"]["filter"] in ("hold", "observe only")
            assert by[""]["daemon"] == "no daemon"
            rc, text, err = await cli("devices", "--config", str(cfg), "--socket", "/nonexistent")
            assert rc == 0, err
            assert f"{pen.hid_name()}" in text and pen_node in text
            assert "almost: 60-1234__pen-proximity.toml ([device] usage_page differs)" in text

    run(body(), 1500)


def test_policy_on_one_interface_with_the_daemon(tmp_path: Path, uhid_available: None) -> None:
    from hidbpfd.devices.hidraw import HidrawReader
    from hidbpfd.runtime import build_daemon

    product = 0x5A02
    cfg = config(tmp_path, product)
    sock = tmp_path / "control.sock"

    async def body() -> None:
        daemon = build_daemon([cfg], socket_path=str(sock), sleep_bus=None)
        task = asyncio.get_running_loop().create_task(daemon.run(), name="test-daemon")
        try:
            await asyncio.wait_for(daemon.ready.wait(), 600)
            async with tablet(product) as [(keys, _), (pen, pen_node)]:
                pen_id, keys_id = pen.hid_name() or "", keys.hid_name() or ""
                await until(
                    lambda: pen_id in daemon.managed and keys_id in daemon.present,
                    "the daemon took the pen interface on",
                    600,
                )
                assert keys_id not in daemon.managed
                by = await devices_json(cfg, sock)
                assert by[pen_id]["daemon"]["managed"] is True
                assert [Path(f).name for f in by[pen_id]["daemon"]["files"]] == [
                    "60-1234__pen-proximity.toml"
                ]
                assert by[keys_id]["daemon"] == {"managed": False}
                assert by[""]["daemon"] == f"pid {os.getpid()}"
                # and the policy works on the pen: an out-of-proximity report alone is held and
                # comes back (the defer re-injects it after 20 ms)
                out_of_prox = bytes.fromhex("07000000000000000000")
                with HidrawReader(pen_node) as reader:
                    pen.input(out_of_prox)
                    _, got = await reader.read(60)
                assert got == out_of_prox
                slot = daemon.dispatch.slots[pen_id]
                await until(lambda: slot.counters.matched >= 1, "the daemon heard the report")
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 60)

    run(body(), 1500)


def test_record_then_replay(tmp_path: Path, uhid_available: None) -> None:
    product = 0x5A03
    out = tmp_path / "tablet.hid"
    pen_reports = [
        bytes.fromhex("0720e02e401f00000000"),
        bytes.fromhex("0721302f541fb0040000"),
        bytes.fromhex("07000000000000000000"),
    ]
    key_reports = [bytes.fromhex("03e9000000"), bytes.fromhex("0300000000")]

    async def body() -> None:
        async with tablet(product) as [(keys, keys_node), (pen, pen_node)]:
            proc = await asyncio.create_subprocess_exec(
                *HIDBPFD,
                "record",
                f"vendor={VENDOR:#06x},product={product:#06x}",  # both interfaces: D: lines
                "-o",
                str(out),
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await until(
                    lambda: (
                        proc.returncode is not None
                        or (out.exists() and out.read_text().count("R: ") == 2)
                    ),
                    "record wrote both headers",
                    600,
                )
                if proc.returncode is not None:
                    _, early = await proc.communicate()
                    raise AssertionError(f"record exited {proc.returncode}: {early.decode()}")
                for i in range(3):
                    pen.input(pen_reports[i])
                    if i < 2:
                        keys.input(key_reports[i])
                    await asyncio.sleep(0.05)
                await until(
                    lambda: out.read_text().count("E: ") == 5, "record wrote five reports", 60
                )
                proc.send_signal(signal.SIGINT)
                _, err = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err.decode()
            assert "5 report(s) written" in err.decode()
            rec = parse(out.read_text(), str(out))
            by_phys = {d.phys.rsplit("/", 1)[1]: d for d in rec.devices}
            assert by_phys["input0"].descriptor == KEYS and by_phys["input1"].descriptor == PEN
            assert [d for _, d in by_phys["input1"].events] == pen_reports
            assert [d for _, d in by_phys["input0"].events] == key_reports
            assert {(d.bus, d.vendor, d.product) for d in rec.devices} == {
                (BUS_USB, VENDOR, product)
            }
            rc, trace, err2 = await cli("replay", "--config", str(ROOT / "config"), str(out))
            assert rc == 0, err2
            lines = [json.loads(x) for x in trace.splitlines()]
            assert all(x["kind"] == "pass" for x in lines)
            assert [bytes.fromhex(x["data"]) for x in lines if x["data"].startswith("07")] == (
                pen_reports
            )
            assert [bytes.fromhex(x["data"]) for x in lines if x["data"].startswith("03")] == (
                key_reports
            )
            del keys_node, pen_node

    run(body(), 1500)
