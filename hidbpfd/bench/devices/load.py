"""The load scenarios: ``unmatched`` (a stream no rule matches: the daemon's wake-ups and CPU,
the BPF program's run time) and ``throughput`` (bursts of matched reports at rising rates)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hidbpfd.bench.devices.daemon_process import DaemonProcess
from hidbpfd.bench.devices.device import BenchDevice, device_status
from hidbpfd.bench.devices.measure import EVENT_PROGRAMS, BpfStats, ProcCounters, proc_counters
from hidbpfd.bench.devices.plan import Plan, matched, sustained, unmatched


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


async def run_unmatched(
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
    entry = device_status(st, bd.hid_id)
    if bd.engine == "kernel":
        ks = entry.get("kernel_stats", {})
        return int(ks.get("matched", 0)), int(ks.get("ring_drops", 0))
    return int(entry.get("counters", {}).get("seen", 0)), int(st.get("ring_drops", 0))


async def run_throughput(
    devs: dict[str, BenchDevice],
    d: DaemonProcess,
    p: Plan,
    progress: Callable[[str], None],
    scenario: str = "throughput",
) -> None:
    """Bursts at each of the plan's rates, per engine (``throughput``; ``throughput_monitors``:
    the same with monitor clients attached by the caller)."""
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
            # a userspace drop is a report the policies never saw (a held-class one leaked); the
            # kernel engine's ring carries only its failures (its steps: engine_trace)
            lost = drops if bd.engine == "userspace" else 0
            steps.append((achieved, sent, handled, lost))
            progress(
                f"  {bd.engine}: {rate}/s offered, {achieved:.0f}/s sent, {handled}/{sent} "
                f"handled, {drops} ring drops, daemon {used.cpu_ns / 1e6:.0f} ms CPU, "
                f"{used.wakeups} wake-ups"
            )
        bd.add(scenario, "sustained_rate", sustained(steps))
        bd.add(scenario, "max_sent_rate", steps[-1][0] if steps else 0.0)
        bd.add(scenario, "handled_at_max", steps[-1][2] / max(steps[-1][1], 1) * 100)
        bd.add(scenario, "ring_drops", drops_total / max(sent_total, 1) * 100)
        if handled_total:
            bd.add(scenario, "daemon_cpu_per_report", cpu.cpu_ns / handled_total / 1000)
            bd.add(scenario, "daemon_wakeups", cpu.wakeups / max(wall, 1e-9))
