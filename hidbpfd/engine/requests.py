"""Requests of BPF programs (``<hidbpfd/api.h>``, the userspace engine): decode and serve.

A program loaded for a device writes :class:`Request` records to its ring; the daemon hands
each raw record to that (object, device)'s :class:`ProgramServer`, which validates it and runs
it on the shared :class:`~hidbpfd.engine.scheduler.Scheduler` through a
:class:`ProgramTarget` (the device's sinks and the object's callbacks). Pure: no I/O, no
BPF; the record layout is quoted from ``include/hidbpfd/requests.h``.

Semantics (docs/programs.md):

- keys are per device and per program object: one server per (object, device), its
  scheduler keys ``("program", device key, object label, key)``;
- requests of one device run in the order they were made: delay 0 runs at once, in ring
  order; delayed work runs in deadline order, ties in request order;
- a keyed request re-arms its key (bpf_timer): pending work under it is replaced, and a
  report held under it is released first (re-injected at once: nothing is lost without a
  cancel); ``cancel`` drops the pending work, a held report with it;
- a request that cannot be served (another device, a size beyond the device's report size,
  an unknown callback, a bad record) is refused, counted per cause and logged once per cause;
  a refused ``defer`` of this device still gets its report re-injected at once.
"""

from __future__ import annotations

import enum
import itertools
import logging
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Protocol

from hidbpfd.engine.dispatch import Outcome
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.model import DeviceId

log = logging.getLogger("hidbpfd.programs")

REQUEST_VERSION: Final = 1  # HIDBPFD_REQUEST_VERSION
DATA_MAX: Final = 512  # HIDBPFD_DATA_MAX
CALLBACK_NAME_MAX: Final = 64  # HIDBPFD_CALLBACK_NAME_MAX
REQ_KEYED: Final = 1 << 0  # HIDBPFD_REQ_KEYED


class Kind(enum.IntEnum):
    """``struct hidbpfd_request.kind`` (``HIDBPFD_REQ_*``)."""

    DEFER = 1
    CANCEL = 2
    INJECT = 3
    OUTPUT = 4
    SET_FEATURE = 5
    CALL = 6


# struct hidbpfd_request {
# 	__u16 version; __u16 kind; __u32 hid_id; __u32 key; __u32 delay_ms;
# 	__u64 ts_ns; __u64 arg; __u32 flags; __u32 size; __u8 data[HIDBPFD_DATA_MAX];
# };
REQUEST_FORMAT: Final = f"<HHIIIQQII{DATA_MAX}s"
REQUEST_SIZE: Final = struct.calcsize(REQUEST_FORMAT)  # 552
_REQUEST: Final = struct.Struct(REQUEST_FORMAT)


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded request."""

    kind: Kind
    hid_id: int
    key: int
    keyed: bool
    delay_ms: int
    ts_ns: int
    arg: int
    data: bytes

    @property
    def callback(self) -> str:
        """A CALL's callback name (``data`` up to its NUL)."""
        return self.data.split(b"\0", 1)[0].decode(errors="replace")

    def describe(self) -> str:
        """``defer key=1 20 ms``, ``inject 3 bytes``, ``call verify(7) key=2 10 ms``."""
        what = self.kind.name.lower()
        if self.kind is Kind.CALL:
            what = f"call {self.callback}({self.arg})"
        elif self.kind is not Kind.CANCEL:
            what += f" {len(self.data)} bytes"
        if self.keyed or self.kind is Kind.CANCEL:
            what += f" key={self.key}"
        if self.delay_ms:
            what += f" {self.delay_ms} ms"
        return what


class BadRequest(ValueError):
    """A record that is not a request this daemon can serve; ``cause`` names the kind of
    problem (counted and logged once per cause), the message says what exactly."""

    def __init__(self, cause: str, what: str) -> None:
        super().__init__(what)
        self.cause = cause


def encode(req: Request) -> bytes:
    """The record for ``req`` (tests, fuzzing)."""
    flags = REQ_KEYED if req.keyed else 0
    return _REQUEST.pack(
        REQUEST_VERSION,
        req.kind,
        req.hid_id,
        req.key,
        req.delay_ms,
        req.ts_ns,
        req.arg,
        flags,
        len(req.data),
        req.data,
    )


def decode(raw: bytes) -> Request:
    """One ring record -> :class:`Request`; BadRequest (cause ``protocol``) if malformed."""
    if len(raw) < REQUEST_SIZE:
        raise BadRequest("protocol", f"record of {len(raw)} bytes (a request is {REQUEST_SIZE})")
    version, kind, hid_id, key, delay_ms, ts_ns, arg, flags, size, data = _REQUEST.unpack_from(raw)
    if version != REQUEST_VERSION:
        raise BadRequest(
            "protocol",
            f"request version {version} (this daemon speaks {REQUEST_VERSION}): "
            "rebuild the program with this hidbpfd's <hidbpfd/api.h>",
        )
    try:
        k = Kind(kind)
    except ValueError:
        raise BadRequest("protocol", f"unknown request kind {kind}") from None
    if size > DATA_MAX:
        raise BadRequest("size", f"{k.name.lower()} of {size} bytes (at most {DATA_MAX})")
    return Request(k, hid_id, key, bool(flags & REQ_KEYED), delay_ms, ts_ns, arg, data[:size])


