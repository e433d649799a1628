"""The latency scenarios: ``defer_*`` (re-injection after the delay), ``inject`` (a two-report
sequence), ``reinit`` (an output report to the device); samples alternate between the engines."""

from __future__ import annotations

import asyncio
import random

from hidbpfd.bench.devices.device import BenchDevice
from hidbpfd.bench.devices.plan import ENGINES, INJECT_WAIT_MS, OUTPUT_REPORT, Plan, defer_trigger

# ----------------------------------------------------------------------------- scenarios


async def _gap(rng: random.Random, p: Plan) -> None:
    await asyncio.sleep(rng.uniform(*p.gap_ms) / 1000)


def _alternating(devs: dict[str, BenchDevice], i: int) -> list[BenchDevice]:
    """Both live devices, the order swapped every sample."""
    live = [devs[e] for e in ENGINES if not devs[e].note]
    return live if i % 2 == 0 else live[::-1]


async def run_defer(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
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


async def run_inject(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
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


async def run_reinit(devs: dict[str, BenchDevice], p: Plan, rng: random.Random) -> None:
    from hidbpfd.devices.uhid_protocol import UHID_OUTPUT

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
