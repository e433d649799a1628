"""One device benchmark run: check the machine, start the daemon, create both devices, run every
scenario, return the rows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hidbpfd.bench.devices.daemon_process import DaemonProcess
from hidbpfd.bench.devices.device import BenchDevice, create_device, wait_managed
from hidbpfd.bench.devices.latency import run_defer, run_inject, run_reinit
from hidbpfd.bench.devices.load import run_throughput, run_unmatched
from hidbpfd.bench.devices.measure import BpfStats
from hidbpfd.bench.devices.monitors import MONITORS, monitors
from hidbpfd.bench.devices.plan import ENGINES, BenchUnavailable, plan, policy_files
from hidbpfd.bench.devices.programs import (
    EXAMPLES,
    build_programs,
    create_program_device,
    run_programs,
    wait_programs,
)
from hidbpfd.bench.devices.results import expected_rows, results
from hidbpfd.bench.report import Result


def check_machine() -> None:
    """Raise :class:`BenchUnavailable` where uhid / hidraw are missing."""
    if not os.path.exists("/dev/uhid"):
        raise BenchUnavailable(
            "/dev/uhid not found (no uhid in this kernel): the device benchmark needs uhid, "
            "hidraw and HID-BPF. Try: hidbpfd vm -- .venv/bin/hidbpfd bench --quick "
            "(or hidbpfd bench --mechanics on this kernel)"
        )
    if not os.access("/dev/uhid", os.R_OK | os.W_OK):
        raise BenchUnavailable("/dev/uhid is not readable and writable by this user")


async def run(
    *,
    quick: bool = False,
    samples: int | None = None,
    progress: Callable[[str], None] = print,
    seed: int = 1,
) -> list[Result]:
    """Every scenario through both engines; returns the results (both engines per row)."""
    check_machine()
    p = plan(quick=quick, samples=samples)
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hidbpfd-bench-")))
        cfg = work / "devices.d"
        cfg.mkdir()
        policy_files(cfg)
        not_built: dict[str, str] = {}
        if p.programs:
            t_build = time.monotonic()
            not_built = build_programs(cfg, work / "cache")
            progress(
                f"example programs built for both engines in {time.monotonic() - t_build:.1f} s"
            )
        progress("starting the daemon (hidbpfd run) with a userspace and a kernel-engine file")
        d = DaemonProcess(cfg, work)
        stack.callback(d.stop)
        await d.wait_ready()
        devs: dict[str, BenchDevice] = {}
        progs: dict[str, BenchDevice] = {}
        try:
            for engine in ENGINES:
                devs[engine] = await create_device(engine)
            if p.programs:
                for engine in ENGINES:
                    progs[engine] = await create_program_device(engine)
                    progs[engine].note = not_built.get(engine, "")
            progress("waiting for the daemon to take both uhid devices on")
            await wait_managed(d, devs, 90.0)
            if progs:
                await wait_programs(d, progs, 90.0)
            for bd in (*devs.values(), *progs.values()):
                if bd.note:
                    progress(f"{bd.engine}: {bd.note}")
            stats: BpfStats | None = None
            try:
                stats = BpfStats()
            except OSError as e:
                progress(f"no BPF run-time statistics: {e}")
            try:
                for bd in (*devs.values(), *progs.values()):
                    if not bd.note:
                        bd.open_reader()
                await asyncio.sleep(0.2)
                progress("defer: " + ", ".join(f"{ms} ms x {n}" for ms, n in p.defer.items()))
                await run_defer(devs, p, rng)
                progress(f"inject: {p.inject} triggers")
                await run_inject(devs, p, rng)
                progress(f"reinit: {p.reinit} triggers")
                await run_reinit(devs, p, rng)
                if progs:
                    names = ", ".join(e.source for e in EXAMPLES)
                    progress(f"programs: {p.programs} triggers each ({names})")
                    t_progs = time.monotonic()
                    await run_programs(progs, d, p, rng)
                    progress(f"programs: took {time.monotonic() - t_progs:.1f} s")
                for bd in (*devs.values(), *progs.values()):
                    bd.close_reader()
                progress(f"unmatched: {p.load_rate} reports/s for {p.load_s:g} s, and idle")
                await run_unmatched(devs, d, p, stats)
                rates = ", ".join(str(r) for r in p.rates)
                progress(f"throughput: matched reports at {rates}/s, {p.rate_s:g} s each")
                await run_throughput(devs, d, p, progress)
                progress(
                    f"throughput_monitors: the same with {MONITORS} monitor clients "
                    f"({MONITORS // 2} never reading)"
                )
                async with monitors(d.socket) as lines:
                    await run_throughput(devs, d, p, progress, "throughput_monitors")
                    progress(f"  monitor lines read by the reading half: {lines[0]}")
            finally:
                if stats is not None:
                    stats.close()
        finally:
            for bd in (*devs.values(), *progs.values()):
                bd.close_reader()
                bd.uhid.destroy()
    return results(devs, expected_rows(p, stats is not None), progs)
