"""A daemon killed while a BPF program holds a report (VM tier; issue 13, item 6).

``config/programs/pen-proximity.bpf.c`` loaded by ``[[program]]`` (built with
``-DTRUST_MS=10000``: an out-of-proximity report is held 10 s), on a uhid pen, ``hidbpfd run``
as a subprocess, SIGKILLed about a second after the program held a report: with the userspace
engine (the held report's only copy is the request record the daemon read) and with the kernel
engine (the held copy and its bpf_timer -> bpf_wq live in the object's maps). What is asserted
is what docs/crash-safety.md says: the held report never reaches the hidraw readers, not even
after its delay; with no daemon every later report reaches them, in order; a restarted daemon
serves the device again (holds and delivers after the delay).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.device.conftest import run
from tests.device.test_crash import (
    BODY_S,
    ENGINES,
    IN_RANGE,
    LONG_MS,
    OUT_OF_PROX,
    DaemonProcess,
    Plugged,
    readers_get_everything,
)
from tests.device.test_daemon_device import device, until
from tests.device.test_programs_device import build

pytestmark = pytest.mark.device
SHORT_MS = 200
HELD_S = 1.0
"""How long the report is watched not arriving before the kill (it is held)."""


async def program_entry(d: DaemonProcess, hid_id: str) -> dict[str, Any]:
    """Wait until the daemon serves the device's program; its entry in ``status``."""
    deadline = time.monotonic() + 60
    progs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        progs = (await d.device(hid_id)).get("programs", [])
        if progs and "engine" in progs[0] and "error" not in progs[0]:
            return progs[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{hid_id}: program not served: {progs}\n{d.log()}")


@pytest.mark.parametrize("engine", ENGINES)
def test_sigkill_while_a_program_holds_a_report(
    engine: str, tmp_path: Path, uhid_available: None
) -> None:
    cfg = build(tmp_path, "pen-proximity", engine, f"-DTRUST_MS={LONG_MS}")

    async def body() -> None:
        d = await DaemonProcess(cfg, tmp_path, "first").start()
        pen = await Plugged(device("pen-proximity.hid")).plug()
        try:
            prog = await program_entry(d, pen.hid_id)
            assert prog["engine"] == engine, prog
            pen.send(IN_RANGE)
            await until(lambda: pen.read == [IN_RANGE], "the in-range report passed")
            pen.send(OUT_OF_PROX)
            held_at = time.monotonic()
            if engine == "userspace":  # the daemon got the request: the hold is its own
                deadline = time.monotonic() + 30
                while (await program_entry(d, pen.hid_id)).get("held", 0) < 1:
                    assert time.monotonic() < deadline, d.log()
                    await asyncio.sleep(0.05)
            await asyncio.sleep(HELD_S)
            assert pen.read == [IN_RANGE], f"not held: {pen.read}"
            assert d.kill() == -signal.SIGKILL
            killed_after = time.monotonic() - held_at
            assert killed_after < LONG_MS / 1000 / 2, "too slow to kill before the delay"

            # no daemon: the kernel detached the program (its link closed): all reports pass
            await readers_get_everything(pen, [OUT_OF_PROX, IN_RANGE, OUT_OF_PROX])
            # the report held at the kill: never delivered, not even after its delay
            await asyncio.sleep(max(0.0, LONG_MS / 1000 + 1 - (time.monotonic() - held_at)))
            want = [IN_RANGE, OUT_OF_PROX, IN_RANGE, OUT_OF_PROX]
            assert pen.read == want, pen.read
            print(
                f"{engine}: killed {killed_after:.2f} s after the hold; the held report never "
                f"reached readers ({LONG_MS / 1000 + 1:.0f} s watched); later reports all did"
            )

            # a restarted daemon serves the device again: held, delivered after the delay
            build(tmp_path, "pen-proximity", engine, f"-DTRUST_MS={SHORT_MS}")
            d = await DaemonProcess(cfg, tmp_path, "second").start()
            await program_entry(d, pen.hid_id)
            n = len(pen.read)
            pen.send(OUT_OF_PROX)
            await until(lambda: len(pen.read) > n, "the held report, delivered after its delay")
            await asyncio.sleep(0.3)
            assert pen.read[n:] == [OUT_OF_PROX], pen.read
            if engine == "userspace":
                prog = await program_entry(d, pen.hid_id)
                assert prog["held"] == 1 and prog["injected"] == 1, prog
            assert d.kill(signal.SIGTERM) == 0
        finally:
            d.ensure_dead()
            await pen.unplug()

    run(body(), BODY_S)