class ProgramTarget(Protocol):
    """What serving requests needs of the daemon, for one (object, device)."""

    def inject(self, data: bytes, *, held: bool) -> None:
        """Inject an input report; ``held``: it is a held report being released (the
        program must let it through)."""

    def output(self, data: bytes) -> None:
        """Send an output report (queued, in order with set_feature and calls)."""

    def set_feature(self, data: bytes) -> None:
        """Set a feature report (queued)."""

    def call(self, name: str, key: int, arg: int) -> None:
        """Run the object's callback ``name`` (queued: it may block on the device)."""

    def drain(self) -> None:
        """Read the object's ring now (before due work runs: a cancel may be waiting)."""

    def key_done(self, key: int, ts_ns: int) -> None:
        """Tell the program ``key`` is no longer pending (if its arm is still ``ts_ns``)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a device takes: its largest report of each kind (bytes, ID included; 0: unknown,
    :data:`DATA_MAX` then), and the callbacks the object has."""

    input_max: int = 0
    output_max: int = 0
    feature_max: int = 0
    callbacks: frozenset[str] = frozenset()

    def size_limit(self, kind: Kind) -> int:
        """The largest data a request of ``kind`` may carry on this device."""
        n = {
            Kind.DEFER: self.input_max,
            Kind.INJECT: self.input_max,
            Kind.OUTPUT: self.output_max,
            Kind.SET_FEATURE: self.feature_max,
        }.get(kind, DATA_MAX)
        return min(n or DATA_MAX, DATA_MAX)


@dataclass(slots=True)
class ProgramCounters:
    """What ``status`` shows for one program on one device (the BPF side's drops are read
    from its state map by the daemon)."""

    requests: int = 0
    held: int = 0
    injected: int = 0
    output: int = 0
    feature: int = 0
    calls: int = 0
    cancelled: int = 0
    errors: int = 0
    refused: dict[str, int] = field(default_factory=dict)


Observe = Callable[[Outcome], None]
_REPORT: Final = {
    Kind.DEFER: "input",
    Kind.INJECT: "input",
    Kind.OUTPUT: "output",
    Kind.SET_FEATURE: "feature",
}


