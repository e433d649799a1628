"""The in-kernel engine's parameters: engine.h is the one layout (checked with the host C
compiler), every example policy encodes into it field by field, every limit is refused with a
reason that says what to do, records read back as the dispatch's outcomes, and the daemon
refuses a file it cannot run in the kernel (logged, in ``status``, nothing running) instead of
falling back."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.config import load
from hidbpfd.engine.dispatch import Binding, Outcome
from hidbpfd.kernel import engine as KE
from hidbpfd.kernel import engine_codec as K
from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.filter_codec import DEVICE_RULES_SIZE, RULE_SIZE
from hidbpfd.model import DeviceId, Pattern
from hidbpfd.policies.defer import Defer
from hidbpfd.policies.inject import InjectPolicy
from hidbpfd.policies.params import Feature, Output, Verify, Wait
from hidbpfd.policies.reinit import Reinit
from hidbpfd.policies.release_guard import ReleaseGuard
from tests.bpf.test_layout import c_layout, offsets
from tests.helpers import LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
HEADER = BPF_DIR / "engine.h"
MS = 1_000_000


def defines() -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(
        r"^#define\s+(ENGINE_\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER.read_text(), re.MULTILINE
    ):
        expr = m.group(2)
        if expr in out:
            out[m.group(1)] = out[expr]
        elif v := re.fullmatch(r"\(?(\d+|0x[0-9a-f]+)(?:\s*<<\s*(\d+))?\)?", expr):
            out[m.group(1)] = int(v.group(1), 0) << int(v.group(2) or 0)
    return out


def test_constants_match_header() -> None:
    d = defines()
    assert (d["ENGINE_POLICIES_MAX"], d["ENGINE_STEPS_MAX"]) == (K.POLICIES_MAX, K.STEPS_MAX)
    assert (d["ENGINE_SEND_MAX"], d["ENGINE_HELD_MAX"]) == (K.SEND_MAX, K.HELD_MAX)
    assert d["ENGINE_FIFO_MAX"] == K.FIFO_MAX
    for name in ("DEFER", "INJECT", "RELEASE_GUARD", "REINIT"):
        assert d[f"ENGINE_{name}"] == getattr(K, f"TYPE_{name}")
    for name in ("FLUSH", "ON_REPORT", "ON_ADDED", "ON_RESUME", "VERIFY"):
        assert d[f"ENGINE_F_{name}"] == getattr(K, f"F_{name}")
    for name in ("INPUT", "OUTPUT", "FEATURE", "WAIT"):
        assert d[f"ENGINE_STEP_{name}"] == getattr(K, f"STEP_{name}")
    assert {w: d[f"ENGINE_TRIGGER_{w.upper()}"] for w in K.TRIGGERS} == K.TRIGGERS
    for name in (
        "PASS",
        "HOLD",
        "INJECT",
        "OUTPUT",
        "FEATURE",
        "REPLY",
        "SCHEDULE",
        "CANCEL",
        "TIMER",
        "OVERFLOW",
        "NO_CONTEXT",
    ):
        assert d[f"ENGINE_REC_{name}"] == getattr(K, f"REC_{name}")
    assert d["ENGINE_NO_POLICY"] == K.NO_POLICY
    assert (d["ENGINE_RECORD_HEAD"], d["ENGINE_RECORD_SHORT"]) == (K.RECORD_HEAD, K.RECORD_SHORT)


PROBE_C = r"""
#include <linux/types.h>
#include <stddef.h>
#include <stdio.h>
#include "hidbpfd.h"
#include "engine.h"
#define F(s, f) printf("\"%s.%s\": %zu,", #s, #f, offsetof(struct s, f))
#define S(s) printf("\"%s\": %zu,", #s, sizeof(struct s))
int main(void) {
    printf("{");
    S(engine_step); F(engine_step, kind); F(engine_step, len); F(engine_step, data);
    S(engine_policy); F(engine_policy, flags); F(engine_policy, rule_off);
    F(engine_policy, rule_count); F(engine_policy, nsteps); F(engine_policy, verify_id);
    F(engine_policy, verify_len); F(engine_policy, retries); F(engine_policy, delay_ns);
    F(engine_policy, verify); F(engine_policy, steps);
    S(engine_config); F(engine_config, npolicies); F(engine_config, rules);
    F(engine_config, policies);
    S(engine_stats); S(engine_trigger);
    S(engine_record); F(engine_record, hid_id); F(engine_record, kind);
    F(engine_record, policy); F(engine_record, len); F(engine_record, value);
    F(engine_record, detail); F(engine_record, data);
    printf("\"end\": 0}");
    return 0;
}
"""


def test_struct_layouts_match_header(tmp_path: Path) -> None:
    c = c_layout(tmp_path, PROBE_C)

    assert c["engine_step"] == K.STEP_SIZE
    assert offsets(K.STEP_FORMAT)[1:] == [c[f"engine_step.{f}"] for f in ("kind", "len", "data")]
    assert c["engine_policy"] == K.POLICY_SIZE
    head = ("flags", "rule_off", "rule_count", "nsteps", "verify_id", "verify_len", "retries")
    assert offsets(K.POLICY_HEAD_FORMAT)[1:] == [
        c[f"engine_policy.{f}"] for f in (*head, "delay_ns")
    ]
    assert c["engine_policy.verify"] == struct.calcsize(K.POLICY_HEAD_FORMAT)
    assert c["engine_policy.steps"] == c["engine_policy.verify"] + RULE_SIZE
    assert c["engine_config.rules"] == struct.calcsize(K.CONFIG_HEAD_FORMAT)
    assert c["engine_config.policies"] == c["engine_config.rules"] + DEVICE_RULES_SIZE
    assert c["engine_config"] == len(K.encode_config(1, bindings_of("50-28bd__0905*")))
    assert c["engine_stats"] == struct.calcsize(K.STATS_FORMAT)
    assert c["engine_trigger"] == struct.calcsize(K.TRIGGER_FORMAT)
    assert c["engine_record"] == K.RECORD_SIZE
    assert offsets(K.RECORD_FORMAT)[1:] == [
        c[f"engine_record.{f}"] for f in ("hid_id", "kind", "policy", "len", "value", "detail")
    ] + [c["engine_record.data"]]
    assert c["engine_record.data"] == K.RECORD_HEAD


@pytest.mark.parametrize("size", [K.RECORD_HEAD, K.RECORD_HEAD + K.RECORD_SHORT, K.RECORD_SIZE])
def test_short_records_decode(size: int) -> None:
    """The engine writes records only as long as their data: header, short, or full."""
    data = bytes(range(min(size - K.RECORD_HEAD, 40)))
    raw = struct.pack(K.RECORD_FORMAT, 9, 1, K.REC_HOLD, K.NO_POLICY, len(data), 0, 3, data)
    r = K.decode_record(raw[:size])
    assert (r.ts_ns, r.kind, r.detail, r.data) == (9, K.REC_HOLD, 3, data)


# ------------------------------------------------------------------------------ encoding


def bindings_of(glob: str) -> list[Binding]:
    cfg = load(sorted((ROOT / "config").glob(glob + ".toml")))
    assert not cfg.errors
    return [b for f in cfg.files for b in f.bindings]


def policy(config: bytes, i: int) -> dict[str, Any]:
    """Decode ``struct engine_policy`` i of an encoded config."""
    base = struct.calcsize(K.CONFIG_HEAD_FORMAT) + DEVICE_RULES_SIZE + i * K.POLICY_SIZE
    head = struct.unpack_from(K.POLICY_HEAD_FORMAT, config, base)
    keys = ("type", "flags", "rule_off", "rule_count", "nsteps", "verify_id", "verify_len")
    out = dict(zip((*keys, "retries", "delay_ns"), head, strict=True))
    vbase = base + struct.calcsize(K.POLICY_HEAD_FORMAT)
    out["verify"] = config[vbase : vbase + RULE_SIZE]
    steps = []
    for s in range(out["nsteps"]):
        wait, kind, n, data = struct.unpack_from(
            K.STEP_FORMAT, config, vbase + RULE_SIZE + s * K.STEP_SIZE
        )
        steps.append((kind, data[:n], wait))
    out["steps"] = steps
    return out


def test_every_example_fits_the_kernel() -> None:
    for f in sorted((ROOT / "config").glob("*.toml")):
        assert K.params_reason(bindings_of(f.stem)) is None, f.name


def test_examples_encode_field_by_field() -> None:
    cfg = K.encode_config(0x42, bindings_of("50-28bd__0905*"))
    assert struct.unpack_from(K.CONFIG_HEAD_FORMAT, cfg) == (0x42, 1)
    p = policy(cfg, 0)
    assert (p["type"], p["flags"], p["rule_off"], p["rule_count"]) == (K.TYPE_DEFER, 0, 0, 2)
    assert p["delay_ns"] == 20 * MS and p["steps"] == []

    p = policy(K.encode_config(1, bindings_of("50-1209__a001*")), 0)
    assert (p["type"], p["rule_count"]) == (K.TYPE_INJECT, 1)
    assert p["steps"] == [
        (K.STEP_INPUT, bytes.fromhex("01010600"), 0),
        (K.STEP_WAIT, b"", 5 * MS),
        (K.STEP_INPUT, bytes.fromhex("01000000"), 0),
    ]

    p = policy(K.encode_config(1, bindings_of("50-1209__a002*")), 0)
    assert p["type"] == K.TYPE_REINIT
    assert p["flags"] == K.F_ON_REPORT | K.F_ON_ADDED | K.F_ON_RESUME | K.F_VERIFY
    assert (p["verify_id"], p["verify_len"], p["retries"]) == (5, 2, 2)
    assert p["verify"][:2] == b"\x05\x01" and p["verify"][32:34] == b"\xff\xff"
    assert p["steps"] == [
        (K.STEP_OUTPUT, bytes.fromhex("10ff801101"), 0),
        (K.STEP_WAIT, b"", 10 * MS),
        (K.STEP_FEATURE, bytes.fromhex("0501"), 0),
    ]

    p = policy(K.encode_config(1, bindings_of("50-1209__a003*")), 0)
    assert (p["type"], p["rule_count"], p["delay_ns"]) == (K.TYPE_RELEASE_GUARD, 2, 500 * MS)
    assert p["steps"] == [(K.STEP_INPUT, bytes.fromhex("030000"), 0)]


def b(p: Any, i: int = 0) -> Binding:
    return Binding(p, "/etc/hidbpfd/devices.d/50-1234__5678-test.toml", i)


DEFER = Defer(Pattern.parse("02 00"), 20 * MS)
FLUSH = Defer(Pattern.parse("02 00"), 20 * MS, Pattern.parse("02 ??"), "flush")


def test_rules_and_flags_follow_the_table() -> None:
    """Policy i's rules start where build_table put them; flush and reinit-without-report."""
    no_report = Reinit((Output(b"\x10\x01"),), on=("added",))
    cfg = K.encode_config(1, [b(DEFER, 0), b(FLUSH, 1), b(no_report, 2), b(DEFER, 3)])
    offs = [(policy(cfg, i)["rule_off"], policy(cfg, i)["rule_count"]) for i in range(4)]
    assert offs == [(0, 2), (2, 2), (4, 0), (4, 2)]
    assert policy(cfg, 1)["flags"] == K.F_FLUSH
    assert policy(cfg, 2)["flags"] == K.F_ON_ADDED
    assert struct.unpack_from("<I", cfg, struct.calcsize(K.CONFIG_HEAD_FORMAT))[0] == 6


