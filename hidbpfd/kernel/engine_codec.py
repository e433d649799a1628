"""The in-kernel engine's tables and records: what :mod:`hidbpfd.kernel.engine` writes to the
``engine_cfg`` map (``struct engine_config``: a device's policies, their steps and filter rules)
and reads back from ``engine_ring`` (``struct engine_record``), as ``bpf/engine.h`` lays them out
(quoted above their formats). Pure: no BPF calls here; a policy the kernel cannot run is refused
with :class:`EngineRefused` (or, for the check without a kernel, :func:`params_reason`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hidbpfd.engine.dispatch import Binding, Outcome, build_table
from hidbpfd.engine.filter import RECORD_DATA_MAX, RuleTableError, check_table
from hidbpfd.kernel.filter_codec import RULE_FORMAT, RULE_SIZE, encode_rules
from hidbpfd.model import PATTERN_MAX, DeviceId, Pattern
from hidbpfd.policies.defer import Defer
from hidbpfd.policies.inject import InjectPolicy
from hidbpfd.policies.params import Feature, Output, Wait
from hidbpfd.policies.reinit import Reinit
from hidbpfd.policies.release_guard import ReleaseGuard

# #define ENGINE_POLICIES_MAX 8 / STEPS_MAX 16 / SEND_MAX 64 / HELD_MAX 128 / FIFO_MAX 32
POLICIES_MAX: Final = 8
STEPS_MAX: Final = 16
SEND_MAX: Final = 64
HELD_MAX: Final = 128
FIFO_MAX: Final = 32
assert HELD_MAX == RECORD_DATA_MAX  # the engine holds what the userspace filter can hold

# struct engine_policy.type
TYPE_DEFER: Final = 1
TYPE_INJECT: Final = 2
TYPE_RELEASE_GUARD: Final = 3
TYPE_REINIT: Final = 4
# struct engine_policy.flags
F_FLUSH: Final = 1 << 0
F_ON_REPORT: Final = 1 << 1
F_ON_ADDED: Final = 1 << 2
F_ON_RESUME: Final = 1 << 3
F_VERIFY: Final = 1 << 4
# struct engine_step.kind
STEP_INPUT: Final = 1
STEP_OUTPUT: Final = 2
STEP_FEATURE: Final = 3
STEP_WAIT: Final = 4
# struct engine_trigger.what
TRIGGERS: Final[dict[str, int]] = {"added": 1, "resume": 2}
# struct engine_record.kind
REC_PASS: Final = 1
REC_HOLD: Final = 2
REC_INJECT: Final = 3
REC_OUTPUT: Final = 4
REC_FEATURE: Final = 5
REC_REPLY: Final = 6
REC_SCHEDULE: Final = 7
REC_CANCEL: Final = 8
REC_TIMER: Final = 9
REC_OVERFLOW: Final = 10
REC_NO_CONTEXT: Final = 11
NO_POLICY: Final = 0xFF

# struct engine_step { __u64 wait_ns; __u8 kind; __u8 _pad; __u16 len; __u32 _pad2;
#                      __u8 data[ENGINE_SEND_MAX]; };
STEP_FORMAT: Final = f"<QBxH4x{SEND_MAX}s"
STEP_SIZE: Final = struct.calcsize(STEP_FORMAT)  # 80

# struct engine_policy { __u32 type; __u32 flags; __u8 rule_off; __u8 rule_count; __u8 nsteps;
#   __u8 verify_id; __u16 verify_len; __u16 retries; __u64 delay_ns;
#   struct hidbpfd_rule verify; struct engine_step steps[ENGINE_STEPS_MAX]; };
POLICY_HEAD_FORMAT: Final = "<IIBBBBHHQ"
POLICY_SIZE: Final = struct.calcsize(POLICY_HEAD_FORMAT) + RULE_SIZE + STEPS_MAX * STEP_SIZE

# struct engine_config { __u32 hid_id; __u32 npolicies; struct hidbpfd_device_rules rules;
#                        struct engine_policy policies[ENGINE_POLICIES_MAX]; };
CONFIG_HEAD_FORMAT: Final = "<II"

# struct engine_stats { __u64 matched, held, injected, output, feature, get_feature, errors,
#                       overflow, ring_drops, timers, wq_runs, trace_drops; };
STATS_FIELDS: Final = (
    "matched",
    "held",
    "injected",
    "output",
    "feature",
    "get_feature",
    "errors",
    "overflow",
    "ring_drops",
    "timers",
    "wq_runs",
    "trace_drops",
)
STATS_FORMAT: Final = f"<{len(STATS_FIELDS)}Q"

# struct engine_record { __u64 ts_ns; __u32 hid_id; __u8 kind; __u8 policy; __u16 len;
#                        __s32 value; __u32 detail; __u8 data[ENGINE_HELD_MAX]; };
RECORD_FORMAT: Final = f"<QIBBHiI{HELD_MAX}s"
RECORD_SIZE: Final = struct.calcsize(RECORD_FORMAT)  # 152
# #define ENGINE_RECORD_HEAD 24 / ENGINE_RECORD_SHORT 32: a record is the header alone, the
# header and 32 bytes of data, or the whole struct (the ring records each one's size)
RECORD_HEAD: Final = 24
RECORD_SHORT: Final = 32

# struct engine_trigger { __u32 what; __u32 _pad; };
TRIGGER_FORMAT: Final = "<I4x"

TIMER_KEYS: Final[dict[int, str]] = {
    TYPE_DEFER: "release",
    TYPE_INJECT: "step",
    TYPE_RELEASE_GUARD: "timeout",
    TYPE_REINIT: "step",
}
"""The Python policies' Schedule keys, for monitor lines that read the same in both engines."""

