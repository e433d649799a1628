"""The in-kernel engine: a device's policies run in HID-BPF (``bpf/engine.bpf.c``), not here.

A policy file with top-level ``engine = "kernel"`` has its device's policies run by the kernel:
the same filter table, the same four policies with the same semantics as the Python ones (the
reference), with bpf_timer for delays and a bpf_wq for the I/O (injection, output and feature
reports). The daemon only loads it, writes the parameters, forwards ``added`` / ``resume`` and
reads what happened (ring-buffer records and counters) for ``status`` and ``monitor``.

Data flow, per device (one object each)::

    attach(hid_id, bindings) ─► encode_config ─► engine_cfg map ─► engine_init (BPF_PROG_RUN)
                                                   └► struct_ops engine_ops attached (HID-BPF)
    a report ─► engine_event ─► policies ─► bpf_timer ─► bpf_wq ─► hid_bpf_* I/O
                    └──────────────┴─────────────────────┴─► engine_ring ─► Outcome observers
    device_event(hid_id, "added" | "resume") ─► engine_trigger (BPF_PROG_RUN)

Where the kernel cannot run a file's policies, :meth:`KernelEngine.supports` says why (a
parameter beyond the maps' limits, a policy type without a kernel implementation, a kernel
without HID-BPF, ``source``, the kfuncs or bpf_wq) and the daemon refuses that file's engine;
nothing falls back silently. Layouts are quoted from ``bpf/engine.h`` above their formats.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.engine.dispatch import Binding, Outcome, build_table
from hidbpfd.engine.filter import RECORD_DATA_MAX, RuleTableError, check_table
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.source import RULE_FORMAT, RULE_SIZE, encode_rules
from hidbpfd.model import PATTERN_MAX, DeviceId, Pattern
from hidbpfd.policies.defer import Defer
from hidbpfd.policies.inject import InjectPolicy
from hidbpfd.policies.params import Feature, Output, Wait
from hidbpfd.policies.reinit import Reinit
from hidbpfd.policies.release_guard import ReleaseGuard

log = logging.getLogger("hidbpfd.engine")

ENGINE_OBJECT: Final = BPF_DIR / "engine.bpf.o"

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

KFUNCS: Final = (
    "hid_bpf_get_data",
    "hid_bpf_allocate_context",
    "hid_bpf_release_context",
    "hid_bpf_input_report",
    "hid_bpf_hw_output_report",
    "hid_bpf_hw_request",
    "bpf_wq_init",
    "bpf_wq_start",
)
"""What engine.bpf.c calls beyond the base helpers (bpf_timer, bpf_spin_lock, ringbuf), and
one of the two bpf_wq callback kfuncs (wq_compat.h; the build matching the kernel is loaded)."""

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
    # struct hidbpfd_rule, as kernel.source.encode_rules writes it (group and flags unused)
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


# ----------------------------------------------------------------------------- the kernel


def kernel_reason(obj_path: Path = ENGINE_OBJECT) -> str | None:
    """Why this kernel (or this build) cannot run the engine, or None."""
    from hidbpfd.kernel import probe

    try:
        btf = probe.kernel_btf()
    except lb.BpfError as e:
        return f"cannot read the kernel's BTF: {e}"
    if not btf.ok:
        return btf.reason
    if not (built := btf.wq_build(obj_path)).exists():
        return f"{built} not built. Try: python -m hidbpfd.kernel.bpf.build"
    if not btf.hid_bpf:
        return "this kernel has no HID-BPF (struct hid_bpf_ops; CONFIG_HID_BPF, Linux 6.11+)"
    if (btf.device_event_arity or 0) < 3:
        return (
            "hid_bpf_ops.hid_device_event has no `source` argument on this kernel, so the "
            "engine could not tell its own injected reports from the device's"
        )
    missing = [k for k in KFUNCS if k not in btf.funcs]
    if not btf.funcs & {probe.WQ_CALLBACK, probe.WQ_CALLBACK + "_impl"}:
        missing.append(probe.WQ_CALLBACK)
    if missing:
        return f"kfunc(s) {', '.join(missing)} not in this kernel's BTF"
    return None


def _write_observed(obj: lb.BpfObject, on: bool) -> None:
    # engine.bpf.c's .bss holds one global: __u32 engine_observed
    lb.map_update(obj.map(".bss").fd, _key0(), struct.pack("<I", int(on)))


@dataclass(slots=True)
class _Attached:
    hid_id: int
    device: DeviceId
    labels: list[str]
    keys: list[str]
    obj: lb.BpfObject
    link: lb.StructOpsLink
    ring: lb.RingBuffer
    reader_fd: int = -1
    records: int = 0


class KernelEngine:
    """Owner of the per-device engine objects. Created (lazily) by the daemon for the first
    policy file with ``engine = "kernel"``; ``on_outcome`` gets every record as dispatch
    :class:`~hidbpfd.engine.dispatch.Outcome` values, on the loop (or from :meth:`consume`)."""

    def __init__(
        self,
        on_outcome: Callable[[Outcome], None] | None = None,
        *,
        obj_path: str | Path | None = None,
        ring_bytes: int = 1 << 20,
    ) -> None:
        if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes must be a power of 2 >= 4096, not {ring_bytes}")
        self.on_outcome = on_outcome
        self.obj_path = Path(obj_path) if obj_path else ENGINE_OBJECT
        self.ring_bytes = ring_bytes
        self._devices: dict[int, _Attached] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.observed = False
        """Whether the engines write a record for every step (someone listens), or only
        their failures (see :meth:`set_observed`)."""
        self._reason: str | bool | None = False  # False: not asked yet

    # ------------------------------------------------------------------ what it can run

    def kernel_reason(self) -> str | None:
        """Why this kernel cannot run the engine at all, or None (asked once)."""
        if self._reason is False:
            self._reason = kernel_reason(self.obj_path)
        return self._reason  # type: ignore[return-value]

    def supports(self, bindings: Sequence[Binding]) -> str | None:
        """None if the kernel can run ``bindings`` for one device, else the reason (called by
        the daemon before :meth:`attach`; it refuses the file's engine with that reason)."""
        reasons = [r for r in (self.kernel_reason(), params_reason(bindings)) if r]
        return "; and ".join(reasons) or None

    # ------------------------------------------------------------------ devices

    def attach(
        self, hid_id: int, bindings: Sequence[Binding], *, device: DeviceId | None = None
    ) -> str:
        """Load the engine for device ``hid_id`` with ``bindings`` and attach it (HID-BPF).
        Returns a description for logs and ``status``. Raises :class:`EngineRefused` (with the
        reason) or :class:`~hidbpfd.kernel.libbpf.BpfError` (the verifier's last lines are
        logged). Does not run ``added`` triggers: the daemon calls :meth:`device_event`."""
        reason = self.supports(bindings)
        if reason:
            raise EngineRefused(reason)
        if hid_id in self._devices:
            self.detach(hid_id)
        dev = device or DeviceId(0, 0, 0, hid_id=f"0000:0000:0000.{hid_id:04X}")
        config = encode_config(hid_id, bindings)
        # struct hid_bpf_ops { int hid_id; ... }: set in the image before open (libbpf 1.1)
        from hidbpfd.kernel import probe

        built = probe.kernel_btf().wq_build(self.obj_path)
        image = lb.elf_patch(built.read_bytes(), "engine_ops", 0, struct.pack("<i", hid_id))
        obj = lb.BpfObject.open_mem(image)
        link: lb.StructOpsLink | None = None
        try:
            obj.map("engine_ring").set_max_entries(self.ring_bytes)
            obj.map("engine_trace").set_max_entries(self.ring_bytes)  # monitor's step records
            # registered through a link only: the kernel lets go of it when we die
            obj.map("engine_ops").set_map_flags(lb.BPF_F_LINK)
            with lb.capture_log(quiet=True) as lines:
                try:
                    obj.load()
                except lb.BpfError:
                    for line in lines[-30:]:
                        log.error("%s", line)
                    raise
            lb.map_update(obj.map("engine_cfg").fd, _key0(), config)
            _write_observed(obj, self.observed)
            ret = lb.prog_test_run(obj.program("engine_init").fd, ctypes.create_string_buffer(8))
            if ret != 0:
                raise lb.BpfError("engine_init (bpf_timer_init / bpf_wq_init)", -ret)
            link = obj.map("engine_ops").attach_struct_ops()
            ring = lb.RingBuffer(obj.map("engine_ring").fd, functools.partial(self._sample, hid_id))
            ring.add(obj.map("engine_trace").fd)  # failures first, then the steps
        except BaseException:
            if link is not None:
                link.destroy()
            obj.close()
            raise
        keys = [_timer_key(b) for b in bindings]
        att = _Attached(hid_id, dev, [b.label for b in bindings], keys, obj, link, ring)
        self._devices[hid_id] = att
        if self._loop is not None:
            self._watch(att)
        self._emit(Outcome(_now(), dev, "added", detail=f"{len(bindings)} policies (kernel)"))
        log.info("%s: in-kernel engine attached, %d policies", dev.describe(), len(bindings))
        return f"hid_bpf engine ({len(bindings)} policies in the kernel)"

    def detach(self, hid_id: int) -> None:
        """Detach and unload the device's engine (pending timers and I/O are dropped with
        it). Called when the device goes away or its policies change; idempotent."""
        att = self._devices.pop(hid_id, None)
        if att is None:
            return
        self._unwatch(att)
        try:
            att.ring.consume()
        except lb.BpfError as e:
            log.debug("engine ring: %s", e)
        att.link.destroy()
        att.ring.free()
        att.obj.close()
        self._emit(Outcome(_now(), att.device, "removed", detail="kernel engine detached"))

    def set_observed(self, on: bool) -> None:
        """Records of every step while ``on`` (``monitor`` or an observer listens); else only
        failures, so the engine does not wake the daemon for each report it handles (its
        counters, for ``status``, never stop). Applies to every attached device and to those
        attached later."""
        self.observed = on
        for att in self._devices.values():
            _write_observed(att.obj, on)

    def device_event(self, hid_id: int, what: str) -> None:
        """``added`` or ``resume`` (reinit's ``on``): one BPF_PROG_RUN of engine_trigger.
        Called by the daemon after :meth:`attach` and when the system resumes."""
        att = self._devices.get(hid_id)
        if att is None:
            return
        if what not in TRIGGERS:
            raise ValueError(f"unknown device event {what!r}")
        if what != "added":
            self._emit(Outcome(_now(), att.device, what))
        ctx = ctypes.create_string_buffer(struct.pack(TRIGGER_FORMAT, TRIGGERS[what]), 8)
        ret = lb.prog_test_run(att.obj.program("engine_trigger").fd, ctx)
        if ret != 0:
            raise lb.BpfError(f"engine_trigger({what})", -ret)

    def attached(self) -> list[int]:
        """hid ids with an engine attached."""
        return list(self._devices)

    def stats(self, hid_id: int) -> dict[str, int]:
        """The device's counters (``struct engine_stats``), plus records received. Drains the
        device's records first: those that do not wake the daemon (a matched report that
        passed, timer bookkeeping) reach the observers at the latest here (the daemon's status
        line asks every 5 s)."""
        att = self._devices.get(hid_id)
        if att is None:
            return {}
        try:
            att.ring.consume()
        except lb.BpfError as e:
            log.debug("engine ring: %s", e)
        raw = lb.map_lookup(att.obj.map("engine_stats").fd, _key0(), 8 * len(STATS_FIELDS))
        values = struct.unpack(STATS_FORMAT, raw) if raw else (0,) * len(STATS_FIELDS)
        out = dict(zip(STATS_FIELDS, values, strict=True))
        out["records"] = att.records
        return out

    def program_fds(self, hid_id: int) -> dict[str, int]:
        """Program name -> fd of the device's engine (the benchmark reads their run-time)."""
        att = self._devices.get(hid_id)
        if att is None:
            return {}
        return {name: p.fd for name, p in att.obj.programs.items()}

    # ------------------------------------------------------------------ records

    def _sample(self, hid_id: int, raw: bytes) -> None:
        att = self._devices.get(hid_id)
        if att is None:
            return
        att.records += 1
        for o in outcomes(decode_record(raw), att.device, att.labels, att.keys):
            self._emit(o)

    def _emit(self, o: Outcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(o)

    def consume(self) -> int:
        """Drain every device's records now; returns how many (tests, shutdown)."""
        n = 0
        for att in list(self._devices.values()):
            n += att.ring.consume()
        return n

    def add_to_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch every device's ring on ``loop`` (and those attached later)."""
        self._loop = loop
        for att in self._devices.values():
            self._watch(att)

    def _watch(self, att: _Attached) -> None:
        assert self._loop is not None
        if att.reader_fd < 0:
            att.reader_fd = att.ring.epoll_fd
            self._loop.add_reader(att.reader_fd, self._readable, att.hid_id)

    def _unwatch(self, att: _Attached) -> None:
        if self._loop is not None and att.reader_fd >= 0:
            self._loop.remove_reader(att.reader_fd)
        att.reader_fd = -1

    def _readable(self, hid_id: int) -> None:
        att = self._devices.get(hid_id)
        if att is None:
            return
        try:
            att.ring.consume()
        except Exception:
            log.exception("in-kernel engine record handler failed")

    def remove_from_loop(self) -> None:
        """Stop watching the rings (idempotent)."""
        for att in self._devices.values():
            self._unwatch(att)
        self._loop = None

    def close(self) -> None:
        """Detach every device and unload (daemon shutdown; idempotent)."""
        for hid_id in list(self._devices):
            self.detach(hid_id)
        self._loop = None


def _timer_key(b: Binding) -> str:
    kinds = {Defer: TYPE_DEFER, InjectPolicy: TYPE_INJECT, ReleaseGuard: TYPE_RELEASE_GUARD}
    return TIMER_KEYS.get(kinds.get(type(b.policy), TYPE_REINIT), "")


def _key0() -> bytes:
    return struct.pack("<I", 0)


def _now() -> int:
    return time.monotonic_ns()