class PluginDefer(Defer):
    """A third-party subclass: the kernel cannot know what it changed."""


@dataclass(frozen=True)
class Case:
    name: str
    bindings: Sequence[Binding]
    reason: str


LONG = bytes(65)
CASES = [
    Case("nine policies", [b(DEFER, i) for i in range(9)], "at most 8"),
    Case(
        "seventeen steps",
        [b(InjectPolicy(Pattern.parse("01"), (b"\x01",) * 17))],
        "at most 16 per policy",
    ),
    Case(
        "inject report too long",
        [b(InjectPolicy(Pattern.parse("01"), (b"\x01", Wait(MS), LONG)))],
        "reports[2] is 65 bytes; the in-kernel engine sends at most 64",
    ),
    Case(
        "release too long",
        [b(ReleaseGuard(Pattern.parse("03"), LONG, 5 * MS, Pattern.parse("03 00")))],
        "release is 65 bytes",
    ),
    Case(
        "release matched whole, longer than a pattern",
        [b(ReleaseGuard(Pattern.parse("03"), bytes(33), 5 * MS))],
        "is 33 bytes; the filter compares at most 32",
    ),
    Case(
        "feature too long",
        [b(Reinit((Feature(LONG),), Pattern.parse("10")))],
        "send[0].feature is 65 bytes",
    ),
    Case(
        "verify read-back too long",
        [b(Reinit((Output(b"\x10"),), Pattern.parse("10"), verify=Verify(5, 65, Pattern())))],
        "verify.length 65; the in-kernel engine reads back at most 64",
    ),
    Case(
        "a plugin's policy",
        [b(PluginDefer(Pattern.parse("02"), MS))],
        "has no in-kernel implementation",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refusal_reasons(case: Case) -> None:
    reason = K.params_reason(case.bindings)
    assert reason is not None and case.reason in reason, reason
    assert "Try " in reason
    with pytest.raises(K.EngineRefused, match=re.escape(case.reason)):
        K.encode_config(1, case.bindings)
    # the engine object says so too, whatever this kernel is (and why this kernel cannot)
    assert case.reason in (KE.KernelEngine().supports(case.bindings) or "")


def test_limits_are_inclusive() -> None:
    steps = (bytes(K.SEND_MAX),) * K.STEPS_MAX
    ok = [b(InjectPolicy(Pattern.parse("01"), steps), i) for i in range(K.POLICIES_MAX)]
    assert K.params_reason(ok) is None
    assert K.params_reason([]) == "no policies to run"


def test_kernel_reason_matches_this_kernel() -> None:
    from hidbpfd.kernel.probe import probe

    reason = KE.kernel_reason()
    facts = probe(load=False)
    if not facts["hid_bpf_struct_ops"]["ok"]:
        assert reason is not None and "HID-BPF" in reason
    elif reason is not None:  # a HID-BPF kernel without source / a kfunc: says which
        assert "source" in reason or "kfunc" in reason or "not built" in reason


# ------------------------------------------------------------------------------ records

DEV = DeviceId(3, 0x1234, 0x5678, "test", hid_id="0003:1234:5678.0001")
LABELS = ["f.toml#0 defer", "f.toml#1 reinit"]
KEYS = ["release", "step"]


def rec(kind: int, policy: int = K.NO_POLICY, value: int = 0, detail: int = 0, data: bytes = b""):
    raw = struct.pack(K.RECORD_FORMAT, 123, 1, kind, policy, len(data), value, detail, data)
    return K.decode_record(raw)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (rec(K.REC_HOLD, data=b"\x02\x00"), [("hold", "0200", "", "kernel")]),
        (rec(K.REC_PASS, data=b"\x02\x20"), [("pass", "0220", "", "kernel")]),
        (rec(K.REC_INJECT, 0, data=b"\x02\x00"), [("inject", "0200", LABELS[0], "")]),
        (
            rec(K.REC_INJECT, 0, value=-5, data=b"\x02\x00"),
            [
                ("inject", "0200", LABELS[0], ""),
                ("error", "", LABELS[0], "inject failed: Input/output error (errno 5)"),
            ],
        ),
        (rec(K.REC_OUTPUT, 1, 5, data=b"\x10\x01"), [("output", "1001", LABELS[1], "")]),
        (rec(K.REC_FEATURE, 1, 2, data=b"\x05\x01"), [("feature", "0501", LABELS[1], "")]),
        (
            rec(K.REC_REPLY, 1, 2, 1, data=b"\x05\x01"),
            [("get_feature", "05", LABELS[1], "kernel"), ("reply", "0501", LABELS[1], "")],
        ),
        (rec(K.REC_SCHEDULE, 0, detail=20_000), [("schedule", "", LABELS[0], "release +20 ms")]),
        (rec(K.REC_CANCEL, 0), [("cancel", "", LABELS[0], "release")]),
        (rec(K.REC_TIMER, 1), [("timer", "", LABELS[1], "step")]),
        (
            rec(K.REC_OVERFLOW, 0, -105, 3),
            [("error", "", LABELS[0], "in-kernel I/O queue full (32): 3 operation(s) lost")],
        ),
    ],
)
def test_records_read_as_outcomes(record: K.EngineRecord, expected: list[tuple[str, ...]]) -> None:
    got = [
        (o.kind, o.data.hex(), o.policy, o.detail) for o in K.outcomes(record, DEV, LABELS, KEYS)
    ]
    assert got == expected
    assert all(o.t_ns == 123 and o.device == DEV for o in K.outcomes(record, DEV, LABELS, KEYS))


