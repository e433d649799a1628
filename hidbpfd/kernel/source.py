"""The BPF event source: rule tables into the kernel, ring-buffer records out.

The daemon owns one :class:`BpfEventSource`. Data flow::

    set_rules(hid_id) ──► hidbpfd_rules / hidbpfd_armed maps ──► hidbpfd_filter() (C)
    a report: HID-BPF struct_ops | tracing fallback | feed() ──┘        │
    hidbpfd_ring ──► epoll fd on the asyncio loop ──► consume() ──► on_record(Record)

Objects: ``hidbpfd.bpf.o`` holds the maps and every program but the struct_ops;
``hidbpfd_ops.bpf.o`` is opened once per device (its ``hid_id`` written into the image)
with its maps reusing the main object's fds. The layouts of ``bpf/hidbpfd.h`` are in
:mod:`hidbpfd.kernel.filter_codec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.engine.filter import RECORD_DATA_MAX
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import probe as probe_mod
from hidbpfd.kernel.bpf import MAIN_OBJECT, OPS_OBJECT
from hidbpfd.kernel.filter_codec import (
    ARMED_FORMAT,
    ARMED_SIZE,
    FEED_FORMAT,
    FEED_SIZE,
    IO_DATA_MAX,
    IO_FORMAT,
    IO_SIZE,
    RECORD,
    Record,
    encode_rules,
)
from hidbpfd.model import DeviceRule

log = logging.getLogger("hidbpfd.kernel.bpf")

SHARED_MAPS: Final = ("hidbpfd_rules", "hidbpfd_armed", "hidbpfd_ring", "hidbpfd_drops")
TRACING_PROGRAMS: Final = ("hidbpfd_trace_fentry", "hidbpfd_trace_kprobe")

# program -> kfuncs it calls
IO_PROGRAMS: Final[dict[str, tuple[str, ...]]] = {
    "hidbpfd_io_input": (
        "hid_bpf_allocate_context",
        "hid_bpf_release_context",
        "hid_bpf_input_report",
    ),
    "hidbpfd_io_output": (
        "hid_bpf_allocate_context",
        "hid_bpf_release_context",
        "hid_bpf_hw_output_report",
    ),
    "hidbpfd_io_set_feature": (
        "hid_bpf_allocate_context",
        "hid_bpf_release_context",
        "hid_bpf_hw_request",
    ),
    "hidbpfd_io_get_feature": (
        "hid_bpf_allocate_context",
        "hid_bpf_release_context",
        "hid_bpf_hw_request",
    ),
}

_FAILED_PROG_RE: Final = re.compile(r"prog '(\w+)': (BPF program load failed: .*|failed to .*)")


def _failed_program(lines: Sequence[str]) -> tuple[str, str] | None:
    """(program, libbpf's reason) of the first program libbpf says failed to load."""
    for line in lines:
        if m := _FAILED_PROG_RE.search(line):
            return m.group(1), m.group(2)
    return None


BUSY_TURN_NS: Final = 50_000
"""Busy polling: the longest spin on the ring between two turns of the loop (timers, fds)."""
TURN_RECORDS: Final = 1024
"""Records handled per :meth:`BpfEventSource.consume` at most, then the loop turns (timers,
``status``) before the rest: a ring sized for a long burst (:mod:`hidbpfd.kernel.ringsize`)
never blocks the loop for the whole backlog (measured in the VM: a 10 s flood from 32 pens
drained in one call kept ``status`` unanswered for over 10 s)."""


class _TurnDone(Exception):
    """Raised after the TURN_RECORDS-th record was handled: stops libbpf's drain there."""


class BpfUnavailable(RuntimeError):
    """A BPF feature this call needs is missing here; the message says what and why."""


def _key(hid_id: int) -> bytes:
    return struct.pack("<I", hid_id)


@dataclass(slots=True)
class _Device:
    """How one device is attached: its HID-BPF object and link, or the tracing fallback."""

    mode: str
    obj: lb.BpfObject | None = None
    link: lb.StructOpsLink | None = None


class BpfEventSource:
    """Owner of the loaded BPF objects, the rule maps and the ring-buffer consumer.

    Created and opened by the daemon at startup (tests: by the fixture); ``on_record`` is
    called from :meth:`consume` on the loop thread, once per record, in ring order.
    """

    def __init__(
        self,
        on_record: Callable[[Record], None],
        *,
        obj_path: str | None = None,
        ring_bytes: int = 1 << 20,
    ) -> None:
        if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes must be a power of 2 >= 4096, not {ring_bytes}")
        self._on_record = on_record
        self._obj_path = Path(obj_path) if obj_path else MAIN_OBJECT
        self._ops_path = self._obj_path.with_name(OPS_OBJECT.name)
        self._ring_bytes = ring_bytes
        self.ring_why = "given"
        """Where the ring's size came from (``status``; :mod:`hidbpfd.kernel.ringsize`)."""
        self._obj: lb.BpfObject | None = None
        self._ring: lb.RingBuffer | None = None
        self._fds: dict[str, int] = {}
        self._loaded: set[str] = set()
        self.skipped: dict[str, str] = {}
        """Programs not loaded, with why (filled by :meth:`open`)."""
        self._devices: dict[int, _Device] = {}
        self._trace_link: lb.Link | None = None
        self._trace_error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd = -1
        self._feed_ctx = ctypes.create_string_buffer(FEED_SIZE)
        self._turn_left = TURN_RECORDS
        self._btf = probe_mod.KernelBtf(False, "not opened")

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open and load the main object, skipping programs this kernel refuses.

        Called once by the daemon before anything else. Raises BpfError/BpfUnavailable
        when even the maps and the feeder cannot be loaded.
        """
        if not self._obj_path.exists():
            raise BpfUnavailable(
                f"{self._obj_path} not built. Try: python -m hidbpfd.kernel.bpf.build"
            )
        self._btf = probe_mod.kernel_btf()
        wanted = self._wanted_programs()
        image = self._obj_path.read_bytes()
        if (self._btf.trace_target_arity or 5) >= 6:
            # const volatile int hidbpfd_raw_event_nargs = 5;  (the kprobe's argument map)
            image = lb.elf_patch(image, "hidbpfd_raw_event_nargs", 0, struct.pack("<i", 6))
        while True:
            obj = lb.BpfObject.open_mem(image)
            lines: list[str] = []
            try:
                for name, prog in obj.programs.items():
                    prog.set_autoload(name in wanted)
                obj.map("hidbpfd_ring").set_max_entries(self._ring_bytes)
                with lb.capture_log(quiet=True) as lines:
                    obj.load()
            except lb.BpfError as e:
                obj.close()
                failed = _failed_program(lines)
                if failed is None or failed[0] == "hidbpfd_feed" or failed[0] not in wanted:
                    for line in lines[-40:]:  # the verifier's verdict is at the end
                        log.error("%s", line)
                    raise
                name, why = failed
                wanted.discard(name)
                self.skipped[name] = f"refused by this kernel: {why} ({e.errno})"
                log.info("BPF program %s skipped: %s", name, self.skipped[name])
                continue
            break
        self._obj = obj
        self._loaded = wanted
        self._fds = {name: obj.map(name).fd for name in (*SHARED_MAPS, "hidbpfd_traced")}
        self._ring = lb.RingBuffer(self._fds["hidbpfd_ring"], self._on_sample)
        log.info("BPF loaded: %s; skipped: %s", " ".join(sorted(wanted)), self.skipped or "none")

    def _wanted_programs(self) -> set[str]:
        wanted = {"hidbpfd_feed"}
        if probe_mod.TRACE_TARGET in self._btf.funcs:
            wanted.update(TRACING_PROGRAMS)
        else:
            for p in TRACING_PROGRAMS:
                self.skipped[p] = f"{probe_mod.TRACE_TARGET} not in kernel BTF (no HID core)"
        for prog, kfuncs in IO_PROGRAMS.items():
            missing = [k for k in kfuncs if k not in self._btf.funcs]
            if missing:
                self.skipped[prog] = f"kfunc {', '.join(missing)} not in kernel BTF"
            else:
                wanted.add(prog)
        return wanted

    def close(self) -> None:
        """Detach everything and unload (called by the daemon at shutdown; idempotent)."""
        self.remove_from_loop()
        for hid_id in list(self._devices):
            self.detach_device(hid_id)
        if self._trace_link:
            self._trace_link.destroy()
            self._trace_link = None
        if self._ring:
            self._ring.free()
            self._ring = None
        if self._obj:
            self._obj.close()
            self._obj = None
        self._fds.clear()

    def _need(self) -> lb.BpfObject:
        if self._obj is None:
            raise BpfUnavailable("BpfEventSource not opened")
        return self._obj

    # ------------------------------------------------------------------ rules

    def set_rules(self, hid_id: int, rules: Sequence[DeviceRule]) -> None:
        """Install or swap a device's rule table (called by the dispatch when the policies
        for a device are loaded or reloaded). The swap is one map update, so a report sees
        the old table or the new one; the armed state is created at 0 and kept on a swap."""
        self._need()
        value = encode_rules(rules)
        try:
            lb.map_update(
                self._fds["hidbpfd_armed"], _key(hid_id), bytes(ARMED_SIZE), lb.BPF_NOEXIST
            )
        except lb.BpfError as e:
            if e.errno != errno.EEXIST:
                raise
        lb.map_update(self._fds["hidbpfd_rules"], _key(hid_id), value)

    def clear_rules(self, hid_id: int) -> None:
        """Forget a device's table and armed mask (device removed, or no policy left)."""
        self._need()
        lb.map_delete(self._fds["hidbpfd_rules"], _key(hid_id))
        lb.map_delete(self._fds["hidbpfd_armed"], _key(hid_id))

    def armed(self, hid_id: int, now_ns: int | None = None) -> int:
        """The device's armed groups at ``now_ns`` (default: now), as the kernel has them:
        bits set and not expired (tests, ``status``)."""
        self._need()
        v = lb.map_lookup(self._fds["hidbpfd_armed"], _key(hid_id), ARMED_SIZE)
        if not v:
            return 0
        mask, *until = struct.unpack(ARMED_FORMAT, v)
        now = time.monotonic_ns() if now_ns is None else now_ns
        return sum(1 << g for g, due in enumerate(until) if mask >> g & 1 and now < due)

    # ------------------------------------------------------------------ devices

    def attach_device(self, hid_id: int, *, modes: Sequence[str] = ("hid_bpf", "tracing")) -> str:
        """Start filtering a device's reports (called by the registry when a device with
        policies appears). Tries HID-BPF (can hold), then the tracing fallback (observe
        only), or just ``modes``; returns ``"hid_bpf"``, ``"tracing"`` or
        ``"none: <reason>"``. A device already attached keeps its mode."""
        self._need()
        if hid_id in self._devices:
            return self._devices[hid_id].mode
        reasons = []
        if "hid_bpf" not in modes:
            pass
        elif not self._btf.hid_bpf:
            reasons.append("hid_bpf: struct hid_bpf_ops not in kernel BTF")
        elif not self._ops_path.exists():
            reasons.append(f"hid_bpf: {self._ops_path} not built")
        else:
            try:
                self._devices[hid_id] = self._attach_hid_bpf(hid_id)
                return "hid_bpf"
            except lb.BpfError as e:
                reasons.append(f"hid_bpf: {e}")
        if "tracing" in modes:
            if self._attach_tracing(hid_id):
                self._devices[hid_id] = _Device("tracing")
                return "tracing"
            reasons.append(self._trace_error)
        return "none: " + ("; ".join(reasons) or f"no mode among {list(modes)}")

    def _attach_hid_bpf(self, hid_id: int) -> _Device:
        # struct hid_bpf_ops { int hid_id; __u32 flags; ... }: hid_id first, set before load
        image = lb.elf_patch(
            self._ops_path.read_bytes(), "hidbpfd_ops", 0, struct.pack("<i", hid_id)
        )
        if (self._btf.device_event_arity or 3) < 3:
            # const volatile int hidbpfd_has_source = 1;  (.rodata, frozen at load)
            image = lb.elf_patch(image, "hidbpfd_has_source", 0, struct.pack("<i", 0))
        obj = lb.BpfObject.open_mem(image)
        try:
            for name in SHARED_MAPS:
                obj.map(name).reuse_fd(self._fds[name])
            # registered through a link only: the kernel lets go of it when we die
            obj.map("hidbpfd_ops").set_map_flags(lb.BPF_F_LINK)
            obj.load()
            link = obj.map("hidbpfd_ops").attach_struct_ops()
        except BaseException:
            obj.close()
            raise
        log.info("HID-BPF struct_ops attached to hid_id %d (link fd %d)", hid_id, link.fd)
        return _Device("hid_bpf", obj, link)

    def _attach_tracing(self, hid_id: int) -> str:
        if self._trace_link is None and not self._trace_error:
            errors = []
            for prog in TRACING_PROGRAMS:
                if prog not in self._loaded:
                    errors.append(f"{prog}: {self.skipped.get(prog, 'not loaded')}")
                    continue
                try:
                    with lb.capture_log(quiet=True):  # reported in attach_device's answer
                        self._trace_link = self._need().program(prog).attach()
                    break
                except lb.BpfError as e:
                    errors.append(f"{prog}: {e}")
            if self._trace_link is None:
                self._trace_error = "tracing: " + "; ".join(errors)
        if self._trace_link is None:
            return ""
        lb.map_update(self._fds["hidbpfd_traced"], _key(hid_id), b"\x01")
        return "tracing"

    def detach_device(self, hid_id: int) -> None:
        """Stop filtering a device (called when it goes away); its rules stay until
        :meth:`clear_rules`."""
        dev = self._devices.pop(hid_id, None)
        if dev is None:
            return
        if dev.link:
            dev.link.destroy()
        if dev.obj:
            dev.obj.close()
        if dev.mode == "tracing" and self._fds:
            lb.map_delete(self._fds["hidbpfd_traced"], _key(hid_id))

    def has_program(self, name: str) -> bool:
        """Whether program ``name`` was loaded (the daemon picks sinks from this)."""
        return name in self._loaded

    def can_hold(self, hid_id: int) -> bool:
        """Whether the kernel can keep this device's reports from its readers."""
        dev = self._devices.get(hid_id)
        return dev is not None and dev.mode == "hid_bpf"

    # ------------------------------------------------------------------ ring buffer

    def _on_sample(self, raw: bytes) -> None:
        # decode_record, inlined: once per record
        ts_ns, matched, hid_id, flags, length, data = RECORD.unpack_from(raw)
        if length < RECORD_DATA_MAX:
            data = data[:length]
        self._on_record(Record(hid_id, ts_ns, matched, flags, length, data))
        self._turn_left -= 1
        if not self._turn_left:
            raise _TurnDone  # handled; libbpf has consumed it and stops here

    def consume(self) -> int:
        """Handle the waiting records through ``on_record`` now, at most TURN_RECORDS of them
        (the ring's fd stays readable while more wait); returns how many."""
        if self._ring is None:
            raise BpfUnavailable("BpfEventSource not opened")
        self._turn_left = TURN_RECORDS
        with contextlib.suppress(_TurnDone):
            self._ring.consume()
        return TURN_RECORDS - self._turn_left

    def add_to_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the ring's epoll fd on ``loop`` (called once by the daemon after open)."""
        if self._ring is None:
            raise BpfUnavailable("BpfEventSource not opened")
        self.remove_from_loop()
        self._reader_fd = self._ring.epoll_fd
        loop.add_reader(self._reader_fd, self._readable)
        self._loop = loop

    def _readable(self) -> None:
        try:
            self.consume()
        except Exception:
            log.exception("BPF ring-buffer record handler failed")

    async def busy_poll(self, stop: asyncio.Event) -> None:
        """Poll the ring from the loop until ``stop`` instead of sleeping in epoll (opt-in:
        ``run --busy-poll``). Spends one CPU to skip the idle wake-up (~100-150 µs on our
        VMs) between a report and its action; timers and other fds are still served, since
        every turn goes through the loop (epoll with a zero timeout)."""
        ring = self._ring
        if ring is None:
            raise BpfUnavailable("BpfEventSource not opened")
        consume = ring.consume
        clock = time.monotonic_ns
        while not stop.is_set():
            # spin on the ring (no syscall: libbpf compares the producer/consumer positions)
            # for up to BUSY_TURN_NS, then let the loop run its timers and other fds once
            until = clock() + BUSY_TURN_NS
            try:
                while not consume() and clock() < until:
                    pass
            except Exception:
                log.exception("BPF ring-buffer record handler failed")
            await asyncio.sleep(0)

    def remove_from_loop(self) -> None:
        """Stop watching the ring (shutdown; idempotent)."""
        if self._loop is not None and self._reader_fd >= 0:
            self._loop.remove_reader(self._reader_fd)
        self._loop = None
        self._reader_fd = -1

    @property
    def ring_bytes(self) -> int:
        """The ring buffer's size in bytes."""
        return self._ring_bytes

    def drops(self) -> int:
        """Reports that fired a rule while the ring was full, since load (all CPUs)."""
        self._need()
        ncpu = lb.num_possible_cpus()
        raw = lb.map_lookup(self._fds["hidbpfd_drops"], _key(0), 8 * ncpu) or b""
        return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))

    # ------------------------------------------------------------------ BPF_PROG_RUN

    def feeder_fd(self) -> int:
        """The feeder program's fd (for a benchmark's feeding process)."""
        return self._need().program("hidbpfd_feed").fd

    def feed(self, hid_id: int, report: bytes, *, can_hold: bool = True, now_ns: int = 0) -> int:
        """Run the kernel filter on ``report`` as if device ``hid_id`` had sent it at ``now_ns``
        (0: now; ``replay --via-bpf`` passes its virtual clock, which the record's ``ts_ns``
        then carries) (tests, ``replay --via-bpf``); returns a VERDICT_* value. Records go to
        the ring as usual."""
        obj = self._need()
        if len(report) > 0xFFFF:  # struct hidbpfd_feed's __u16 len
            raise ValueError(f"report of {len(report)} bytes: the feeder takes at most 65535")
        if not 0 <= hid_id <= 0xFFFFFFFF:  # __u32 hid_id
            raise ValueError(f"hid id {hid_id} is not a 32-bit number")
        struct.pack_into(
            FEED_FORMAT,
            self._feed_ctx,
            0,
            hid_id,
            len(report),
            int(can_hold),
            report[:RECORD_DATA_MAX],
            now_ns,
        )
        return lb.prog_test_run(obj.program("hidbpfd_feed").fd, self._feed_ctx)

    def _io(self, prog: str, hid_id: int, data: bytes) -> tuple[int, bytes]:
        obj = self._need()
        if prog not in self._loaded:
            raise BpfUnavailable(f"{prog}: {self.skipped.get(prog, 'not loaded')}")
        if not 1 <= len(data) <= IO_DATA_MAX:
            raise ValueError(f"report must be 1..{IO_DATA_MAX} bytes, not {len(data)}")
        ctx = ctypes.create_string_buffer(struct.pack(IO_FORMAT, hid_id, len(data), data), IO_SIZE)
        ret = lb.prog_test_run(obj.program(prog).fd, ctx)
        if ret < 0:
            raise lb.BpfError(f"{prog}(hid_id={hid_id})", -ret)
        return ret, ctx.raw[8 : 8 + IO_DATA_MAX]

    def inject(self, hid_id: int, report: bytes) -> None:
        """Inject an input report into the device, as if it had sent it
        (``hid_bpf_input_report``); the struct_ops lets it pass unfiltered."""
        self._io("hidbpfd_io_input", hid_id, report)

    def output(self, hid_id: int, report: bytes) -> int:
        """Send an output report (``hid_bpf_hw_output_report``); returns bytes sent."""
        return self._io("hidbpfd_io_output", hid_id, report)[0]

    def set_feature(self, hid_id: int, report: bytes) -> int:
        """Set a feature report (``hid_bpf_hw_request`` SET_REPORT); report[0] is the ID."""
        return self._io("hidbpfd_io_set_feature", hid_id, report)[0]

    def get_feature(self, hid_id: int, report_id: int, length: int) -> bytes:
        """Get a feature report (``hid_bpf_hw_request`` GET_REPORT) of up to ``length``
        bytes, starting with the report ID."""
        buf = bytes([report_id]) + bytes(max(length, 1) - 1)
        n, data = self._io("hidbpfd_io_get_feature", hid_id, buf)
        return data[:n]
