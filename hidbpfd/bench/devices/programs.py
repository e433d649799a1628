"""The program scenarios: the example HID-BPF programs of ``config/programs/`` built for both
engines (``hidbpfd compile``, :func:`hidbpfd.kernel.compile.compile_program`), loaded by
``[[program]]`` on a uhid device per engine, the same traffic on both:

- ``program_defer`` (pen-proximity.bpf.c, built with ``-DTRUST_MS=10`` to sit beside
  ``defer_10ms``): an out-of-proximity report is held and re-injected: ``reinject_lateness``;
- ``program_inject`` (macro-key.bpf.c): F13 becomes Ctrl+C now and all-up 5 ms later:
  ``first_injected`` / ``last_injected``;
- ``program_reinit`` (wakeup-reinit.bpf.c): the wake-up report makes the device receive its
  output report (``output_received``) and, 20 ms later, the deferred call reads feature 5 back
  (``readback_lateness`` = GET_REPORT seen - (trigger + 20 ms)).

Each also reports ``daemon_cpu_per_request``: the daemon's CPU time (its CPU-time clock,
ns) over the windows that engine's traffic ran in, divided by the requests the
program made (its design: 1 per defer, 2 per macro, 3 per wake-up). The samples run in small
blocks that alternate between the engines, so each engine's CPU window is its own. For the
kernel engine the work runs in bpf_wq: what the daemon spends then is its idle cost.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.bench.devices.daemon_process import DaemonProcess
from hidbpfd.bench.devices.device import BenchDevice, create_device, device_status
from hidbpfd.bench.devices.plan import ENGINES, VENDOR, BenchUnavailable, Plan

PROGRAM_PRODUCTS: Final[dict[str, int]] = {"userspace": 0xBE03, "kernel": 0xBE04}
DEFER_MS: Final = 10
"""pen-proximity's hold, built with -DTRUST_MS (its default is 20): the same as defer_10ms."""
MACRO_WAIT_MS: Final = 5
READBACK_MS: Final = 20
BLOCK: Final = 5
"""Samples per engine before switching to the other (each block is one CPU window)."""


@dataclass(frozen=True, slots=True)
class Example:
    """One example program as the benchmark runs it."""

    scenario: str
    source: str
    """config/programs/SOURCE.bpf.c"""
    requests: int
    """requests it makes per trigger (its design)"""
    defines: tuple[str, ...] = ()


EXAMPLES: Final = (
    Example("program_defer", "pen-proximity", 1, (f"-DTRUST_MS={DEFER_MS}",)),
    Example("program_inject", "macro-key", 2),
    Example("program_reinit", "wakeup-reinit", 3),
)
PROGRAM_SCENARIOS: Final = tuple(e.scenario for e in EXAMPLES)

# One vendor device that has what all three programs need: keyboard-like report 1 (macro-key),
# pen report 2 (pen-proximity), wake-up input 0x10, mode output 0x10 and feature 5
# (wakeup-reinit); the sizes are the ones the programs send.
PROGRAM_DESCRIPTOR: Final = bytes(
    [
        0x06, 0x00, 0xFF,  # Usage Page (Vendor Defined 0xFF00)
        0x09, 0x01,  # Usage (0x01)
        0xA1, 0x01,  # Collection (Application)
        0x15, 0x00,  # .. Logical Minimum (0)
        0x26, 0xFF, 0x00,  # .. Logical Maximum (255)
        0x75, 0x08,  # .. Report Size (8)
        0x85, 0x01, 0x95, 0x03, 0x09, 0x02, 0x81, 0x02,  # .. ID 1: 3 x Input
        0x85, 0x02, 0x95, 0x03, 0x09, 0x03, 0x81, 0x02,  # .. ID 2: 3 x Input
        0x85, 0x10, 0x95, 0x03, 0x09, 0x04, 0x81, 0x02,  # .. ID 0x10: 3 x Input
        0x95, 0x04, 0x09, 0x05, 0x91, 0x02,  # .. 4 x Output
        0x85, 0x05, 0x95, 0x01, 0x09, 0x06, 0xB1, 0x02,  # .. ID 5: 1 x Feature
        0xC0,  # End Collection
    ]
)  # fmt: skip