# ------------------------------------------------------------------------------ the daemon


class FakeEngine:
    """Stands in for KernelEngine on a kernel without HID-BPF: records what the daemon asks."""

    def __init__(self, on_outcome: Any, reason: str | None = None) -> None:
        self.on_outcome, self.reason = on_outcome, reason
        self.calls: list[tuple[str, int, Any]] = []

    def supports(self, bindings: Sequence[Binding]) -> str | None:
        return self.reason or K.params_reason(bindings)

    def attach(self, hid_id: int, bindings: Sequence[Binding], *, device: Any = None) -> str:
        self.calls.append(("attach", hid_id, [x.label for x in bindings]))
        self.on_outcome(Outcome(0, device, "added"))
        return "fake engine"

    def detach(self, hid_id: int) -> None:
        self.calls.append(("detach", hid_id, None))

    def device_event(self, hid_id: int, what: str) -> None:
        self.calls.append((what, hid_id, None))

    def set_observed(self, on: bool) -> None:
        self.calls.append(("observed", int(on), None))

    def stats(self, hid_id: int) -> dict[str, int]:
        return {"matched": 7, "held": 1, "injected": 2}

    def add_to_loop(self, loop: Any) -> None:
        pass

    def close(self) -> None:
        self.calls.append(("close", 0, None))


