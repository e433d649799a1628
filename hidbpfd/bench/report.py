"""Benchmark results: percentiles, the JSON shape fixed by the issue, and the terminal table.

JSON: ``{"machine": str, "emulated": bool, "results": [{"scenario", "engine", "metric", "unit",
"n", "p50", "p90", "p99", "p999", "max"}, ...]}`` (extra keys allowed, e.g. ``samples``).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Result:
    """One metric of one scenario for one engine."""

    scenario: str
    engine: str  # "userspace" | "kernel"
    metric: str
    unit: str  # "us" | "per_s" | "percent"
    n: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    note: str = ""
    samples: list[float] = field(default_factory=list)


def percentiles(
    scenario: str, engine: str, metric: str, unit: str, values: Sequence[float], note: str = ""
) -> Result:
    """Nearest-rank percentiles of ``values`` (already in ``unit``)."""
    s = sorted(values)
    n = len(s)
    if not n:
        return Result(scenario, engine, metric, unit, 0, 0, 0, 0, 0, 0, note or "no samples")

    def pct(p: float) -> float:
        return round(s[min(n - 1, max(0, int(p * n + 0.5) - 1))], 2)

    return Result(
        scenario,
        engine,
        metric,
        unit,
        n,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        round(s[-1], 2),
        note,
        list(values),
    )


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, bool]:
    """A description of this machine, and whether it is software-emulated (qemu TCG)."""
    cpu = ""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # qemu names its emulated CPUs "QEMU Virtual CPU ..." or "QEMU TCG CPU ..."
    emulated = (
        "QEMU Virtual CPU" in cpu
        or "QEMU TCG CPU" in cpu
        or os.environ.get("HIDBPFD_VM_ACCEL") == "tcg"
    )
    return f"{platform.node()}: Linux {platform.release()}, {cpu}, {os.cpu_count()} CPUs", emulated


UNITS = ("us", "per_s", "percent")
"""The units the fixed JSON shape allows in ``results``."""


def to_json(results: Sequence[Result], *, with_samples: bool = False) -> dict[str, Any]:
    """The fixed JSON shape. Rows in another unit (the daemon's RSS in MiB) go under
    ``more_results``, in the same row shape, so ``results`` keeps to the fixed units."""
    desc, emulated = machine()
    rows: list[dict[str, Any]] = []
    more: list[dict[str, Any]] = []
    for r in results:
        d = asdict(r)
        if not with_samples:
            d.pop("samples")
        if not d["note"]:
            d.pop("note")
        (rows if r.unit in UNITS else more).append(d)
    doc: dict[str, Any] = {"machine": desc, "emulated": emulated, "results": rows}
    if more:
        doc["more_results"] = more
    return doc


def write_json(path: str, results: Sequence[Result]) -> None:
    """``--json FILE``."""
    Path(path).write_text(json.dumps(to_json(results), indent=2) + "\n")


def table(results: Sequence[Result]) -> str:
    """Userspace and kernel side by side per (scenario, metric), with their ratio."""
    keyed: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        keyed.setdefault((r.scenario, r.metric), {})[r.engine] = r
    head = (
        f"{'scenario':<14} {'metric':<24} {'unit':<6} {'userspace p50 / p99':>22} "
        f"{'kernel p50 / p99':>22} {'ratio p50 / p99':>16}"
    )
    lines = [head, "-" * len(head)]
    for (sc, metric), eng in keyed.items():
        u, k = eng.get("userspace"), eng.get("kernel")
        unit = (u or k).unit  # type: ignore[union-attr]

        def cell(r: Result | None) -> str:
            return f"{r.p50:>9g} / {r.p99:<9g}" if r and r.n else f"{'—':>22}"

        ratio = ""
        if u and k and u.n and k.n and k.p50 and k.p99:
            ratio = f"{u.p50 / k.p50:6.2f} / {u.p99 / k.p99:<6.2f}"
        lines.append(f"{sc:<14} {metric:<24} {unit:<6} {cell(u):>22} {cell(k):>22} {ratio:>16}")
    return "\n".join(lines)


PLOT_MIN_SAMPLES = 10


def plot(path: str, results: Sequence[Result]) -> None:
    """``--plot FILE.png``: latency distributions of both engines per metric (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # distributions only: single-value rows (a CPU cost per report) are in the table
    lat = [r for r in results if r.unit == "us" and len(r.samples) >= PLOT_MIN_SAMPLES]
    metrics = list(dict.fromkeys((r.scenario, r.metric) for r in lat))
    if not metrics:
        return
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.6 * len(metrics)), squeeze=False)
    for ax, (sc, m) in zip(axes[:, 0], metrics, strict=True):
        for r in lat:
            if (r.scenario, r.metric) == (sc, m):
                s = sorted(r.samples)
                ax.plot(
                    s,
                    [i / len(s) for i in range(len(s))],
                    label=f"{r.engine} (p50 {r.p50:g}, p99 {r.p99:g} µs)",
                )
        ax.set_title(f"{sc}: {m}")
        ax.set_xlabel("µs")
        ax.set_ylabel("CDF")
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