F13: Final = bytes.fromhex("01 00 68 00")
CTRL_C: Final = bytes.fromhex("01 01 06 00")
ALL_UP: Final = bytes.fromhex("01 00 00 00")
WAKE_UP: Final = bytes.fromhex("10 ff 80 00")
SET_MODE: Final = bytes.fromhex("10 ff 80 11 01")
ENABLE: Final = bytes.fromhex("05 01")


def sources_dir() -> Path:
    """config/programs/ of this checkout (the examples ship with the sources)."""
    return Path(__file__).resolve().parents[3] / "config" / "programs"


def pen_report(seq: int) -> bytes:
    """An out-of-proximity pen report pen-proximity holds (unique per sample)."""
    return bytes([0x02, 0x00, seq & 0xFF, (seq >> 8) & 0xFF])


def program_file_name(engine: str) -> str:
    return f"50-{VENDOR:04x}__{PROGRAM_PRODUCTS[engine]:04x}-bench-programs-{engine}.toml"


def program_text(engine: str) -> str:
    """The policy file loading the three examples (built for ``engine``) on its device."""
    progs = "".join(f'\n[[program]]\nobject = "{engine}/{e.source}.bpf.o"\n' for e in EXAMPLES)
    return f"""# hidbpfd bench: the example programs, built for the {engine} engine
[device]
vendor = {VENDOR:#06x}
product = {PROGRAM_PRODUCTS[engine]:#06x}
{progs}"""


def build_programs(directory: Path, cache: Path) -> dict[str, str]:
    """Compile every example for both engines into ``directory/ENGINE/`` (clang runs in
    parallel, one per CPU: under emulation the builds are most of the scenarios' time) and
    write the policy files; returns engine -> why it cannot run ("" when built)."""
    from concurrent.futures import ThreadPoolExecutor

    from hidbpfd.kernel.compile import CompileError, compile_program, vmlinux_h

    src = sources_dir()
    why = dict.fromkeys(ENGINES, "")
    try:
        vmlinux_h(cache=cache)  # once, before the parallel builds use it
    except CompileError as err:
        return dict.fromkeys(ENGINES, f"example programs not built: {err}")

    def build(engine: str, e: Example) -> str:
        try:
            compile_program(
                src / f"{e.source}.bpf.c",
                directory / engine / f"{e.source}.bpf.o",
                engine=engine,
                cache=cache,
                extra=e.defines,
            )
        except CompileError as err:
            return f"{e.source}.bpf.c not built for the {engine} engine: {err}"
        return ""

    for engine in ENGINES:
        (directory / engine).mkdir(parents=True, exist_ok=True)
    jobs = [(engine, e) for engine in ENGINES for e in EXAMPLES]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(lambda job: (job[0], build(*job)), jobs))
    for engine, failed in errors:
        why[engine] = why[engine] or failed
    for engine in ENGINES:
        if not why[engine]:
            (directory / program_file_name(engine)).write_text(program_text(engine))
    return why


async def create_program_device(engine: str) -> BenchDevice:
    return await create_device(
        engine,
        product=PROGRAM_PRODUCTS[engine],
        descriptor=PROGRAM_DESCRIPTOR,
        label="programs",
    )


def program_state(entry: dict[str, object]) -> tuple[bool, str]:
    """(all examples loaded, why not) from a device's ``status`` entry."""
    progs = entry.get("programs") or []
    assert isinstance(progs, list)
    errors = [f"{p.get('program')}: {p['error']}" for p in progs if p.get("error")]
    if errors:
        return False, "program not loaded: " + "; ".join(errors)
    return len(progs) >= len(EXAMPLES), ""


