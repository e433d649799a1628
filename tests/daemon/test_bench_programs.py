"""``hidbpfd bench``'s program scenarios on the host: the example programs really build for both
engines (``hidbpfd compile`` against this kernel) and ``hidbpfd check`` accepts the policy files
that load them; the device has every report they send; the blocks alternate the engines; the
CPU reading and the rows. The VM tier runs them on uhid devices
(tests/device/test_bench_devices.py); never how fast anything is."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hidbpfd.bench import devices as D
from hidbpfd.bench.devices import programs as P
from hidbpfd.config import load
from hidbpfd.devices.descriptor import ReportKind, parse
from hidbpfd.model import DeviceId


def test_program_rows_are_in_every_plan() -> None:
    for p in (D.plan(quick=True), D.plan(), D.plan(samples=1)):
        assert p.programs > 0
        rows = D.expected_rows(p)
        for sc in P.PROGRAM_SCENARIOS:
            metrics = [m for s, m in rows if s == sc]
            assert "daemon_cpu_per_request" in metrics and len(metrics) >= 2
            assert all(m in D.UNITS for m in metrics)
        assert set(P.PROGRAM_SCENARIOS) <= set(D.SCENARIOS)


def test_quick_program_traffic_stays_small() -> None:
    """What --quick adds in traffic: 2 engines x 3 programs x n triggers of at most ~30 ms."""
    p = D.plan(quick=True)
    assert 2 * len(P.EXAMPLES) * p.programs * 0.03 < 5


@pytest.mark.skipif(
    shutil.which("clang") is None or not Path("/sys/kernel/btf/vmlinux").exists(),
    reason="needs clang and this kernel's BTF",
)
def test_examples_build_for_both_engines_and_check(tmp_path: Path) -> None:
    assert P.build_programs(tmp_path, tmp_path / "cache") == {"userspace": "", "kernel": ""}
    for engine in D.ENGINES:
        for e in P.EXAMPLES:
            assert (tmp_path / engine / f"{e.source}.bpf.o").stat().st_size > 0
    cfg = load([tmp_path])
    assert not cfg.errors, cfg.errors
    for engine in D.ENGINES:
        dev = DeviceId(3, D.VENDOR, P.PROGRAM_PRODUCTS[engine], "bench")
        (f,) = cfg.files_for(dev)
        refs = cfg.programs_for(dev)
        assert len(refs) == len(P.EXAMPLES), refs
        assert Path(f.path).name == P.program_file_name(engine)


def test_a_failed_build_names_the_program_and_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for e in P.EXAMPLES:
        (src / f"{e.source}.bpf.c").write_text("this is not C\n")
    monkeypatch.setattr(P, "sources_dir", lambda: src)
    if shutil.which("clang") is None or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("needs clang and this kernel's BTF")
    why = P.build_programs(tmp_path / "out", tmp_path / "cache")
    for engine in D.ENGINES:
        assert "not built for the " + engine in why[engine] and ".bpf.c" in why[engine]
        assert not (tmp_path / "out" / P.program_file_name(engine)).exists()


def test_the_device_has_every_report_the_programs_send() -> None:
    rd = parse(P.PROGRAM_DESCRIPTOR)
    sizes = {
        (kind, i): rd.report_length(i, kind)
        for kind in (ReportKind.INPUT, ReportKind.OUTPUT, ReportKind.FEATURE)
        for i in rd.report_ids(kind)
    }
    assert sizes[(ReportKind.INPUT, 1)] == len(P.F13) == len(P.CTRL_C) == len(P.ALL_UP)
    assert sizes[(ReportKind.INPUT, 2)] == len(P.pen_report(0))
    assert sizes[(ReportKind.INPUT, 0x10)] == len(P.WAKE_UP)
    assert sizes[(ReportKind.OUTPUT, 0x10)] == len(P.SET_MODE)
    assert sizes[(ReportKind.FEATURE, 5)] == len(P.ENABLE)


def test_pen_reports_are_held_ones_and_unique() -> None:
    reps = {P.pen_report(i) for i in range(300)}
    assert len(reps) == 300 and all(r[:2] == b"\x02\x00" for r in reps)


def test_blocks_alternate_the_engines() -> None:
    got = list(P.blocks(12, 5))
    assert [start for start, _ in got] == [0, 5, 10]
    assert [order for _, order in got] == [
        ["userspace", "kernel"],
        ["kernel", "userspace"],
        ["userspace", "kernel"],
    ]
    assert list(P.blocks(0)) == []


def test_cpu_per_request() -> None:
    assert P.per_request_us(6_000_000, 20, 3) == 100.0
    assert P.per_request_us(0, 20, 1) == 0.0
    assert P.per_request_us(5, 0, 2) is None


def test_sched_cpu_of_this_process_grows(tmp_path: Path) -> None:
    before = P.sched_cpu_ns(os.getpid())
    x = 0
    for i in range(300_000):
        x += i
    assert P.sched_cpu_ns(os.getpid()) > before
    # the fallback: the clock ticks of /proc/PID/stat
    fake = tmp_path / "42"
    (fake / "task" / "42").mkdir(parents=True)
    fields = ["S"] + ["0"] * 10 + ["100", "50"] + ["0"] * 30
    (fake / "stat").write_text("42 (x y) " + " ".join(fields) + "\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert P.sched_cpu_ns(42, tmp_path) == 150 * 1_000_000_000 // ticks


def test_program_state_from_status() -> None:
    ok = {"programs": [{"program": f"p{i}", "engine": "kernel"} for i in range(3)]}
    assert P.program_state(ok) == (True, "")
    assert P.program_state({"programs": ok["programs"][:1]}) == (False, "")
    bad = {"programs": [{"program": "x.bpf.o", "error": "verifier said no"}]}
    loaded, why = P.program_state(bad)
    assert not loaded and "x.bpf.o: verifier said no" in why


def test_program_rows_come_from_the_program_devices() -> None:
    p = D.plan(samples=1)
    devs = {e: D.BenchDevice(e, None) for e in D.ENGINES}
    progs = {e: D.BenchDevice(e, None) for e in D.ENGINES}
    progs["userspace"].add("program_defer", "reinject_lateness", 900.0)
    progs["userspace"].add("program_defer", "daemon_cpu_per_request", 50.0)
    progs["kernel"].note = "program not loaded: x"
    res = {(r.scenario, r.metric, r.engine): r for r in D.results(devs, D.expected_rows(p), progs)}
    assert res[("program_defer", "reinject_lateness", "userspace")].p50 == 900.0
    assert res[("program_defer", "reinject_lateness", "kernel")].note == "program not loaded: x"
    assert res[("defer_1ms", "reinject_lateness", "kernel")].note == "no samples (timed out)"
    devs["kernel"].add("program_defer", "daemon_cpu_per_request", 0.0)  # not a program device
    res2 = D.results(devs, D.expected_rows(p), progs)
    cpu = [r for r in res2 if r.metric == "daemon_cpu_per_request" and r.engine == "kernel"]
    assert all(r.n == 0 for r in cpu)