def fake_engines() -> tuple[list[FakeEngine], Callable[[Any], FakeEngine]]:
    """The engines a daemon creates, and the factory to give it."""
    engines: list[FakeEngine] = []

    def factory(on_outcome: Any) -> FakeEngine:
        engines.append(FakeEngine(on_outcome))
        return engines[-1]

    return engines, factory


def kernelize(path: Path) -> None:
    path.write_text('engine = "kernel"\n' + path.read_text())


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 4 * LIMIT_S))


def test_daemon_attaches_the_engine_instead_of_the_dispatch(tmp_path: Path) -> None:
    from tests.daemon.harness import OUT_OF_PROX, PEN, running, until

    engines, factory = fake_engines()

    async def body() -> None:
        async with running(tmp_path, engine_factory=factory) as r:
            kernelize(r.cfg / "50-28bd__0905-pen-proximity.toml")
            res = r.d.reload()
            assert PEN.key in res.changed or PEN.key in res.removed, res
            eng = engines[0]
            assert ("attach", PEN.kernel_id, ["50-28bd__0905-pen-proximity.toml#0 trust-no-out-of-proximity"]) in eng.calls  # fmt: skip
            assert ("added", PEN.kernel_id, None) in eng.calls
            assert PEN.key in r.d.kernel and PEN.key not in r.d.managed
            # the userspace filter no longer serves it: the report is not held by it
            r.feed(PEN, OUT_OF_PROX)
            await asyncio.sleep(0.05)
            assert r.got(PEN.key, "inject") == []
            st = next(x for x in r.d.status()["devices"] if x["hid_id"] == PEN.key)
            assert st["engine"] == "kernel" and st["bpf"] == "fake engine"
            assert st["counters"]["seen"] == 7 and st["kernel_stats"]["injected"] == 2
            from hidbpfd.service.status_text import render_status

            text = render_status(r.d.status())
            assert "fake engine" in text and "trust-no-out-of-proximity" in text
            r.d.resumed()
            assert ("resume", PEN.kernel_id, None) in eng.calls
            r.w.remove(PEN)
            await until(lambda: ("detach", PEN.kernel_id, None) in eng.calls, "engine detach")
            assert PEN.key not in r.d.kernel
        assert ("close", 0, None) in engines[0].calls

    run(body())