class ProgramServer:
    """The requests of one program object on one device. Created by the daemon when it loads
    the object for the device; :meth:`on_record` is called for each ring record (on the
    loop); :meth:`close` when the object is detached."""

    def __init__(
        self,
        device: DeviceId,
        label: str,
        scheduler: Scheduler,
        target: ProgramTarget,
        limits: Limits,
        observe: Callable[[], list[Observe]] = list,
    ) -> None:
        self.device = device
        self.label = label
        self.scheduler = scheduler
        self.target = target
        self.limits = limits
        self._observers = observe
        self.counters = ProgramCounters()
        self._held: dict[int, tuple[int, bytes]] = {}
        """Reports held per key: (arm number, report)."""
        self._arms = itertools.count(1)
        self._unkeyed = itertools.count()
        self._logged: set[str] = set()
        self.closed = False

    # --- keys and outcomes ---------------------------------------------------------------

    def _skey(self, key: int) -> Hashable:
        return ("program", self.device.key, self.label, key)

    def owns(self, skey: Hashable) -> bool:
        """Whether scheduler key ``skey`` is this server's (status: pending work)."""
        return (
            isinstance(skey, tuple)
            and len(skey) >= 3
            and skey[:3] == ("program", self.device.key, self.label)
        )

    def _emit(self, kind: str, data: bytes = b"", detail: str = "") -> None:
        obs = self._observers()
        if obs:
            o = Outcome(self.scheduler.clock.now_ns(), self.device, kind, data, self.label, detail)
            for fn in obs:
                fn(o)

    def refuse(self, cause: str, what: str) -> None:
        """Count a refused request; log the first of each cause (each later one at DEBUG)."""
        self.counters.refused[cause] = self.counters.refused.get(cause, 0) + 1
        level = logging.DEBUG if cause in self._logged else logging.WARNING
        self._logged.add(cause)
        log.log(
            level,
            "%s: %s: request refused (%s): %s%s",
            self.device.describe(),
            self.label,
            cause,
            what,
            "" if level == logging.DEBUG else " (further ones of this cause are only counted)",
        )
        self._emit("refused", b"", f"{cause}: {what}")

    def error(self, what: str) -> None:
        """An executed request failed (a sink or callback error reported back)."""
        self.counters.errors += 1
        self._emit("error", b"", what)

    # --- requests --------------------------------------------------------------------------

    def on_record(self, raw: bytes) -> None:
        """One record of the object's ring."""
        if self.closed:
            return
        try:
            req = decode(raw)
        except BadRequest as e:
            self.refuse(e.cause, str(e))
            return
        self.on_request(req)

    def on_request(self, req: Request) -> None:
        """Validate and serve one request."""
        self.counters.requests += 1
        if req.hid_id != self.device.kernel_id:
            self.refuse(
                "device",
                f"{req.describe()} for hid_id {req.hid_id}, a device this object is not "
                f"loaded for (it serves {self.device.kernel_id})",
            )
            return
        limit = self.limits.size_limit(req.kind)
        if req.kind is not Kind.CALL and len(req.data) > limit:
            self.refuse(
                "size",
                f"{req.describe()}: beyond the device's largest {_REPORT[req.kind]} "
                f"report ({limit} bytes)",
            )
            if req.kind is Kind.DEFER:  # the kernel dropped it: never lose input
                self.target.inject(req.data, held=True)
            return
        if req.kind is Kind.CALL and req.callback not in self.limits.callbacks:
            known = ", ".join(sorted(self.limits.callbacks)) or "none"
            self.refuse(
                "callback",
                f'{req.describe()}: no SEC("syscall") program {req.callback!r} in the object '
                f"(callbacks: {known})",
            )
            return
        if req.kind is Kind.CANCEL:
            self._cancel(req)
            return
        if req.kind is Kind.DEFER:
            self.counters.held += 1
            self._emit("hold", req.data, req.describe())
        else:
            self._emit("request", req.data, req.describe())
        if req.keyed:
            self._arm(req)
        elif req.delay_ms:
            skey = ("program", self.device.key, self.label, "n", next(self._unkeyed))
            self.scheduler.start(
                skey, req.delay_ms * 1_000_000, lambda: self._run(req), base_ns=req.ts_ns
            )
        else:
            self._run(req)

    def _arm(self, req: Request) -> None:
        skey = self._skey(req.key)
        old = self._held.pop(req.key, None)
        if old is not None:  # re-armed: the older held report is released first
            self._release(old[1], f"released: key {req.key} re-armed")
        if not req.delay_ms:  # due now: in order with the unkeyed requests around it
            self.scheduler.cancel(skey)
            if req.kind is Kind.DEFER:
                self._release(req.data, f"defer key={req.key} 0 ms")
            else:
                self._run(req)
            self.target.key_done(req.key, req.ts_ns)
            return
        arm = next(self._arms)
        if req.kind is Kind.DEFER:
            self._held[req.key] = (arm, req.data)
        self.scheduler.start(
            skey,
            req.delay_ms * 1_000_000,
            lambda: self._run_keyed(req, arm),
            base_ns=req.ts_ns,
        )

    def _cancel(self, req: Request) -> None:
        was = self.scheduler.cancel(self._skey(req.key))
        held = self._held.pop(req.key, None)
        if was or held:
            self.counters.cancelled += 1
        self._emit(
            "cancel",
            held[1] if held else b"",
            f"key={req.key}"
            + (" (held report dropped)" if held else "")
            + ("" if was else " (nothing pending)"),
        )

    def _run_keyed(self, req: Request, arm: int) -> None:
        # a cancel or re-arm may be waiting in the ring: read it before acting
        self.target.drain()
        if self.closed:
            return
        if req.kind is Kind.DEFER:
            held = self._held.get(req.key)
            if held is None or held[0] != arm:
                return  # cancelled, or released by a re-arm, while in the ring
            del self._held[req.key]
            self._release(held[1], f"defer key={req.key} due")
        elif self.scheduler.pending(self._skey(req.key)):
            return  # re-armed meanwhile: the new work replaces this one
        else:
            self._run(req)
        if not self.scheduler.pending(self._skey(req.key)):
            self.target.key_done(req.key, req.ts_ns)

    def _release(self, report: bytes, why: str) -> None:
        self.counters.injected += 1
        self._emit("inject", report, why)
        self.target.inject(report, held=True)

    def _run(self, req: Request) -> None:
        if req.kind is Kind.INJECT:
            self.counters.injected += 1
            self._emit("inject", req.data, req.describe())
            self.target.inject(req.data, held=False)
        elif req.kind is Kind.OUTPUT:
            self.counters.output += 1
            self._emit("output", req.data, req.describe())
            self.target.output(req.data)
        elif req.kind is Kind.SET_FEATURE:
            self.counters.feature += 1
            self._emit("feature", req.data, req.describe())
            self.target.set_feature(req.data)
        elif req.kind is Kind.CALL:
            self.counters.calls += 1
            self._emit("call", b"", req.describe())
            self.target.call(req.callback, req.key, req.arg)

    def pending(self) -> int:
        """Work pending (status)."""
        return self.scheduler.count_where(self.owns)

    def close(self, *, release: bool) -> None:
        """Stop serving: pending work is cancelled; held reports are re-injected first when
        ``release`` (the object is swapped or unloaded, the device stays), dropped when not
        (the device is gone)."""
        if release:
            for _arm, report in list(self._held.values()):
                self._release(report, "released: program unloaded")
        self._held.clear()
        self.scheduler.cancel_where(self.owns)
        self.closed = True
