"""Programs loaded by another loader (docs/programs.md): a separate process
(``tests/pin_loader.py``) loads an example object on a uhid device, attaches it by a BPF link
and pins the link and its maps under ``<bpffs>/<sysname>/<object>/`` as udev-hid-bpf does,
then exits; the daemon, with that bpffs as its pin root and no ``[[program]]`` for the device,
finds the pins after the device appeared and serves the ring: the example's expected trace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.config.settings import Settings
from hidbpfd.kernel.compile import compile_program
from hidbpfd.replay.live import LiveSession
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.virtual import TraceLine
from tests.device.conftest import run
from tests.device.test_programs_device import PROGRAMS, ROOT, check, send_in_time

LOADER = ROOT / "tests" / "pin_loader.py"
FIND_LIMIT_S = 30.0  # the daemon's rescans after an add end at 12 s


@pytest.fixture
def bpffs(tmp_path: Path) -> Any:
    """A bpffs of its own, mounted for this test (the VM runs as root)."""
    root = tmp_path / "bpf"
    root.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


async def load_elsewhere(obj: Path, sysname: str, root: Path) -> Path:
    """Run the separate loader; returns the pin directory it made."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOADER),
        str(obj),
        sysname,
        str(root),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return Path(out.decode().strip())


def test_a_program_pinned_by_another_loader_gives_its_trace(
    uhid_available: None, tmp_path: Path, bpffs: Path
) -> None:
    name = "pen-proximity"
    obj = tmp_path / f"{name}.bpf.o"
    compile_program(PROGRAMS / f"{name}.bpf.c", obj, cache=tmp_path / "cache")
    cfg = tmp_path / "config"  # no policy file: nothing of hidbpfd's own for the device
    cfg.mkdir()
    rec = load_rec(ROOT / "tests" / "captures" / f"{name}.hid")

    async def body() -> tuple[list[TraceLine], float, dict[str, Any], Path, bool]:
        settings = Settings(pin_roots=(str(bpffs),))
        async with LiveSession([str(cfg)], settings=settings) as live:
            d = live.daemon
            dev = await live.add(rec.devices[0])
            assert dev.hid_id not in d.programs  # nothing pinned yet
            # the other loader runs after the daemon saw the device (udev RUN does the same)
            pin_dir = await load_elsewhere(obj, dev.hid_id, bpffs)
            deadline = time.monotonic() + FIND_LIMIT_S
            while dev.hid_id not in d.programs:
                assert time.monotonic() < deadline, f"the daemon never found {pin_dir}"
                await asyncio.sleep(0.05)
            (sp,) = d.programs[dev.hid_id].programs
            assert sp.error == "" and sp.pinned == str(pin_dir), sp
            lag = await send_in_time(live, rec, name, lambda _rdev: dev)
            status = d.status()
            trace = live.trace()
            await live.remove(dev)
            dropped = dev.hid_id not in d.programs
            return trace, lag, status, pin_dir, dropped

    real, lag, status, pin_dir, dropped = run(body())
    print(f"{name} (pinned by another loader): {len(real)} lines, sender lag {lag * 1000:.1f} ms")
    check(name, real, lag)
    (entry,) = [d for d in status["devices"] if d.get("programs")]
    (prog,) = entry["programs"]
    assert prog["loader"] == "pinned by another loader"
    assert prog["pinned"] == str(pin_dir)
    assert prog["program"] == f"pinned:{pin_dir}"
    assert prog["engine"] == "userspace"
    assert prog["errors"] == 0 and prog["refused"] == {}
    assert prog["requests"] > 0 and prog["pending"] == 0
    assert dropped, "the pinned program was still served after the device went"
