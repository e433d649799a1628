"""The rows of a device benchmark run: each metric's unit and note, the scenarios, and the
samples turned into :class:`hidbpfd.bench.report.Result` rows for both engines."""

from __future__ import annotations

from typing import Final

from hidbpfd.bench.devices.device import BenchDevice
from hidbpfd.bench.devices.plan import DEFER_DELAYS_MS, ENGINES, INJECT_WAIT_MS, Plan
from hidbpfd.bench.devices.programs import EXAMPLES, PROGRAM_SCENARIOS, READBACK_MS
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
    "readback_lateness": "us",
    "daemon_cpu_per_request": "us",
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
    "ring_drops": "of the reports sent in the bursts (userspace: never handled, a held-class "
    "one leaks; kernel engine: failure records lost)",
    "daemon_cpu_per_report": "daemon CPU over the bursts / reports handled",
    "readback_lateness": f"UHID_GET_REPORT of the deferred call - (trigger + {READBACK_MS} ms)",
    "daemon_cpu_per_request": "daemon CPU (CPU-time clock) in this engine's windows / requests",
}
ENGINE_NOTES: Final[dict[tuple[str, str], str]] = {
    ("daemon_cpu_per_request", "kernel"): "the work runs in bpf_wq: the daemon's own cost "
    "(CPU-time clock) over the same windows / requests made",
}

SCENARIOS: Final = (
    *(f"defer_{ms}ms" for ms in DEFER_DELAYS_MS),
    "inject",
    "reinit",
    *PROGRAM_SCENARIOS,
    "unmatched",
    "throughput",
    "throughput_monitors",
)


def results(
    devs: dict[str, BenchDevice],
    order: list[tuple[str, str]],
    program_devs: dict[str, BenchDevice] | None = None,
) -> list[Result]:
    """Every (scenario, metric) for both engines, in ``order``; an engine without samples
    gets a row with n = 0 and its note. The program scenarios' samples come from
    ``program_devs`` (their own devices)."""
    out = []
    for sc, metric in order:
        for engine in ENGINES:
            from_devs = program_devs if program_devs and sc in PROGRAM_SCENARIOS else devs
            bd = from_devs[engine]
            values = bd.samples.get((sc, metric), [])
            note = bd.note or ENGINE_NOTES.get((metric, engine)) or NOTES.get(metric, "")
            if not values and not bd.note:
                note = "no samples (timed out)"
            out.append(percentiles(sc, engine, metric, UNITS[metric], values, note))
    return out


PROGRAM_METRICS: Final[dict[str, tuple[str, ...]]] = {
    "program_defer": ("reinject_lateness", "daemon_cpu_per_request"),
    "program_inject": ("first_injected", "last_injected", "daemon_cpu_per_request"),
    "program_reinit": ("output_received", "readback_lateness", "daemon_cpu_per_request"),
}


def expected_rows(p: Plan, stats: bool = True) -> list[tuple[str, str]]:
    """The (scenario, metric) rows a run reports, in order."""
    rows: list[tuple[str, str]] = [(f"defer_{ms}ms", "reinject_lateness") for ms in p.defer]
    rows += [("inject", "first_injected"), ("inject", "last_injected")]
    rows += [("reinit", "output_received")]
    if p.programs:
        rows += [(e.scenario, m) for e in EXAMPLES for m in PROGRAM_METRICS[e.scenario]]
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
        (sc, m)
        for sc in ("throughput", "throughput_monitors")
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