def test_daemon_refuses_what_the_kernel_cannot_run(tmp_path: Path) -> None:
    """The real engine on this kernel (no HID-BPF here) or a fake one saying no: the file's
    policies run nowhere, the reason is logged and in status, the other devices carry on."""
    from hidbpfd.kernel.engine import KernelEngine
    from tests.daemon.harness import IN_RANGE, KBD, OUT_OF_PROX, PEN, running, until

    reason = KE.kernel_reason()

    def factory(on_outcome: Any) -> Any:
        if reason is None:  # a HID-BPF kernel: make it refuse all the same
            return FakeEngine(on_outcome, reason="no, for this test")
        return KernelEngine(on_outcome)

    async def body() -> None:
        async with running(tmp_path, engine_factory=factory) as r:
            kernelize(r.cfg / "50-28bd__0905-pen-proximity.toml")
            r.d.reload()
            why = r.d.kernel_refused[PEN.key]
            assert why == (reason or "no, for this test")
            assert PEN.key not in r.d.kernel and PEN.key not in r.d.managed
            st = next(x for x in r.d.status()["devices"] if x["hid_id"] == PEN.key)
            assert st["kernel_refused"] == why and "REFUSED" in st["bpf"]
            from hidbpfd.service.status_text import render_status

            assert "in-kernel engine REFUSED" in render_status(r.d.status())
            # the macro keyboard (userspace) still works
            r.feed(KBD, bytes.fromhex("01006800"))
            await until(lambda: len(r.got(KBD.key, "inject")) == 2, "macro injections")
            r.feed(PEN, OUT_OF_PROX)
            r.feed(PEN, IN_RANGE)
            await asyncio.sleep(0.05)
            assert r.got(PEN.key, "inject") == []

    run(body())