TRY_USERSPACE: Final = 'Try engine = "userspace" for this file'


class EngineRefused(ValueError):
    """The kernel cannot run these policies; the message says why (and what to do)."""


# ----------------------------------------------------------------------------- encoding


def _report(what: str, data: bytes, limit: int = SEND_MAX) -> bytes:
    if len(data) > limit:
        raise EngineRefused(
            f"{what} is {len(data)} bytes; the in-kernel engine sends at most {limit}. "
            + TRY_USERSPACE
        )
    return data


def _steps(label: str, steps: Sequence[tuple[int, bytes, int]]) -> list[bytes]:
    if len(steps) > STEPS_MAX:
        raise EngineRefused(
            f"{label}: {len(steps)} steps; the in-kernel engine runs at most {STEPS_MAX} per "
            "policy. " + TRY_USERSPACE
        )
    return [struct.pack(STEP_FORMAT, wait, kind, len(data), data) for kind, data, wait in steps]


def encode_policy(b: Binding, rule_off: int) -> bytes:
    """``struct engine_policy`` for one binding whose rules start at ``rule_off`` in the
    device's table; raises :class:`EngineRefused` when it does not fit the kernel's maps."""
    p = b.policy
    label = b.label
    for r in p.rules():
        if len(r.pattern.data) > PATTERN_MAX:
            raise EngineRefused(
                f"{label}: pattern {r.pattern} is {len(r.pattern.data)} bytes; the filter "
                f"compares at most {PATTERN_MAX} (a release-guard without release_match "
                "matches its whole release). Try a shorter release_match"
            )
    flags = delay = verify_id = verify_len = retries = 0
    verify = bytes(RULE_SIZE)
    steps: list[tuple[int, bytes, int]] = []  # (kind, data, wait_ns)
    # exact classes: a subclass (a plugin) may change the semantics the kernel implements
    if type(p) is Defer:
        kind = TYPE_DEFER
        flags = F_FLUSH if p.on_cancel == "flush" else 0
        delay = p.delay_ms
    elif type(p) is InjectPolicy:
        kind = TYPE_INJECT
        for i, s in enumerate(p.reports):
            if isinstance(s, Wait):
                steps.append((STEP_WAIT, b"", s.ns))
            else:
                steps.append((STEP_INPUT, _report(f"{label}: reports[{i}]", s), 0))
    elif type(p) is ReleaseGuard:
        kind = TYPE_RELEASE_GUARD
        delay = p.timeout_ms
        steps.append((STEP_INPUT, _report(f"{label}: release", p.release), 0))
    elif type(p) is Reinit:
        kind = TYPE_REINIT
        for what, bit in (("report", F_ON_REPORT), ("added", F_ON_ADDED), ("resume", F_ON_RESUME)):
            if what in p.on:
                flags |= bit
        for i, st in enumerate(p.send):
            if isinstance(st, Wait):
                steps.append((STEP_WAIT, b"", st.ns))
            elif isinstance(st, Output):
                steps.append((STEP_OUTPUT, _report(f"{label}: send[{i}].output", st.data), 0))
            elif isinstance(st, Feature):
                steps.append((STEP_FEATURE, _report(f"{label}: send[{i}].feature", st.data), 0))
        retries = p.retries
        if p.verify is not None:
            flags |= F_VERIFY
            verify_id = p.verify.report_id
            verify_len = p.verify.length
            if verify_len > SEND_MAX:
                raise EngineRefused(
                    f"{label}: verify.length {verify_len}; the in-kernel engine reads back at "
                    f"most {SEND_MAX} bytes. " + TRY_USERSPACE
                )
            verify = _rule_bytes(p.verify.expect)
    else:
        raise EngineRefused(
            f"{label}: policy type {p.TYPE!r} ({type(p).__module__}.{type(p).__name__}) has no "
            "in-kernel implementation (the kernel runs defer, inject, release-guard and "
            "reinit). " + TRY_USERSPACE
        )
    packed = _steps(label, steps)
    head = struct.pack(
        POLICY_HEAD_FORMAT,
        kind,
        flags,
        rule_off,
        len(p.rules()),
        len(packed),
        verify_id,
        verify_len,
        retries,
        delay,
    )
    out = head + verify + b"".join(packed)
    return out + bytes(POLICY_SIZE - len(out))


def _rule_bytes(pat: Pattern) -> bytes:
    # struct hidbpfd_rule, as kernel.filter_codec.encode_rules writes it (group and flags unused)
    n = len(pat.data)
    return struct.pack(RULE_FORMAT, pat.data, pat.mask[:n], n, 0, 0, 0)


