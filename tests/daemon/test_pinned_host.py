"""The daemon serving an object another loader pinned, on this kernel: a real bpffs (mounted
for the test; skipped where that is not allowed), the test object
``tests/bpf/programs/requests_test.bpf.c`` loaded by this test as "the other loader" (not
attached: this kernel has no HID-BPF) with its maps pinned as
``<bpffs>/<sysname>/<object>/<map>``, and the real daemon finding and serving them through
``bpf_obj_get``; requests written by BPF_PROG_RUN as a HID-BPF program would write them."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.devices.udev import HidDevice
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import pins
from hidbpfd.kernel.pins import PinnedInstance
from hidbpfd.kernel.programs import ObjectInfo, ProgramInstance
from hidbpfd.runtime import pinned_loader, pinned_scan
from hidbpfd.service.status_text import render_status
from tests.daemon.harness import OTHER, running, until
from tests.daemon.test_programs_host import CALL, DEFER, INJECT, obj, op

pytestmark = pytest.mark.bpf
__all__ = ["obj"]  # the module fixture: the test object, built with hidbpfd compile


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "bpf"
    root.mkdir()
    mount = ["mount", "-t", "bpf", "bpf", str(root)]
    if subprocess.run(mount, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a bpffs here")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def managed_count(summary: str) -> int:
    """N of the status line's "N of M HID devices managed"."""
    m = re.match(r"(\d+) of \d+ HID devices managed", summary)
    assert m, summary
    return int(m.group(1))


def device(st: dict[str, Any], key: str) -> dict[str, Any]:
    (entry,) = [d for d in st["devices"] if d["hid_id"] == key]
    return entry


def other_loader(obj: Path, root: Path) -> tuple[ProgramInstance, Path]:
    """Load the object as another loader would, pin its API maps; returns it and the pins."""
    info = ObjectInfo(str(obj), "", "userspace", frozenset({"test_callback"}))
    inst = ProgramInstance(info, OTHER.kernel_id, lambda raw: None, attach=False)
    inst.load()
    d = root / pins.pin_name(OTHER.key) / "t"
    d.mkdir(parents=True)
    assert inst._obj is not None
    for m in pins.MAPS:
        lb.obj_pin(inst._obj.map(m).fd, str(d / m))
    return inst, d


def test_daemon_serves_an_object_another_loader_pinned(
    tmp_path: Path, obj: Path, bpffs: Path
) -> None:
    async def body() -> None:
        async with running(
            tmp_path, pinned_scan=pinned_scan([str(bpffs)]), pinned_loader=pinned_loader
        ) as r:
            key = OTHER.key
            assert key not in r.d.programs  # nothing pinned yet
            before = managed_count(r.d.status_line())
            assert not device(r.d.status(), key)["managed"]  # no [[policy]] for it
            mine, pin_dir = other_loader(obj, bpffs)
            try:
                r.d.reload()  # found by the next look (reload, change, the rescans after add)
                (sp,) = r.d.programs[key].programs
                assert sp.error == "" and isinstance(sp.handle, PinnedInstance), sp.error
                assert sp.pinned == str(pin_dir)
                # served by its program only: managed, in the headline too (issue 13)
                st = r.d.status()
                assert managed_count(st["summary"]) == before + 1, st["summary"]
                entry = device(st, key)
                assert entry["managed"] and entry["served_by"] == "programs", entry
                text = render_status(st)
                assert f"{key} " in text and ": programs only" in text, text
                # the other loader's program writes requests; the daemon serves them
                assert op(mine, INJECT, data=b"\x01\x02") == 0
                await until(lambda: r.got(key, "inject") == [b"\x01\x02"], "the injection")
                assert op(mine, DEFER, key=1, delay_ms=20, data=b"\x02\x00") == -1
                await until(lambda: r.got(key, "inject")[1:] == [b"\x02\x00"], "the held one")
                assert op(mine, CALL, key=2, arg=7) == 0  # refused: callbacks not reachable
                await until(
                    lambda: sp.server is not None and sp.server.counters.requests == 3, "all"
                )
                (dev,) = [d for d in r.d.status()["devices"] if d["hid_id"] == key]
                (st,) = dev["programs"]
                assert st["program"] == f"pinned:{pin_dir}"
                assert st["loader"] == "pinned by another loader"
                assert st["pinned"] == str(pin_dir)
                assert (st["requests"], st["held"], st["injected"]) == (3, 1, 2)
                assert st["refused"] == {"callback": 1} and st["errors"] == 0
                assert r.d.reload().changed == []  # found again: not served twice
                assert len(r.d.programs[key].programs) == 1

                # the device goes: dropped; it comes back: found at once
                r.w.remove(OTHER)
                assert key not in r.d.programs
                r.w.add(OTHER)
                (sp2,) = r.d.programs[key].programs
                assert sp2.pinned == str(pin_dir) and sp2.error == ""
                # the other loader unloads (pins removed): dropped at the next change
                for m in pins.MAPS:
                    os.unlink(pin_dir / m)
                os.rmdir(pin_dir)
                hd = HidDevice(OTHER, f"/dev/fake-{OTHER.kernel_id}", f"/sys/fake/{key}")
                r.d._changed(hd)
                assert r.d.programs[key].programs == []
            finally:
                mine.close()

    asyncio.run(body())


def test_an_unreadable_pin_is_shown_not_served(tmp_path: Path, bpffs: Path) -> None:
    d = bpffs / pins.pin_name(OTHER.key) / "half"
    d.mkdir(parents=True)
    fd = lb.map_create(lb.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    try:
        lb.obj_pin(fd, str(d / pins.MAPS[0]))  # the ring only
    finally:
        os.close(fd)

    async def body() -> None:
        async with running(
            tmp_path, pinned_scan=pinned_scan([str(bpffs)]), pinned_loader=pinned_loader
        ) as r:
            (sp,) = r.d.programs[OTHER.key].programs
            assert sp.handle is None and pins.NOT_SERVED in sp.error
            (dev,) = [x for x in r.d.status()["devices"] if x["hid_id"] == OTHER.key]
            assert "hidbpfd_state" in dev["programs"][0]["error"]
            assert r.d.managed  # the others carry on
            r.d.reload()  # tried again, still not served, listed once
            (sp2,) = r.d.programs[OTHER.key].programs
            assert sp2 is not sp and pins.NOT_SERVED in sp2.error

    asyncio.run(body())