def test_daemon_refuses_mixing_engines_on_one_device(tmp_path: Path) -> None:
    from tests.daemon.harness import OUT_OF_PROX, PEN, running, until

    engines: list[FakeEngine] = []

    def factory(on_outcome: Any) -> FakeEngine:
        engines.append(FakeEngine(on_outcome))
        return engines[-1]

    async def body() -> None:
        async with running(tmp_path, engine_factory=factory) as r:
            (r.cfg / "60-28bd__0905-extra.toml").write_text(
                '[device]\nname = "XP-Pen*"\n\n[[policy]]\ntype = "defer"\n'
                'match = "02 00"\ndelay_ms = 5\n'
            )
            kernelize(r.cfg / "50-28bd__0905-pen-proximity.toml")
            r.d.reload()
            why = r.d.kernel_refused[PEN.key]
            assert "60-28bd__0905-extra.toml" in why and "one device runs one engine" in why
            assert not engines or not [c for c in engines[0].calls if c[0] == "attach"]
            # the userspace file's policy runs; the kernel file's does not
            slot = r.d.dispatch.slots[PEN.key]
            assert [x.file.endswith("60-28bd__0905-extra.toml") for x in slot.bindings] == [True]
            r.feed(PEN, OUT_OF_PROX)
            await until(lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX], "defer 5 ms")

    run(body())


def test_engine_records_only_while_someone_listens(tmp_path: Path) -> None:
    """No observer: the engine is told to write failures only; a `monitor` client switches
    every step's record on, and its leaving switches them off again."""
    from tests.daemon.harness import running

    engines, factory = fake_engines()

    async def body() -> None:
        async with running(tmp_path, engine_factory=factory) as r:
            kernelize(r.cfg / "50-28bd__0905-pen-proximity.toml")
            r.d.reload()
            eng = engines[0]
            assert [c for c in eng.calls if c[0] == "observed"] == [("observed", 0, None)]
            got: list[dict[str, Any]] = []
            stop = r.d._subscribe(got.append)
            stop2 = r.d._subscribe(got.append)
            stop()
            assert [c[1] for c in eng.calls if c[0] == "observed"] == [0, 1]
            stop2()
            assert [c[1] for c in eng.calls if c[0] == "observed"] == [0, 1, 0]

    run(body())


def test_engine_kfuncs_are_read_by_the_probe() -> None:
    """kernel_reason() checks the engine's kfuncs in probe.kernel_btf()'s one reading of the
    kernel's BTF: each must be among the names the probe looks up."""
    from hidbpfd.kernel import probe

    assert set(KE.KFUNCS) <= set(probe.FUNCS)
