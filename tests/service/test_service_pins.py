"""A program another loader pinned, served by hidbpfd.service as installed (issue 13, item 4).

udev-hid-bpf loads a device's HID-BPF objects from its ``81-hid-bpf.rules`` and pins their maps
under ``/sys/fs/bpf/hid/<device>/<object>/`` as root: pins ``0600`` in a bpffs systemd mounts
``0700``, which the service's ``hidbpfd`` user cannot open. ``hidbpfd install-service``
installs ``82-hidbpfd-pins.rules``, which runs after it and grants the ``hidbpfd`` group just
what the daemon needs. Here a stand-in ``81-hid-bpf.rules`` runs ``tests/pin_loader.py`` (a
separate root process, as udev-hid-bpf is) for the pen of ``tests/captures/pen-proximity.hid``
with the example ``config/programs/pen-proximity.bpf.o`` (built on the host by tools/setup:
the guest has no clang); the service, as ``hidbpfd`` with no ``[[program]]`` and no
``[[policy]]`` for the pen, serves its request ring: an out-of-proximity report, held by the
program, reaches the hidraw node only because the daemon re-injects it."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.device.conftest import run
from tests.service.conftest import ROOT, capture_device, device_status, sh, wait_for

pytestmark = pytest.mark.usefixtures("service")

OBJ = ROOT / "config" / "programs" / "pen-proximity.bpf.o"
LOADER = ROOT / "tests" / "pin_loader.py"
STAND_IN = Path("/etc/udev/rules.d/81-hid-bpf.rules")  # udev-hid-bpf's own file name
OURS = Path("/etc/udev/rules.d/82-hidbpfd-pins.rules")
PIN_ROOT = Path("/sys/fs/bpf/hid")
API_MAPS = ("hidbpfd_requests", "hidbpfd_state", "hidbpfd_keys", "hidbpfd_passing")
IN_RANGE = bytes.fromhex("0220e803d0070000")
OUT_OF_RANGE = bytes.fromhex("0200000000000000")  # held 20 ms by the program, then re-injected


def udev_log() -> str:
    return sh("journalctl", "-u", "systemd-udevd", "-n", "40", "--no-pager", check=False)


@pytest.fixture
def stand_in_loader() -> object:
    """``81-hid-bpf.rules`` running the separate loader for the pen (28bd:0905) on add, as
    udev-hid-bpf's rule runs ``udev-hid-bpf add``; removed afterwards with what it pinned."""
    if not OBJ.is_file():
        pytest.fail(f"{OBJ} is missing: run tools/setup on the host (the guest has no clang)")
    STAND_IN.write_text(
        'ACTION=="add", SUBSYSTEM=="hid", ENV{HID_ID}=="0003:000028BD:00000905", '
        f'RUN{{program}}+="/usr/bin/python3 {LOADER} {OBJ} $kernel {PIN_ROOT}"\n'
    )
    sh("udevadm", "control", "--reload")
    try:
        yield None
    finally:
        STAND_IN.unlink()
        sh("udevadm", "control", "--reload")
        for d in PIN_ROOT.glob("0003_28BD_0905_*"):  # udev-hid-bpf removes them on remove
            shutil.rmtree(d, ignore_errors=True)


def test_the_pins_rule_is_installed() -> None:
    rule = OURS.read_text()
    assert 'RUN{program}+="/usr/bin/python3 -m hidbpfd.service.pin_access $kernel"' in rule


def test_a_program_pinned_by_a_root_loader_is_served_by_the_unit(stand_in_loader: None) -> None:
    gid = grp.getgrnam("hidbpfd").gr_gid

    async def body() -> tuple[str, dict[str, object], list[bytes], str]:
        # capture_device waits until the service manages the pen: with no [[policy]] for it,
        # only the pinned program can make it so
        async with capture_device("pen-proximity.hid") as pen:
            entry = device_status(pen.hid_id) or {}
            (prog,) = entry["programs"]  # type: ignore[misc]
            assert "error" not in prog, prog
            pen.uhid.input(IN_RANGE)
            pen.uhid.input(OUT_OF_RANGE)
            await wait_for(lambda: OUT_OF_RANGE in pen.read, "the held report, re-injected")
            await wait_for(
                lambda: ((device_status(pen.hid_id) or {}).get("programs") or [{}])[0].get(
                    "injected"
                ),
                "the program's counters",
            )
            text = sh("hidbpfd", "status")  # the text form, while the pen is there
            return pen.hid_id, device_status(pen.hid_id) or {}, list(pen.read), text

    try:
        hid_id, entry, read, text = run(body())
    except pytest.fail.Exception as e:
        pytest.fail(f"{e}\nsystemd-udevd's log:\n{udev_log()}")
    assert read == [IN_RANGE, OUT_OF_RANGE], read
    (prog,) = entry["programs"]  # type: ignore[misc]
    pin_dir = PIN_ROOT / hid_id.replace(":", "_").replace(".", "_") / "pen-proximity"
    assert prog["loader"] == "pinned by another loader" and prog["pinned"] == str(pin_dir), prog
    assert prog["engine"] == "userspace" and prog["errors"] == 0 and prog["refused"] == {}, prog
    assert prog["requests"] >= 1 and prog["held"] >= 1 and prog["injected"] >= 1, prog
    assert entry["managed"] and entry["served_by"] == "programs", entry
    assert f"program pinned:{pin_dir}: pinned by another loader" in text, text
    assert ": programs only" in text, text
    # what the rule granted: the group, only what the daemon needs
    top = os.stat("/sys/fs/bpf")
    assert top.st_gid == gid and stat.S_IMODE(top.st_mode) & 0o070 == 0o010, oct(top.st_mode)
    assert stat.S_IMODE(top.st_mode) & 0o007 == 0, oct(top.st_mode)  # nothing to others
    for m in API_MAPS:
        st = os.stat(pin_dir / m)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, 0o660), (m, oct(st.st_mode))
    link = os.stat(pin_dir / "pen_proximity")  # the struct_ops' link: the loader's alone
    assert (link.st_uid, link.st_gid, stat.S_IMODE(link.st_mode)) == (0, 0, 0o600)
    done = subprocess.run(["id", "-G", "hidbpfd"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(gid)]  # the service's user is in no other group
