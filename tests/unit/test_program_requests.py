"""ProgramServer semantics on virtual time: re-arm releases the older held report first, cancel
drops it, requests of a device run in the order made, keys are per object, close releases."""

from __future__ import annotations

from hidbpfd.engine import requests as R
from hidbpfd.engine.clock import VirtualClock
from hidbpfd.engine.dispatch import Outcome
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.model import DeviceId

HID = 3
MS = 1_000_000
DEV = DeviceId(3, 0x28BD, 0x0905, "pen", hid_id=DeviceId.sysfs_name(3, 0x28BD, 0x0905, HID))


class Target:
    def __init__(
        self, log: list[tuple[int, str, bytes]], clock: VirtualClock, name: str = ""
    ) -> None:
        self.log = log
        self.clock = clock
        self.name = name
        self.keys_done: list[int] = []

    def _add(self, kind: str, data: bytes) -> None:
        self.log.append((self.clock.now_ns() // MS, self.name + kind, data))

    def inject(self, data: bytes, *, held: bool) -> None:
        self._add("held" if held else "inject", data)

    def output(self, data: bytes) -> None:
        self._add("output", data)

    def set_feature(self, data: bytes) -> None:
        self._add("feature", data)

    def call(self, name: str, key: int, arg: int) -> None:
        self._add("call", f"{name}/{key}/{arg}".encode())

    def drain(self) -> None:
        pass

    def key_done(self, key: int, ts_ns: int) -> None:
        self.keys_done.append(key)


def setup(**limits: object) -> tuple[R.ProgramServer, Scheduler, list[tuple[int, str, bytes]]]:
    clock = VirtualClock()
    sched = Scheduler(clock)
    log: list[tuple[int, str, bytes]] = []
    lim = R.Limits(callbacks=frozenset({"verify"}))
    s = R.ProgramServer(DEV, "p", sched, Target(log, clock), lim)
    return s, sched, log


def req(
    kind: R.Kind,
    t_ms: int,
    data: bytes = b"",
    *,
    key: int = 0,
    keyed: bool = False,
    delay: int = 0,
    arg: int = 0,
) -> R.Request:
    return R.Request(kind, HID, key, keyed or kind is R.Kind.DEFER, delay, t_ms * MS, arg, data)


def feed(s: R.ProgramServer, sched: Scheduler, *reqs: R.Request) -> None:
    for r in reqs:
        sched.run_until(r.ts_ns)
        s.on_record(R.encode(r))


def test_defer_releases_after_the_delay() -> None:
    s, sched, log = setup()
    feed(s, sched, req(R.Kind.DEFER, 0, b"\x02\x00", key=1, delay=20))
    sched.run_until(100 * MS)
    assert log == [(20, "held", b"\x02\x00")]
    assert s.target.keys_done == [1]  # type: ignore[attr-defined]


def test_cancel_drops_the_held_report() -> None:
    s, sched, log = setup()
    feed(
        s, sched, req(R.Kind.DEFER, 0, b"\x02\x00", key=1, delay=20), req(R.Kind.CANCEL, 10, key=1)
    )
    sched.run_until(100 * MS)
    assert log == []
    assert s.counters.cancelled == 1


def test_rearm_releases_the_older_report_first() -> None:
    s, sched, log = setup()
    feed(
        s,
        sched,
        req(R.Kind.DEFER, 0, b"\x02\x01", key=1, delay=20),
        req(R.Kind.DEFER, 5, b"\x02\x02", key=1, delay=20),
    )
    sched.run_until(100 * MS)
    assert log == [(5, "held", b"\x02\x01"), (25, "held", b"\x02\x02")]


def test_keyed_rearm_replaces_pending_work() -> None:
    s, sched, log = setup()
    feed(
        s,
        sched,
        req(R.Kind.INJECT, 0, b"\x01", key=2, keyed=True, delay=30),
        req(R.Kind.INJECT, 10, b"\x02", key=2, keyed=True, delay=30),
    )
    sched.run_until(100 * MS)
    assert log == [(40, "inject", b"\x02")]


def test_requests_run_in_the_order_made() -> None:
    s, sched, log = setup()
    feed(
        s,
        sched,
        req(R.Kind.OUTPUT, 0, b"\x10\x01"),
        req(R.Kind.SET_FEATURE, 0, b"\x05\x01"),
        req(R.Kind.CALL, 0, b"verify\0", key=7, keyed=True, arg=1),  # delay 0: now, in order
        req(R.Kind.INJECT, 0, b"\x01", delay=10),
        req(R.Kind.INJECT, 0, b"\x02", delay=10),  # same deadline: request order
        req(R.Kind.INJECT, 0, b"\x03"),
    )
    sched.run_until(100 * MS)
    assert log == [
        (0, "output", b"\x10\x01"),
        (0, "feature", b"\x05\x01"),
        (0, "call", b"verify/7/1"),
        (0, "inject", b"\x03"),
        (10, "inject", b"\x01"),
        (10, "inject", b"\x02"),
    ]


def test_keys_are_per_object() -> None:
    clock = VirtualClock()
    sched = Scheduler(clock)
    log: list[tuple[int, str, bytes]] = []
    a = R.ProgramServer(DEV, "a", sched, Target(log, clock, "a:"), R.Limits())
    b = R.ProgramServer(DEV, "b", sched, Target(log, clock, "b:"), R.Limits())
    a.on_record(R.encode(req(R.Kind.DEFER, 0, b"\x0a", key=1, delay=10)))
    b.on_record(R.encode(req(R.Kind.DEFER, 0, b"\x0b", key=1, delay=10)))
    b.on_record(R.encode(req(R.Kind.CANCEL, 0, key=1)))
    sched.run_until(50 * MS)
    assert log == [(10, "a:held", b"\x0a")]


def test_close_releases_held_reports_when_the_device_stays() -> None:
    s, sched, log = setup()
    feed(s, sched, req(R.Kind.DEFER, 0, b"\x02\x00", key=1, delay=20))
    s.close(release=True)
    sched.run_until(100 * MS)
    assert log == [(0, "held", b"\x02\x00")]
    assert s.pending() == 0
    s2, sched2, log2 = setup()
    feed(s2, sched2, req(R.Kind.DEFER, 0, b"\x02\x00", key=1, delay=20))
    s2.close(release=False)  # the device is gone
    sched2.run_until(100 * MS)
    assert log2 == []


def test_outcomes_for_monitor() -> None:
    clock = VirtualClock()
    sched = Scheduler(clock)
    seen: list[Outcome] = []
    s = R.ProgramServer(DEV, "p", sched, Target([], clock), R.Limits(), lambda: [seen.append])
    feed(s, sched, req(R.Kind.DEFER, 0, b"\x02\x00", key=1, delay=20))
    sched.run_until(30 * MS)
    assert [(o.kind, o.data, o.detail) for o in seen] == [
        ("hold", b"\x02\x00", "defer 2 bytes key=1 20 ms"),
        ("inject", b"\x02\x00", "defer key=1 due"),
    ]


def test_status_text_shows_programs() -> None:
    from hidbpfd.service.status_text import render_event, render_status

    dev = {
        "hid_id": "0003:28BD:0905.0001",
        "name": "pen",
        "bus": "usb",
        "vendor": "28bd",
        "product": "0905",
        "hidraw": "/dev/hidraw0",
        "managed": False,
        "programs": [
            {
                "program": "50-pen.toml#program[0] pen.bpf.o",
                "engine": "userspace",
                "requests": 5,
                "held": 2,
                "injected": 1,
                "output": 0,
                "feature": 0,
                "calls": 0,
                "cancelled": 1,
                "errors": 0,
                "pending": 0,
                "refused": {"size": 1},
                "drops": {"over_budget": 7, "ring_full": 0},
            },
            {"program": "50-pen.toml#program[1] k.bpf.o", "engine": "kernel"},
            {"program": "50-pen.toml#program[2] bad.bpf.o", "error": "load failed: EINVAL"},
            {
                "program": "pinned:/sys/fs/bpf/hid/0003_28BD_0905_0001/x",
                "object": "/sys/fs/bpf/hid/0003_28BD_0905_0001/x",
                "loader": "pinned by another loader",
                "pinned": "/sys/fs/bpf/hid/0003_28BD_0905_0001/x",
                "error": "cannot serve: bpf_obj_get(...): Permission denied (errno 13)",
            },
        ],
    }
    text = render_status({"devices": [dev]})
    assert "program 50-pen.toml#program[0] pen.bpf.o: requests 5, held 2, injected 1" in text
    assert "drops: over budget 7, ring full 0; refused: size 1" in text
    assert "program 50-pen.toml#program[1] k.bpf.o: kernel engine" in text
    assert "program[2] bad.bpf.o: NOT loaded: load failed: EINVAL" in text
    pinned = "program pinned:/sys/fs/bpf/hid/0003_28BD_0905_0001/x"
    assert f"{pinned}: pinned by another loader (/sys/fs/bpf/hid/0003_28BD_0905_0001/x)" in text
    assert f"{pinned}: NOT served: cannot serve: bpf_obj_get(...): Permission denied" in text
    line = render_event(
        {"t": 1.0, "device": "d", "kind": "hold", "data": "0200", "policy": "p", "detail": "defer"}
    )
    assert line == "1.000000  d    HOLD  02 00  [p]  defer"
