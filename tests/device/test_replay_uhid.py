"""Replay equivalence, for real: every capture under tests/captures played in real time on uhid
devices with the real daemon (HID-BPF holding reports, the in-kernel injector injecting) gives
the same trace as the virtual replay: the same kinds and data, in the same order per kind. Times
are compared with the virtual replay of the reports *as they were really sent* (under software
emulation the sender itself stalls; what is left is the daemon's latency) and must be within
TOLERANCE_S (docs/tests.md states what was measured)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import pytest

from hidbpfd.config import load
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.virtual import TraceLine, replay
from tests.replay.test_captures import CAPTURES

ROOT = Path(__file__).resolve().parents[2]
EMULATED = "QEMU TCG" in Path("/proc/cpuinfo").read_text()
# Measured (docs/tests.md): largest differences 10-46 ms under TCG emulation on an idle machine, up to
# ~125 ms with other VMs sharing the 2 cores; a real CPU does it in well under 10 ms.
TOLERANCE_S = 0.250 if EMULATED else 0.050
pytestmark = pytest.mark.device


def compare(virtual: list[TraceLine], real: list[TraceLine]) -> tuple[list[str], float]:
    """Differences (empty when equivalent) and the largest time difference."""
    problems: list[str] = []
    streams: dict[str, list[list[TraceLine]]] = defaultdict(lambda: [[], []])
    for i, lines in enumerate((virtual, real)):
        for line in lines:
            streams[line.kind][i].append(line)
    worst = 0.0
    for kind, (v, r) in streams.items():
        vd, rd = [x.data for x in v], [x.data for x in r]
        if vd != rd:
            problems.append(f"{kind}: expected {vd}, observed {rd}")
            continue
        for a, b in zip(v, r, strict=True):
            worst = max(worst, abs(a.t - b.t))
            if abs(a.t - b.t) > TOLERANCE_S:
                problems.append(f"{kind} {a.data} at {b.t:.4f} s, expected {a.t:.4f} s")
    return problems, worst


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_real_trace_equals_virtual(name: str, uhid_available: None) -> None:
    from hidbpfd.replay.via_uhid import observe

    rec = load_rec(ROOT / "tests/captures" / f"{name}.hid")
    cfg_paths = [str(ROOT / "config")]
    virtual = list(replay(rec, load(cfg_paths)))
    real, as_sent = asyncio.run(observe(rec, cfg_paths))
    # The reference is the virtual replay of the reports as really sent: under emulation a
    # 3 ms gap can stretch past a 20 ms deferral, which changes the right answer (the capture's
    # trace under the ideal timing is checked in tests/replay).
    if moved := [p for p in compare(virtual, as_sent)[0] if " at " not in p]:
        print(f"{name}: the sending times changed the expected trace: {moved}")
    problems, worst = compare(as_sent, real)
    print(f"{name}: {len(real)} lines, largest time difference {worst * 1000:.1f} ms")
    assert not problems, "\n".join(problems) + "\nobserved:\n" + "\n".join(x.json() for x in real)


def test_compare_catches_differences() -> None:
    a = [TraceLine(0.0, "pass", "01", "d"), TraceLine(0.02, "inject", "02", "d")]
    assert compare(a, a) == ([], 0.0)
    assert compare(a, [a[0]])[0]  # a missing injection
    assert compare(a, [a[0], TraceLine(10.0, "inject", "02", "d")])[0]  # far too late
    assert compare(a, [a[0], TraceLine(0.02, "inject", "03", "d")])[0]  # wrong data
    assert json.loads(a[0].json())["kind"] == "pass"