async def wait_programs(d: DaemonProcess, devs: dict[str, BenchDevice], timeout_s: float) -> None:
    """Until the daemon has loaded the examples on both devices (or said why not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await d.status()
        done = True
        for bd in devs.values():
            if bd.note:
                continue
            loaded, why = program_state(device_status(st, bd.hid_id))
            if why:
                bd.note = why
            elif not loaded:
                done = False
        if done:
            return
        if time.monotonic() > deadline:
            raise BenchUnavailable(
                f"the daemon did not load the example programs within {timeout_s:g} s:\n"
                + d.log_tail()
            )
        await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- CPU


def sched_cpu_ns(pid: int, proc: Path = Path("/proc")) -> int:
    """CPU time of process ``pid`` in ns, exited threads included: its CPU-time clock
    (``clock_getcpuclockid``), finer than ``/proc/PID/stat``'s clock ticks, which are the
    fallback (and what is read under another ``proc``, for tests)."""
    if proc == Path("/proc"):
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            clock = ctypes.c_int()
            if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
                return time.clock_gettime_ns(clock.value)
        except (OSError, AttributeError):
            pass
    from hidbpfd.bench.devices.measure import proc_counters

    return proc_counters(pid, proc).cpu_ns


def blocks(n: int, size: int = BLOCK) -> Iterator[tuple[int, list[str]]]:
    """(first sample index, engine order) per block of ``size`` samples: the order swaps every
    block, so each engine runs its block in its own CPU window and neither always goes first."""
    for b, start in enumerate(range(0, n, size)):
        yield start, list(ENGINES if b % 2 == 0 else ENGINES[::-1])


def per_request_us(cpu_ns: int, triggers: int, requests_per_trigger: int) -> float | None:
    """Daemon CPU per request in µs, or None without requests."""
    requests = triggers * requests_per_trigger
    return cpu_ns / requests / 1000 if requests > 0 else None


# ----------------------------------------------------------------------------- scenarios


async def _defer(bd: BenchDevice, i: int) -> None:
    rep = pen_report(i)
    t = bd.write(rep)
    got = await bd.read_until(rep, DEFER_MS / 1000 + 2.0)
    if got is not None:
        bd.add("program_defer", "reinject_lateness", (got - t - DEFER_MS * 1_000_000) / 1000)


async def _inject(bd: BenchDevice, i: int) -> None:
    t = bd.write(F13)
    a = await bd.read_until(CTRL_C, 2.0)
    b = await bd.read_until(ALL_UP, 2.0) if a is not None else None
    if a is not None and b is not None:
        bd.add("program_inject", "first_injected", (a - t) / 1000)
        bd.add("program_inject", "last_injected", (b - t) / 1000)


async def _reinit(bd: BenchDevice, i: int) -> None:
    from hidbpfd.devices.uhid_protocol import UHID_GET_REPORT, UHID_OUTPUT

    while not bd.uhid.events.empty():  # stale events
        bd.uhid.events.get_nowait()
    t = bd.write(WAKE_UP)
    try:
        ev = await bd.uhid.next_event(UHID_OUTPUT, timeout_s=2.0)
        if ev.data == SET_MODE:
            bd.add("program_reinit", "output_received", (ev.received_ns - t) / 1000)
        # the feature report (10 ms) and the read-back (20 ms): the sequence ends with it
        back = await bd.uhid.next_event(UHID_GET_REPORT, timeout_s=2.0)
        late = (back.received_ns - t - READBACK_MS * 1_000_000) / 1000
        bd.add("program_reinit", "readback_lateness", late)
    except TimeoutError:
        return


RUNNERS: Final[dict[str, Callable[[BenchDevice, int], Awaitable[None]]]] = {
    "program_defer": _defer,
    "program_inject": _inject,
    "program_reinit": _reinit,
}


async def run_programs(
    devs: dict[str, BenchDevice], d: DaemonProcess, p: Plan, rng: random.Random
) -> None:
    """Every example, ``p.programs`` triggers per engine, in alternating blocks."""
    for e in EXAMPLES:
        cpu = dict.fromkeys(ENGINES, 0)
        sent = dict.fromkeys(ENGINES, 0)
        sample = RUNNERS[e.scenario]
        for start, order in blocks(p.programs):
            for engine in order:
                bd = devs[engine]
                if bd.note:
                    continue
                c0 = sched_cpu_ns(d.pid)
                for i in range(start, min(start + BLOCK, p.programs)):
                    await sample(bd, i)
                    sent[engine] += 1
                    await asyncio.sleep(rng.uniform(*p.gap_ms) / 1000)
                cpu[engine] += sched_cpu_ns(d.pid) - c0
        for engine in ENGINES:
            us = per_request_us(cpu[engine], sent[engine], e.requests)
            if us is not None:
                devs[engine].add(e.scenario, "daemon_cpu_per_request", us)
