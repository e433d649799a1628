"""``hidbpfd bench --quick`` runs on uhid devices and reports both engines for every scenario
(VM tier). It checks that the benchmark works and what it reports, never how fast anything is
(under software emulation the numbers mean little)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hidbpfd.bench.devices import SCENARIOS

pytestmark = pytest.mark.device
KEYS = {"scenario", "engine", "metric", "unit", "n", "p50", "p90", "p99", "p999", "max"}
LATENCY = {
    ("defer_1ms", "reinject_lateness"),
    ("defer_10ms", "reinject_lateness"),
    ("defer_50ms", "reinject_lateness"),
    ("inject", "first_injected"),
    ("inject", "last_injected"),
    ("reinit", "output_received"),
    # the example programs (config/programs/), built for both engines
    ("program_defer", "reinject_lateness"),
    ("program_inject", "first_injected"),
    ("program_inject", "last_injected"),
    ("program_reinit", "output_received"),
    ("program_reinit", "readback_lateness"),
}
PROGRAM_SCENARIOS = {"program_defer", "program_inject", "program_reinit"}


def test_bench_quick_reports_both_engines(uhid_available: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "hidbpfd", "bench", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    took = time.monotonic() - t0
    print(res.stderr[-3000:])  # its progress: what each part took
    print(res.stdout)
    print(f"bench --quick took {took:.0f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {r["unit"] for r in doc["results"]} <= {"us", "per_s", "percent"}
    assert set(doc) == {"machine", "emulated", "results"} and isinstance(doc["emulated"], bool)
    rows = doc["results"]
    assert all(set(r) >= KEYS for r in rows)
    seen = {(r["scenario"], r["engine"]) for r in rows}
    assert seen == {(sc, e) for sc in SCENARIOS for e in ("userspace", "kernel")}
    by = {(r["scenario"], r["metric"], r["engine"]): r for r in rows}
    for sc, metric in LATENCY:
        for engine in ("userspace", "kernel"):
            r = by[(sc, metric, engine)]
            assert r["unit"] == "us" and r["n"] > 0, r
            assert r["p50"] <= r["p90"] <= r["p99"] <= r["p999"] <= r["max"]
    assert set(SCENARIOS) >= PROGRAM_SCENARIOS
    for sc in PROGRAM_SCENARIOS:
        for engine in ("userspace", "kernel"):
            # measured, not judged: a CPU time per request, >= 0 (the kernel engine's ~0)
            r = by[(sc, "daemon_cpu_per_request", engine)]
            assert r["unit"] == "us" and r["n"] == 1 and r["p50"] >= 0, r
    for engine in ("userspace", "kernel"):
        assert by[("unmatched", "sent_rate", engine)]["n"] == 1
        assert by[("unmatched", "daemon_wakeups", engine)]["unit"] == "per_s"
        assert by[("throughput", "handled_at_max", engine)]["n"] == 1
    # the terminal table names every scenario and gives the ratio column
    for sc in SCENARIOS:
        assert sc in res.stdout
    assert "ratio" in res.stdout
