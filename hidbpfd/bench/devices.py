"""``hidbpfd bench``: the userspace daemon against the in-kernel engine, on uhid devices.

One run starts the real daemon (``hidbpfd run``, its own process) with two policy files that
differ only in ``engine``: one uhid device is served by the daemon (userspace), the other by the
in-kernel engine. Both devices get the same policies and the same traffic; latency samples
alternate between them, so both engines see the same machine. Timestamps are taken at the device
side only: when this process writes a report to uhid, when it reads a report from hidraw, when
uhid hands it an output report. Scenarios:

- ``defer_1ms`` / ``defer_10ms`` / ``defer_50ms``: a held report is re-injected after the delay;
  ``reinject_lateness`` = read on hidraw - (written + delay);
- ``inject``: a trigger becomes two reports 2 ms apart: ``first_injected`` / ``last_injected``
  = read on hidraw - trigger written;
- ``reinit``: a trigger makes the device receive an output report: ``output_received``;
- ``unmatched``: an 8 kHz stream of reports no rule matches: the daemon's wake-ups (voluntary
  context switches of all its threads) and CPU time (``/proc/PID``) during the stream and during
  as long an idle window, and the BPF event program's run time per report
  (``kernel.bpf_stats_enabled`` via BPF_ENABLE_STATS, ``bpf_prog_info.run_time_ns / run_cnt``);
- ``throughput``: bursts of matched reports at rising rates: the highest rate at which every
  report was handled (the daemon's ``seen`` counter, or the engine's ``matched``) with no
  ring-buffer drop, and the daemon's CPU per report. For the kernel engine the ring carries
  only its records for ``status`` / ``monitor``: a dropped record loses a monitor line, not an
  action, and the engine's rate is bounded by this process's uhid writes.

Run inside the VM tier (``hidbpfd vm -- hidbpfd bench --quick``). Under software emulation the
absolute numbers are not representative; the ratios and the wake-up counts are what to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hidbpfd.bench.report import Result, percentiles

ENGINES: Final = ("userspace", "kernel")
VENDOR: Final = 0x1209
PRODUCTS: Final[dict[str, int]] = {"userspace": 0xBE01, "kernel": 0xBE02}
DEFER_DELAYS_MS: Final = (1, 10, 50)
LOAD_RATE: Final = 8000
INJECT_WAIT_MS: Final = 2
OUTPUT_REPORT: Final = bytes.fromhex("10 b1 b2 b3 b4 b5")
RELEASE: Final = bytes.fromhex("01 06 00 00")

# A vendor-defined device: input report 1 (4 bytes), output 0x10 (5), feature 5 (2).
DESCRIPTOR: Final = bytes(
    [
        0x06, 0x00, 0xFF,  # Usage Page (Vendor Defined 0xFF00)
        0x09, 0x01,  # Usage (0x01)
        0xA1, 0x01,  # Collection (Application)
        0x15, 0x00,  # .. Logical Minimum (0)
        0x26, 0xFF, 0x00,  # .. Logical Maximum (255)
        0x75, 0x08,  # .. Report Size (8)
        0x85, 0x01, 0x95, 0x04, 0x09, 0x02, 0x81, 0x02,  # .. ID 1: 4 x Input
        0x85, 0x10, 0x95, 0x05, 0x09, 0x03, 0x91, 0x02,  # .. ID 0x10: 5 x Output
        0x85, 0x05, 0x95, 0x02, 0x09, 0x04, 0xB1, 0x02,  # .. ID 5: 2 x Feature
        0xC0,  # End Collection
    ]
)  # fmt: skip


class BenchUnavailable(RuntimeError):
    """This machine cannot run the device benchmark; the message says why and what to do."""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each scenario to run (per engine)."""

    defer: dict[int, int]
    """delay ms -> samples"""
    inject: int
    reinit: int
    load_s: float
    rates: tuple[int, ...]
    rate_s: float
    gap_ms: tuple[float, float] = (3.0, 8.0)
    load_rate: int = LOAD_RATE


