"""The real-time knobs under the unit (issue 14): the settings file and the drop-in exactly as
docs/service.md gives them ("Real-time knobs under the unit"), run as the service in the systemd
tier. Without the drop-in the unit's sandbox refuses the knobs and the daemon says why; with it,
``/proc/<MainPID>`` shows SCHED_FIFO at the priority, the CPU and locked memory. Everything is
taken back afterwards, so the other files of this directory meet the unit as shipped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.device.conftest import run
from tests.helpers import LIMIT_S
from tests.service.conftest import (
    capture_device,
    cursor,
    documented_blocks,
    messages_since,
    prop,
    run_block,
    sh,
    status,
    until,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("service")

SECTION = "## Real-time knobs under the unit"
SETTINGS = Path("/etc/hidbpfd/hidbpfd.toml")
DROP_IN_DIR = Path("/etc/systemd/system/hidbpfd.service.d")
PRIORITY, CPU = 50, 1  # what the documented settings file asks for
F13_DOWN, CTRL_C = bytes.fromhex("01006800"), bytes.fromhex("01010600")


def settings_and_drop_in() -> list[str]:
    """The ``sh`` blocks of the section, in order: the settings file, then the drop-in."""
    blocks = documented_blocks(SECTION)
    assert len(blocks) == 2, blocks
    return blocks


@pytest.fixture
def taken_back() -> Iterator[None]:
    """After the test: no settings file, no drop-in, the unit as shipped running again."""
    yield
    SETTINGS.unlink(missing_ok=True)
    for f in DROP_IN_DIR.glob("*"):
        f.unlink()
    if DROP_IN_DIR.exists():
        DROP_IN_DIR.rmdir()
    sh("systemctl", "daemon-reload")
    sh("systemctl", "reset-failed", "hidbpfd", check=False)
    sh("systemctl", "restart", "hidbpfd", timeout=LIMIT_S)
    until(status, "the daemon answering again")


def test_the_sandbox_refuses_the_knobs_and_says_why(taken_back: None) -> None:
    settings, _ = settings_and_drop_in()
    assert not DROP_IN_DIR.exists()
    cur = cursor()
    run_block(settings)
    done = subprocess.run(
        ["systemctl", "restart", "hidbpfd"],
        capture_output=True,
        text=True,
        check=False,
        timeout=LIMIT_S,
    )
    assert done.returncode != 0, "the unit as shipped started with the real-time knobs on"
    lines = until(
        lambda: [m for m in messages_since(cur) if m.startswith("hidbpfd run: ")],
        "the daemon's reason in the journal",
    )
    # the first knob applied is the CPU: the system call filter (~@resources) refuses it
    assert (
        f"hidbpfd run: cpu = {CPU}: sched_setaffinity: Operation not permitted "
        "(hidbpfd.service refuses the real-time knobs unless its real-time drop-in is "
        "installed: see docs/service.md, 'Real-time knobs under the unit')"
    ) in lines, lines


def test_with_the_drop_in_the_knobs_take_effect(taken_back: None) -> None:
    settings, drop_in = settings_and_drop_in()
    run_block(settings)
    run_block(drop_in)
    assert prop("ActiveState") == "active"
    pid = int(prop("MainPID"))
    assert os.sched_getscheduler(pid) == os.SCHED_FIFO
    assert os.sched_getparam(pid).sched_priority == PRIORITY
    st = dict(
        (k, v.strip())
        for k, v in (
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    )
    assert st["Cpus_allowed_list"] == str(CPU), st["Cpus_allowed_list"]
    locked_kib = int(st["VmLck"].split()[0])
    assert locked_kib > 0, st["VmLck"]
    # the same sandbox otherwise: its user, its two capabilities, the system call filter
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", st
    assert int(st["CapEff"], 16) == (1 << 39) | (1 << 38), st["CapEff"]
    knobs = until(lambda: (s := status()) and s.get("knobs"), "the knobs in status")
    assert knobs == [f"sched_fifo={PRIORITY}", f"cpu={CPU}", "mlockall"], knobs

    async def serves() -> None:
        async with capture_device("macro-key.hid") as keys:
            keys.uhid.input(F13_DOWN)
            await wait_for(lambda: CTRL_C in keys.read, "Ctrl+C from the real-time daemon")

    run(serves())
