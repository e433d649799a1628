"""``hidbpfd bench --mechanics`` runs on this kernel and reports both engines in the fixed JSON
shape. It checks that the benchmark works and what it reports, never how fast anything is."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hidbpfd.bench import report

pytestmark = pytest.mark.bpf
KEYS = {"scenario", "engine", "metric", "unit", "n", "p50", "p90", "p99", "p999", "max"}


def test_mechanics_reports_both_engines(tmp_path: Path) -> None:
    from hidbpfd.bench.mechanics import run
    from hidbpfd.kernel.libbpf import BpfError
    from hidbpfd.kernel.source import BpfUnavailable

    try:
        results = asyncio.run(run(samples=5, progress=lambda _m: None))
    except (BpfUnavailable, BpfError, FileNotFoundError) as e:
        pytest.skip(f"BPF unavailable here: {e}")
    out = tmp_path / "bench.json"
    report.write_json(str(out), results)
    doc = json.loads(out.read_text())
    assert set(doc) >= {"machine", "emulated", "results"} and isinstance(doc["emulated"], bool)
    assert {r["unit"] for r in doc["results"]} <= {"us", "per_s", "percent"}
    assert [r["metric"] for r in doc["more_results"]] == ["daemon_rss"]
    rows = {(r["engine"], r["metric"]): r for r in doc["results"] + doc["more_results"]}
    for metric in (
        "event_to_action",
        "timer_lateness_1ms",
        "timer_lateness_10ms",
        "timer_lateness_50ms",
    ):
        for engine in ("userspace", "kernel"):
            r = rows[(engine, metric)]
            assert set(r) >= KEYS and r["scenario"] == "mechanics" and r["unit"] == "us"
            assert r["n"] == 5 and 0 <= r["p50"] <= r["p90"] <= r["p99"] <= r["p999"] <= r["max"]
    assert rows[("userspace", "timer_lateness_10ms_spin")]["n"] == 5
    assert rows[("userspace", "event_to_action_busy_poll")]["n"] == 5
    assert rows[("userspace", "timer_lateness_10ms_busy_poll")]["n"] == 5
    assert rows[("userspace", "timer_lateness_10ms_busy_poll_spin")]["n"] == 5
    assert (
        rows[("userspace", "start_to_ready")]["unit"] == "us"
        and rows[("userspace", "daemon_rss")]["p50"] > 0
    )
    drain = rows[("userspace", "drain_rate")]
    assert drain["unit"] == "per_s" and drain["p50"] > 0
    text = report.table(results)
    assert "event_to_action" in text and "ratio" in text


def test_percentiles_nearest_rank() -> None:
    r = report.percentiles("s", "userspace", "m", "us", [float(x) for x in range(1, 101)])
    assert (r.n, r.p50, r.p90, r.p99, r.p999, r.max) == (100, 50.0, 90.0, 99.0, 100.0, 100.0)
    assert report.percentiles("s", "kernel", "m", "us", []).n == 0


@pytest.mark.parametrize(
    ("model", "emulated"),
    [
        ("QEMU TCG CPU version 2.5+", True),
        ("QEMU Virtual CPU version 2.5+", True),
        ("AMD EPYC 7B13", False),
    ],
)
def test_machine_names_software_emulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, emulated: bool
) -> None:
    monkeypatch.delenv("HIDBPFD_VM_ACCEL", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: {model}\n")
    desc, emu = report.machine(info)
    assert model in desc and emu is emulated
