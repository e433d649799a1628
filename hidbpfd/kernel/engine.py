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
nothing falls back silently. The tables it writes and the records it reads are encoded and
decoded in :mod:`hidbpfd.kernel.engine_codec`.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.engine.dispatch import Binding, Outcome
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.engine_codec import (
    STATS_FIELDS,
    STATS_FORMAT,
    TRIGGER_FORMAT,
    TRIGGERS,
    EngineRefused,
    decode_record,
    encode_config,
    outcomes,
    params_reason,
    timer_key,
)
from hidbpfd.model import DeviceId

log = logging.getLogger("hidbpfd.engine")

ENGINE_OBJECT: Final = BPF_DIR / "engine.bpf.o"

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
        keys = [timer_key(b) for b in bindings]
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


def _key0() -> bytes:
    return struct.pack("<I", 0)


def _now() -> int:
    return time.monotonic_ns()
