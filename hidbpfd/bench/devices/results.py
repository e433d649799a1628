"""The rows of a device benchmark run: each metric's unit and note, the scenarios, and the
samples turned into :class:`hidbpfd.bench.report.Result` rows for both engines."""

from __future__ import annotations

from typing import Final

from hidbpfd.bench.devices.device import BenchDevice
from hidbpfd.bench.devices.plan import DEFER_DELAYS_MS, ENGINES, INJECT_WAIT_MS, Plan
from hidbpfd.bench.report import Result, percentiles

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
