"""``hidbpfd bench`` (the device benchmark) on the host: what can be checked without uhid — the
plan, the policy files (both engines the same policies, the kernel one fitting the engine), the
row shape of the results for every scenario and engine, the measuring helpers (/proc and BPF
run-time statistics on a real program), and the CLI's refusal where uhid is missing. Never how
fast anything is; the VM tier runs the benchmark itself (tests/device/test_bench_devices.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hidbpfd.bench import devices as D
from hidbpfd.bench import report
from hidbpfd.cli import main
from hidbpfd.config import load
from hidbpfd.kernel.engine_codec import params_reason
from hidbpfd.model import DeviceId
from hidbpfd.policies.defer import Defer

KEYS = {"scenario", "engine", "metric", "unit", "n", "p50", "p90", "p99", "p999", "max"}


@pytest.mark.parametrize("quick", [True, False])
def test_plan_covers_every_scenario(quick: bool) -> None:
    p = D.plan(quick=quick)
    assert set(p.defer) == set(D.DEFER_DELAYS_MS) and all(n > 0 for n in p.defer.values())
    assert p.inject > 0 and p.reinit > 0 and p.load_rate == 8000 and p.load_s > 0
    assert list(p.rates) == sorted(p.rates) and p.rate_s > 0
    rows = D.expected_rows(p)
    assert {sc for sc, _ in rows} == set(D.SCENARIOS)
    assert all(metric in D.UNITS for _, metric in rows)
    if quick:  # what --quick promises to fit in two minutes
        lat = sum(ms * n for ms, n in p.defer.items()) / 1000
        # two throughput passes: without and with monitor clients
        assert lat < 10 and 2 * p.load_s + 2 * len(p.rates) * (p.rate_s + 2) < 40


def test_policy_files_are_the_same_policies_for_both_engines(tmp_path: Path) -> None:
    files = D.policy_files(tmp_path)
    cfg = load([tmp_path])
    assert not cfg.errors, cfg.errors
    by_engine = {f.engine: f for f in cfg.files}
    assert set(by_engine) == set(D.ENGINES)
    u, k = by_engine["userspace"], by_engine["kernel"]
    assert [b.policy for b in u.bindings] == [b.policy for b in k.bindings]
    assert [b.policy.TYPE for b in k.bindings] == [
        "defer",
        "defer",
        "defer",
        "inject",
        "reinit",
        "release-guard",
    ]
    assert params_reason(k.bindings) is None  # the kernel engine can run all of it
    for engine, path in files.items():
        dev = DeviceId(3, D.VENDOR, D.PRODUCTS[engine], "bench")
        assert cfg.files_for(dev) == [by_engine[engine]], path


def test_reports_hit_the_right_rules(tmp_path: Path) -> None:
    D.policy_files(tmp_path)
    bindings = load([tmp_path]).files[0].bindings
    defers = [b.policy for b in bindings if isinstance(b.policy, Defer)]
    for ms, pol in zip(D.DEFER_DELAYS_MS, defers, strict=True):
        assert pol.delay_ms == ms * 1_000_000 and pol.match.matches(D.defer_trigger(ms, 7))
    every_rule = [r.pattern for b in bindings for r in b.policy.rules()]
    for seq in (0, 1, 255, 4097):
        assert not any(p.matches(D.unmatched(seq)) for p in every_rule)
    guard = bindings[-1].policy
    assert guard.rules()[0].pattern.matches(D.matched(3))
    assert not guard.rules()[1].pattern.matches(D.matched(3))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], 0.0),
        ([(1000.0, 500, 500, 0), (2000.0, 1000, 1000, 0)], 2000.0),
        ([(1000.0, 500, 500, 0), (1990.0, 1000, 990, 0), (4000.0, 2000, 2000, 0)], 1000.0),
        ([(1000.0, 500, 500, 3)], 0.0),
    ],
)
def test_sustained_rate(steps: list[tuple[float, int, int, int]], expected: float) -> None:
    assert D.sustained(steps) == expected


def test_results_have_both_engines_for_every_row() -> None:
    p = D.plan(samples=2)
    devs = {e: D.BenchDevice(e, None) for e in D.ENGINES}
    devs["userspace"].add("defer_1ms", "reinject_lateness", 120.0)
    devs["userspace"].add("defer_1ms", "reinject_lateness", 80.0)
    devs["kernel"].note = "in-kernel engine refused: because"
    rows = D.expected_rows(p)
    res = D.results(devs, rows)
    assert len(res) == 2 * len(rows)
    for (sc, metric), (u, k) in zip(rows, zip(res[::2], res[1::2], strict=True), strict=True):
        assert (u.scenario, u.metric, u.engine) == (sc, metric, "userspace")
        assert (k.scenario, k.metric, k.engine) == (sc, metric, "kernel")
        assert k.n == 0 and k.note.startswith("in-kernel engine refused")
    assert (res[0].n, res[0].p50, res[0].max) == (2, 80.0, 120.0)
    assert res[2].note == "no samples (timed out)"
    doc = report.to_json(res)
    assert set(doc) == {"machine", "emulated", "results"} and isinstance(doc["emulated"], bool)
    assert all(set(r) >= KEYS for r in doc["results"])
    json.dumps(doc)
    text = report.table(res)
    assert "defer_1ms" in text and "throughput" in text


def test_proc_counters_of_this_process() -> None:
    a = D.proc_counters(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    for _ in range(3):
        time.sleep(0.002)
    b = D.proc_counters(os.getpid())
    assert (b - a).cpu_ns >= 0 and (b - a).wakeups >= 3


def test_bpf_run_time_statistics_count_a_real_program() -> None:
    from hidbpfd.kernel.libbpf import BpfError
    from hidbpfd.kernel.source import BpfEventSource, BpfUnavailable

    src = BpfEventSource(lambda _r: None, ring_bytes=1 << 16)
    try:
        src.open()
        stats = D.BpfStats()
    except (BpfUnavailable, BpfError, OSError) as e:
        src.close()
        pytest.skip(f"BPF unavailable here: {e}")
    try:
        ns0, cnt0 = stats.totals("hidbpfd_feed")
        for _ in range(20):
            src.feed(0x7777, b"\x01\x02")
        ns1, cnt1 = stats.totals("hidbpfd_feed")
        assert cnt1 - cnt0 == 20 and ns1 > ns0
    finally:
        stats.close()
        src.close()


def test_cli_says_where_to_run_it(capsys: pytest.CaptureFixture[str]) -> None:
    if os.path.exists("/dev/uhid"):
        pytest.skip("this kernel has uhid: the VM-tier test runs the benchmark")
    assert main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "/dev/uhid" in err and "hidbpfd vm" in err and "--mechanics" in err