def plan(*, quick: bool = False, samples: int | None = None) -> Plan:
    """``--quick`` (under two minutes in the VM), the full run, or ``samples`` of everything
    (tests)."""
    if samples is not None:
        n = max(1, samples)
        return Plan({ms: n for ms in DEFER_DELAYS_MS}, n, n, 0.5, (1000, 4000), 0.25)
    if quick:
        return Plan({1: 50, 10: 50, 50: 20}, 40, 40, 1.5, (1000, 2000, 4000, 8000), 0.5)
    return Plan(
        {1: 300, 10: 300, 50: 100}, 200, 200, 5.0, (1000, 2000, 4000, 8000, 16000, 32000), 2.0
    )


def policy_text(engine: str) -> str:
    """The policy file for the device of ``engine``: the same policies for both engines."""
    defers = "".join(
        f"""
[[policy]]
type = "defer"
name = "defer-{ms}ms"
match = "01 {0x20 + i:02x}"
delay_ms = {ms}
cancel_on = "01 ff"
"""
        for i, ms in enumerate(DEFER_DELAYS_MS, 1)
    )
    return f"""# hidbpfd bench: the {engine} engine's device
engine = "{engine}"

[device]
vendor = {VENDOR:#06x}
product = {PRODUCTS[engine]:#06x}
{defers}
[[policy]]
type = "inject"
name = "inject"
match = "01 03"
reports = ["01 a1 00 00", {{wait_ms = {INJECT_WAIT_MS}}}, "01 a2 00 00"]
pass_trigger = false

[[policy]]
type = "reinit"
name = "reinit"
match = "01 04"
send = [{{output = "{OUTPUT_REPORT.hex(" ")}"}}]

[[policy]]
type = "release-guard"
name = "throughput"
match = "01 05 ??"
release = "{RELEASE.hex(" ")}"
release_match = "01 06"
timeout_ms = 60000
"""


def policy_files(directory: Path) -> dict[str, Path]:
    """Write both engines' files into ``directory``; engine -> path."""
    out = {}
    for engine in ENGINES:
        p = directory / f"50-{VENDOR:04x}__{PRODUCTS[engine]:04x}-bench-{engine}.toml"
        p.write_text(policy_text(engine))
        out[engine] = p
    return out


def defer_trigger(delay_ms: int, seq: int) -> bytes:
    """The report defer_<delay_ms> holds (unique per sample)."""
    return bytes([0x01, 0x21 + DEFER_DELAYS_MS.index(delay_ms), seq & 0xFF, (seq >> 8) & 0xFF])


def unmatched(seq: int) -> bytes:
    """A report no rule matches."""
    return bytes([0x01, 0x00, seq & 0xFF, (seq >> 8) & 0xFF])


def matched(seq: int) -> bytes:
    """A report the throughput policy matches (a press: re-arms its timeout)."""
    return bytes([0x01, 0x05, 0x01 + seq % 200, (seq >> 8) & 0xFF])


def sustained(steps: list[tuple[float, int, int, int]]) -> float:
    """The highest achieved rate (of ``(rate, sent, handled, drops)`` steps) at which every
    report was handled with no drop, in a row from the lowest; 0 if even the first failed."""
    best = 0.0
    for rate, sent, handled, drops in steps:
        if handled < sent or drops:
            break
        best = max(best, rate)
    return best


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class ProcCounters:
    """A process's CPU time and wake-ups so far."""

    cpu_ns: int
    wakeups: int

    def __sub__(self, other: ProcCounters) -> ProcCounters:
        return ProcCounters(self.cpu_ns - other.cpu_ns, self.wakeups - other.wakeups)