def encode_config(hid_id: int, bindings: Sequence[Binding]) -> bytes:
    """``struct engine_config`` for a device; raises :class:`EngineRefused` with the reason
    when the policies do not fit the kernel's maps."""
    if not bindings:
        raise EngineRefused("no policies to run")
    if len(bindings) > POLICIES_MAX:
        raise EngineRefused(
            f"{len(bindings)} policies for one device; the in-kernel engine runs at most "
            f"{POLICIES_MAX}. " + TRY_USERSPACE
        )
    table, offsets, _ = build_table(bindings)
    try:
        check_table(table)
    except RuleTableError as e:
        raise EngineRefused(f"{e}. {TRY_USERSPACE}") from e
    policies = [encode_policy(b, off) for b, off in zip(bindings, offsets, strict=True)]
    policies += [bytes(POLICY_SIZE)] * (POLICIES_MAX - len(policies))
    return (
        struct.pack(CONFIG_HEAD_FORMAT, hid_id, len(bindings))
        + encode_rules(table)
        + b"".join(policies)
    )


def params_reason(bindings: Sequence[Binding]) -> str | None:
    """Why these policies cannot run in the kernel (parameters only), or None."""
    try:
        encode_config(0, bindings)
    except EngineRefused as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """One ring-buffer record (``struct engine_record``)."""

    ts_ns: int
    hid_id: int
    kind: int
    policy: int
    value: int
    detail: int
    data: bytes


def decode_record(buf: bytes) -> EngineRecord:
    """Decode one sample of engine_ring (header only, short, or full: see RECORD_HEAD)."""
    if len(buf) < RECORD_SIZE:
        buf = buf.ljust(RECORD_SIZE, b"\0")
    ts, hid_id, kind, policy, length, value, detail, data = struct.unpack_from(RECORD_FORMAT, buf)
    return EngineRecord(ts, hid_id, kind, policy, value, detail, data[: min(length, HELD_MAX)])


def _errno(value: int) -> str:
    return f"{os.strerror(-value)} (errno {-value})"


def outcomes(
    rec: EngineRecord, device: DeviceId, labels: Sequence[str], keys: Sequence[str] = ()
) -> list[Outcome]:
    """What a record means in the dispatch's vocabulary (``monitor`` reads the same for both
    engines): a report passed/held, an action, a timer, an error. ``labels`` and ``keys`` are
    each policy's label and Schedule key, by index."""
    label = labels[rec.policy] if rec.policy < len(labels) else ""
    key = keys[rec.policy] if rec.policy < len(keys) else ""
    t = rec.ts_ns
    out: list[Outcome] = []
    if rec.kind == REC_PASS:
        out.append(Outcome(t, device, "pass", rec.data, detail="kernel"))
    elif rec.kind == REC_HOLD:
        out.append(Outcome(t, device, "hold", rec.data, detail="kernel"))
    elif rec.kind in (REC_INJECT, REC_OUTPUT, REC_FEATURE):
        kind = {REC_INJECT: "inject", REC_OUTPUT: "output", REC_FEATURE: "feature"}[rec.kind]
        out.append(Outcome(t, device, kind, rec.data, label))
        if rec.value < 0:
            why = f"{kind} failed: {_errno(rec.value)}"
            out.append(Outcome(t, device, "error", b"", label, why))
    elif rec.kind == REC_REPLY:
        rid = rec.data[:1] or b"\0"
        out.append(Outcome(t, device, "get_feature", rid, label, "kernel"))
        err = _errno(rec.value) if rec.value < 0 else ""
        out.append(Outcome(t, device, "reply", rec.data, label, err))
        if rec.value < 0:
            out.append(Outcome(t, device, "error", b"", label, f"get feature failed: {err}"))
    elif rec.kind == REC_SCHEDULE:
        out.append(Outcome(t, device, "schedule", b"", label, f"{key} +{rec.detail / 1e3:g} ms"))
    elif rec.kind == REC_CANCEL:
        out.append(Outcome(t, device, "cancel", b"", label, key))
    elif rec.kind == REC_TIMER:
        out.append(Outcome(t, device, "timer", b"", label, key))
    elif rec.kind == REC_OVERFLOW:
        out.append(
            Outcome(
                t,
                device,
                "error",
                b"",
                label,
                f"in-kernel I/O queue full ({FIFO_MAX}): {rec.detail} operation(s) lost",
            )
        )
    elif rec.kind == REC_NO_CONTEXT:
        out.append(
            Outcome(t, device, "error", b"", label, "hid_bpf_allocate_context failed: no device")
        )
    return out


def timer_key(b: Binding) -> str:
    """The Python policy's Schedule key for binding ``b`` (see :data:`TIMER_KEYS`)."""
    kinds = {Defer: TYPE_DEFER, InjectPolicy: TYPE_INJECT, ReleaseGuard: TYPE_RELEASE_GUARD}
    return TIMER_KEYS.get(kinds.get(type(b.policy), TYPE_REINIT), "")
