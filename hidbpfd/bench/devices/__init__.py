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
- ``program_defer`` / ``program_inject`` / ``program_reinit``: the example HID-BPF programs of
  ``config/programs/`` built for both engines, on their own uhid devices, the same traffic:
  lateness and latency as above, the deferred call's read-back, and the daemon's CPU per
  request (:mod:`.programs`);
- ``unmatched``: an 8 kHz stream of reports no rule matches: the daemon's wake-ups (voluntary
  context switches of all its threads) and CPU time (``/proc/PID``) during the stream and during
  as long an idle window, and the BPF event program's run time per report
  (``kernel.bpf_stats_enabled`` via BPF_ENABLE_STATS, ``bpf_prog_info.run_time_ns / run_cnt``);
- ``throughput``: bursts of matched reports at rising rates: the highest rate at which every
  report was handled (the daemon's ``seen`` counter, or the engine's ``matched``) with no
  ring-buffer drop (for a policy that holds: the rate at which nothing leaks), and the
  daemon's CPU per report. For the kernel engine the ring carries only its failures (its step
  records for ``monitor`` have a ring of their own), and the engine's rate is bounded by this
  process's uhid writes;
- ``throughput_monitors``: the same bursts with 50 ``monitor`` clients attached, half of them
  never reading (:mod:`.monitors`).

Run inside the VM tier (``hidbpfd vm -- hidbpfd bench --quick``). Under software emulation the
absolute numbers are not representative; the ratios and the wake-up counts are what to read.

The parts: :mod:`.plan` (devices, policies, trigger reports), :mod:`.device` (the uhid devices),
:mod:`.daemon_process` (the daemon under test), :mod:`.measure` (/proc and BPF statistics),
:mod:`.monitors` (monitor clients),
:mod:`.latency`, :mod:`.load` and :mod:`.programs` (the scenario families), :mod:`.results`
(the rows), :mod:`.runner` (one run), :mod:`.plotting` (``--plot`` in the VM).
"""

from hidbpfd.bench.devices.daemon_process import DaemonProcess
from hidbpfd.bench.devices.device import BenchDevice
from hidbpfd.bench.devices.measure import EVENT_PROGRAMS, BpfStats, ProcCounters, proc_counters
from hidbpfd.bench.devices.plan import (
    DEFER_DELAYS_MS,
    DESCRIPTOR,
    ENGINES,
    INJECT_WAIT_MS,
    LOAD_RATE,
    OUTPUT_REPORT,
    PRODUCTS,
    RELEASE,
    VENDOR,
    BenchUnavailable,
    Plan,
    defer_trigger,
    matched,
    plan,
    policy_files,
    policy_text,
    sustained,
    unmatched,
)
from hidbpfd.bench.devices.plotting import prepare_plotting
from hidbpfd.bench.devices.results import NOTES, SCENARIOS, UNITS, expected_rows, results
from hidbpfd.bench.devices.runner import check_machine, run

__all__ = [
    "DEFER_DELAYS_MS",
    "DESCRIPTOR",
    "ENGINES",
    "EVENT_PROGRAMS",
    "INJECT_WAIT_MS",
    "LOAD_RATE",
    "NOTES",
    "OUTPUT_REPORT",
    "PRODUCTS",
    "RELEASE",
    "SCENARIOS",
    "UNITS",
    "VENDOR",
    "BenchDevice",
    "BenchUnavailable",
    "BpfStats",
    "DaemonProcess",
    "Plan",
    "ProcCounters",
    "check_machine",
    "defer_trigger",
    "expected_rows",
    "matched",
    "plan",
    "policy_files",
    "policy_text",
    "prepare_plotting",
    "proc_counters",
    "results",
    "run",
    "sustained",
    "unmatched",
]