def proc_counters(pid: int, proc: Path = Path("/proc")) -> ProcCounters:
    """utime + stime (``/proc/PID/stat``) and voluntary context switches of every thread
    (``/proc/PID/task/*/status``: each is a sleep the thread woke up from)."""
    stat = (proc / str(pid) / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    cpu_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    wakeups = 0
    for task in (proc / str(pid) / "task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
        except OSError:  # a thread that just exited
            continue
    return ProcCounters(cpu_ns, wakeups)


# struct bpf_prog_info (include/uapi/linux/bpf.h): char name[16] at 64, __u64 run_time_ns at
# 192, __u64 run_cnt at 200; 232 bytes as of Linux 6.x (a longer kernel struct is fine: the
# kernel copies min(its size, ours))
PROG_INFO_SIZE: Final = 232
PROG_INFO_NAME: Final = 64
PROG_INFO_RUN_TIME: Final = 192
PROG_INFO_RUN_CNT: Final = 200
BPF_STATS_RUN_TIME: Final = 0  # enum bpf_stats_type


class BpfStats:
    """BPF run-time statistics while open (BPF_ENABLE_STATS: the kernel counts while the fd
    lives, like ``sysctl kernel.bpf_stats_enabled=1``), read per program name."""

    def __init__(self) -> None:
        from hidbpfd.kernel import libbpf as lb

        self._lib = lb.libbpf()
        dll = self._lib.dll
        self._get_next = dll.bpf_prog_get_next_id
        self._get_next.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        self._get_next.restype = ctypes.c_int
        self._get_fd = dll.bpf_prog_get_fd_by_id
        self._get_fd.argtypes = [ctypes.c_uint32]
        self._get_fd.restype = ctypes.c_int
        self._info = dll.bpf_obj_get_info_by_fd
        self._info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        self._info.restype = ctypes.c_int
        enable = dll.bpf_enable_stats
        enable.argtypes = [ctypes.c_int]
        enable.restype = ctypes.c_int
        self.fd = self._lib.check("bpf_enable_stats", enable(BPF_STATS_RUN_TIME))

    def programs(self) -> Iterator[tuple[str, int, int]]:
        """(name, run_time_ns, run_cnt) of every loaded program."""
        cur = ctypes.c_uint32(0)
        while self._get_next(cur.value, ctypes.byref(cur)) == 0:
            fd = self._get_fd(cur.value)
            if fd < 0:
                continue
            try:
                buf = ctypes.create_string_buffer(PROG_INFO_SIZE)
                size = ctypes.c_uint32(PROG_INFO_SIZE)
                if self._info(fd, buf, ctypes.byref(size)) != 0:
                    continue
                raw = buf.raw
                name = raw[PROG_INFO_NAME : PROG_INFO_NAME + 16].split(b"\0", 1)[0].decode()
                ns = int.from_bytes(raw[PROG_INFO_RUN_TIME : PROG_INFO_RUN_TIME + 8], "little")
                cnt = int.from_bytes(raw[PROG_INFO_RUN_CNT : PROG_INFO_RUN_CNT + 8], "little")
                yield name, ns, cnt
            finally:
                os.close(fd)

    def totals(self, name: str) -> tuple[int, int]:
        """Summed (run_time_ns, run_cnt) of the programs called ``name``."""
        ns = cnt = 0
        for n, t, c in self.programs():
            if n == name:
                ns += t
                cnt += c
        return ns, cnt

    def close(self) -> None:
        """Stop counting (when the last such fd closes)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


EVENT_PROGRAMS: Final[dict[str, str]] = {"userspace": "hidbpfd_event", "kernel": "engine_event"}
"""The HID-BPF program that sees every report of each engine's device."""


# ----------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """``hidbpfd run`` in its own process (so its CPU and wake-ups are its own)."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.socket = str(workdir / "control.sock")
        self.log_path = workdir / "daemon.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hidbpfd",
                "--log-level",
                "info",
                "run",
                "--config",
                str(config),
                "--socket",
                self.socket,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        """The last lines of its log (for errors)."""
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    async def status(self) -> dict[str, Any]:
        """The daemon's ``status`` (off the loop: a blocking socket)."""
        from hidbpfd.service.control import request

        if self.proc.poll() is not None:
            raise BenchUnavailable(
                f"the daemon exited ({self.proc.returncode}):\n{self.log_tail()}"
            )
        return await asyncio.to_thread(request, self.socket, "status", timeout=10.0)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until its control socket answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.status()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchUnavailable(
                        f"the daemon did not come up within {timeout_s:g} s:\n{self.log_tail()}"
                    ) from None
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------- the devices


@dataclass(slots=True)
class BenchDevice:
    """One engine's uhid device, seen from the device side."""

    engine: str
    uhid: Any  # hidbpfd.devices.uhid.UhidDevice
    hid_id: str = ""
    hidraw: str = ""
    reader: Any = None  # hidbpfd.devices.hidraw.HidrawReader while latency is measured
    note: str = ""
    """Why this engine does not serve the device (its rows then have no samples)."""
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, scenario: str, metric: str, value: float) -> None:
        self.samples.setdefault((scenario, metric), []).append(value)

    def write(self, report: bytes) -> int:
        """Send a report; returns when (monotonic ns, taken just before the write)."""
        t = time.monotonic_ns()
        self.uhid.input(report)
        return t

    async def read_until(self, want: bytes, timeout_s: float) -> int | None:
        """When ``want`` is read on hidraw (others are skipped), or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                stamp, report = await self.reader.read(timeout_s=left)
            except TimeoutError:
                return None
            if report == want:
                return int(stamp)
        return None

    def open_reader(self) -> None:
        from hidbpfd.devices.hidraw import HidrawReader

        if self.reader is None:
            self.reader = HidrawReader(self.hidraw)

    def close_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


async def _create(engine: str) -> BenchDevice:
    from hidbpfd.devices.uhid import BUS_USB, UhidDevice

    dev = UhidDevice()
    dev.create(
        f"hidbpfd bench {engine}",
        DESCRIPTOR,
        BUS_USB,
        VENDOR,
        PRODUCTS[engine],
        phys=f"hidbpfd-bench/{os.getpid()}/{engine}",
    )
    bd = BenchDevice(engine, dev)
    await dev.wait_started(timeout_s=30)
    bd.hidraw = await dev.wait_hidraw(timeout_s=30)
    bd.hid_id = dev.hid_name() or ""
    return bd


def _device_status(st: dict[str, Any], hid_id: str) -> dict[str, Any]:
    return next((d for d in st.get("devices", []) if d.get("hid_id") == hid_id), {})


async def _wait_managed(d: DaemonProcess, devs: dict[str, BenchDevice], timeout_s: float) -> None:
    """Until the daemon serves both devices (or has said why the kernel engine cannot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await d.status()
        done = True
        for bd in devs.values():
            entry = _device_status(st, bd.hid_id)
            if bd.engine == "kernel" and entry.get("kernel_refused"):
                bd.note = f"in-kernel engine refused: {entry['kernel_refused']}"
            elif not entry.get("managed") or entry.get("engine", "userspace") != bd.engine:
                done = False
        if done:
            return
        if time.monotonic() > deadline:
            raise BenchUnavailable(
                f"the daemon did not take both devices on within {timeout_s:g} s:\n" + d.log_tail()
            )
        await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- scenarios


async def _gap(rng: random.Random, p: Plan) -> None:
    await asyncio.sleep(rng.uniform(*p.gap_ms) / 1000)


def _alternating(devs: dict[str, BenchDevice], i: int) -> list[BenchDevice]:
    """Both live devices, the order swapped every sample."""
    live = [devs[e] for e in ENGINES if not devs[e].note]
    return live if i % 2 == 0 else live[::-1]


async def _defer(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
    for ms, n in p.defer.items():
        sc = f"defer_{ms}ms"
        for i in range(n):
            for bd in _alternating(devs, i):
                rep = defer_trigger(ms, i)
                t = bd.write(rep)
                got = await bd.read_until(rep, ms / 1000 + 2.0)
                if got is not None:
                    bd.add(sc, "reinject_lateness", (got - t - ms * 1_000_000) / 1000)
                await _gap(rng, p)


async def _inject(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
    first, last = bytes.fromhex("01 a1 00 00"), bytes.fromhex("01 a2 00 00")
    for i in range(p.inject):
        for bd in _alternating(devs, i):
            t = bd.write(bytes([0x01, 0x03, i & 0xFF, 0]))
            a = await bd.read_until(first, 2.0)
            b = await bd.read_until(last, 2.0) if a is not None else None
            if a is not None and b is not None:
                bd.add("inject", "first_injected", (a - t) / 1000)
                bd.add("inject", "last_injected", (b - t) / 1000)
            await asyncio.sleep(INJECT_WAIT_MS / 1000)
            await _gap(rng, p)


async def _reinit(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
    from hidbpfd.devices.uhid import UHID_OUTPUT

    for i in range(p.reinit):
        for bd in _alternating(devs, i):
            while not bd.uhid.events.empty():  # stale events
                bd.uhid.events.get_nowait()
            t = bd.write(bytes([0x01, 0x04, i & 0xFF, 0]))
            try:
                ev = await bd.uhid.next_event(UHID_OUTPUT, timeout_s=2.0)
            except TimeoutError:
                continue
            if ev.data == OUTPUT_REPORT:
                bd.add("reinit", "output_received", (ev.received_ns - t) / 1000)
            await _gap(rng, p)


async def _stream(
    bd: BenchDevice, rate: int, seconds: float, make: Callable[[int], bytes]
) -> tuple[int, float]:
    """Write ``rate`` reports per second for ``seconds``; returns (sent, elapsed s)."""
    total = int(rate * seconds)
    sent = 0
    t0 = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            bd.uhid.input(make(sent))
            sent += 1
        await asyncio.sleep(0.0005)
    return sent, time.monotonic() - t0


async def _unmatched(
    devs: dict[str, BenchDevice], d: DaemonProcess, p: Plan, stats: BpfStats | None
) -> None:
    for bd in devs.values():
        if bd.note:
            continue
        c0 = proc_counters(d.pid)
        t0 = time.monotonic()
        await asyncio.sleep(p.load_s)
        idle = proc_counters(d.pid) - c0
        idle_s = time.monotonic() - t0
        prog = EVENT_PROGRAMS[bd.engine]
        b0 = stats.totals(prog) if stats else (0, 0)
        c1 = proc_counters(d.pid)
        sent, elapsed = await _stream(bd, p.load_rate, p.load_s, unmatched)
        busy = proc_counters(d.pid) - c1
        b1 = stats.totals(prog) if stats else (0, 0)
        bd.add("unmatched", "sent_rate", sent / elapsed)
        bd.add("unmatched", "daemon_wakeups", busy.wakeups / elapsed)
        bd.add("unmatched", "daemon_wakeups_idle", idle.wakeups / idle_s)
        bd.add("unmatched", "daemon_cpu", busy.cpu_ns / (elapsed * 1e9) * 100)
        bd.add("unmatched", "daemon_cpu_idle", idle.cpu_ns / (idle_s * 1e9) * 100)
        if stats and b1[1] > b0[1]:
            bd.add("unmatched", "bpf_run_time", (b1[0] - b0[0]) / (b1[1] - b0[1]) / 1000)


async def _handled(d: DaemonProcess, bd: BenchDevice) -> tuple[int, int]:
    """(matched reports handled, ring-buffer drops) so far, as the daemon counts them."""
    st = await d.status()
    entry = _device_status(st, bd.hid_id)
    if bd.engine == "kernel":
        ks = entry.get("kernel_stats", {})
        return int(ks.get("matched", 0)), int(ks.get("ring_drops", 0))
    return int(entry.get("counters", {}).get("seen", 0)), int(st.get("ring_drops", 0))


async def _throughput(
    devs: dict[str, BenchDevice], d: DaemonProcess, p: Plan, progress: Callable[[str], None]
) -> None:
    for bd in devs.values():
        if bd.note:
            continue
        steps: list[tuple[float, int, int, int]] = []
        cpu = ProcCounters(0, 0)
        handled_total = drops_total = sent_total = 0
        wall = 0.0
        for rate in p.rates:
            h0, drop0 = await _handled(d, bd)
            c0 = proc_counters(d.pid)
            t_burst = time.monotonic()
            sent, elapsed = await _stream(bd, rate, p.rate_s, matched)
            deadline = time.monotonic() + 2.0
            while True:
                h1, drop1 = await _handled(d, bd)
                if h1 - h0 >= sent or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            used = proc_counters(d.pid) - c0
            cpu = ProcCounters(cpu.cpu_ns + used.cpu_ns, cpu.wakeups + used.wakeups)
            handled, drops = h1 - h0, drop1 - drop0
            handled_total += handled
            drops_total += drops
            sent_total += sent
            wall += time.monotonic() - t_burst
            achieved = sent / elapsed
            # a userspace drop is a report the policies never saw; the kernel engine's ring
            # carries only its monitor records, so its drops cost lines, not actions
            lost = drops if bd.engine == "userspace" else 0
            steps.append((achieved, sent, handled, lost))
            progress(
                f"  {bd.engine}: {rate}/s offered, {achieved:.0f}/s sent, {handled}/{sent} "
                f"handled, {drops} ring drops, daemon {used.cpu_ns / 1e6:.0f} ms CPU, "
                f"{used.wakeups} wake-ups"
            )
        bd.add("throughput", "sustained_rate", sustained(steps))
        bd.add("throughput", "max_sent_rate", steps[-1][0] if steps else 0.0)
        bd.add("throughput", "handled_at_max", steps[-1][2] / max(steps[-1][1], 1) * 100)
        bd.add("throughput", "ring_drops", drops_total / max(sent_total, 1) * 100)
        if handled_total:
            bd.add("throughput", "daemon_cpu_per_report", cpu.cpu_ns / handled_total / 1000)
            bd.add("throughput", "daemon_wakeups", cpu.wakeups / max(wall, 1e-9))


UNITS: Final[dict[str, str]] = {
    "reinject_lateness": "us",
    "first_injected": "us",
    "last_injected": "us",
    "output_received": "us",
    "sent_rate": "per_s",
    "daemon_wakeups": "per_s",
    "daemon_wakeups_idle": "per_s",
    "daemon_cpu": "percent",
    "daemon_cpu_idle": "percent",
    "bpf_run_time": "us",
    "ring_drops": "percent",
    "sustained_rate": "per_s",
    "max_sent_rate": "per_s",
    "handled_at_max": "percent",
    "daemon_cpu_per_report": "us",
}

NOTES: Final[dict[str, str]] = {
    "reinject_lateness": "hidraw read - (uhid write + delay)",
    "first_injected": "hidraw read of the first injected report - trigger written",
    "last_injected": f"the second, {INJECT_WAIT_MS} ms later in the sequence",
    "output_received": "UHID_OUTPUT read - trigger written",
    "daemon_wakeups": "voluntary context switches of the daemon's threads per second of stream",
    "daemon_wakeups_idle": "the same, over as long a window without traffic",
    "daemon_cpu": "daemon CPU time / stream time (percent of one CPU)",
    "daemon_cpu_idle": "the same, over as long a window without traffic",
    "bpf_run_time": "the HID-BPF event program's run_time_ns / run_cnt, per report",
    "sustained_rate": "highest rate with every report handled (userspace: no ring drop)",
    "ring_drops": "of the reports sent in the bursts (kernel engine: monitor records, not actions)",
    "daemon_cpu_per_report": "daemon CPU over the bursts / reports handled",
}

SCENARIOS: Final = (
    *(f"defer_{ms}ms" for ms in DEFER_DELAYS_MS),
    "inject",
    "reinit",
    "unmatched",
    "throughput",
)


def results(devs: dict[str, BenchDevice], order: list[tuple[str, str]]) -> list[Result]:
    """Every (scenario, metric) for both engines, in ``order``; an engine without samples
    gets a row with n = 0 and its note."""
    out = []
    for sc, metric in order:
        for engine in ENGINES:
            bd = devs[engine]
            values = bd.samples.get((sc, metric), [])
            note = bd.note or NOTES.get(metric, "")
            if not values and not bd.note:
                note = "no samples (timed out)"
            out.append(percentiles(sc, engine, metric, UNITS[metric], values, note))
    return out


def expected_rows(p: Plan, stats: bool = True) -> list[tuple[str, str]]:
    """The (scenario, metric) rows a run reports, in order."""
    rows: list[tuple[str, str]] = [(f"defer_{ms}ms", "reinject_lateness") for ms in p.defer]
    rows += [("inject", "first_injected"), ("inject", "last_injected")]
    rows += [("reinit", "output_received")]
    rows += [
        ("unmatched", m)
        for m in (
            "sent_rate",
            "daemon_wakeups",
            "daemon_wakeups_idle",
            "daemon_cpu",
            "daemon_cpu_idle",
            *(("bpf_run_time",) if stats else ()),
        )
    ]
    rows += [
        ("throughput", m)
        for m in (
            "sustained_rate",
            "max_sent_rate",
            "handled_at_max",
            "ring_drops",
            "daemon_cpu_per_report",
            "daemon_wakeups",
        )
    ]
    return rows


def _root_on_9p() -> bool:
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mnt, fstype = line.split()[:3]
            if mnt == "/":
                return fstype == "9p"
    except (OSError, ValueError):
        pass
    return False


def prepare_plotting() -> str | None:
    """Make matplotlib usable in the VM tier; returns why it cannot be, or None.

    The guest's root is the host's, read-only over 9p: matplotlib cannot keep a font cache in
    the home directory (so it would rebuild it on every import) and FreeType stalls for minutes
    reading font files over 9p. So: a private config dir seeded with the host's font cache, and
    the fonts it uses read from copies in /dev/shm. Elsewhere this does nothing.
    """
    if not _root_on_9p():
        return None
    import shutil

    host_cache = Path.home() / ".cache" / "matplotlib"
    if "MPLCONFIGDIR" not in os.environ:
        if not any(host_cache.glob("fontlist-*.json")):
            return (
                f"no matplotlib font cache in {host_cache} on the host, and building one over "
                "9p takes too long under emulation. Try once on the host: "
                ".venv/bin/python -c 'import matplotlib.pyplot'"
            )
        tmp = tempfile.mkdtemp(prefix="hidbpfd-mpl-")
        shutil.copytree(host_cache, tmp, dirs_exist_ok=True)
        os.environ["MPLCONFIGDIR"] = tmp
    import matplotlib
    from matplotlib import font_manager

    matplotlib.use("Agg")
    fonts = Path(tempfile.mkdtemp(prefix="hidbpfd-fonts-", dir="/dev/shm"))
    moved = []
    for entry in font_manager.fontManager.ttflist:
        src = Path(entry.fname)
        if "DejaVu" in src.name and src.exists():
            copy = fonts / src.name
            if not copy.exists():
                shutil.copyfile(src, copy)
            moved.append(dataclasses.replace(entry, fname=str(copy)))
        else:
            moved.append(entry)
    font_manager.fontManager.ttflist = moved
    return None


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
        progress("starting the daemon (hidbpfd run) with a userspace and a kernel-engine file")
        d = DaemonProcess(cfg, work)
        stack.callback(d.stop)
        await d.wait_ready()
        devs: dict[str, BenchDevice] = {}
        try:
            for engine in ENGINES:
                devs[engine] = await _create(engine)
            progress("waiting for the daemon to take both uhid devices on")
            await _wait_managed(d, devs, 90.0)
            for bd in devs.values():
                if bd.note:
                    progress(f"{bd.engine}: {bd.note}")
            stats: BpfStats | None = None
            try:
                stats = BpfStats()
            except OSError as e:
                progress(f"no BPF run-time statistics: {e}")
            try:
                for bd in devs.values():
                    bd.open_reader()
                await asyncio.sleep(0.2)
                progress("defer: " + ", ".join(f"{ms} ms x {n}" for ms, n in p.defer.items()))
                await _defer(devs, p, rng)
                progress(f"inject: {p.inject} triggers")
                await _inject(devs, p, rng)
                progress(f"reinit: {p.reinit} triggers")
                await _reinit(devs, p, rng)
                for bd in devs.values():
                    bd.close_reader()
                progress(f"unmatched: {p.load_rate} reports/s for {p.load_s:g} s, and idle")
                await _unmatched(devs, d, p, stats)
                rates = ", ".join(str(r) for r in p.rates)
                progress(f"throughput: matched reports at {rates}/s, {p.rate_s:g} s each")
                await _throughput(devs, d, p, progress)
            finally:
                if stats is not None:
                    stats.close()
        finally:
            for bd in devs.values():
                bd.close_reader()
                bd.uhid.destroy()
    return results(devs, expected_rows(p, stats is not None))
