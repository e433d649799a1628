"""The userspace engine's request protocol, for real: ``tests/bpf/programs/requests_test.bpf.c``
(a SEC("syscall") program calling the request-writing core of ``<hidbpfd/api.h>``) is built
with ``hidbpfd compile``, run with BPF_PROG_RUN on this kernel (no HID-BPF needed), and its
ring drained into the daemon's decoder and :class:`ProgramServer`: the records, the return
values, the validation (device, size, callback) and the flood budget."""

from __future__ import annotations

import ctypes
import errno
import logging
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.engine import requests as R
from hidbpfd.engine.clock import VirtualClock
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import requests as KR
from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.compile import compile_program
from hidbpfd.model import DeviceId
from tests.bpf.conftest import require_bpf
from tests.bpf.test_layout import c_layout, offsets

SRC = Path(__file__).parent / "programs" / "requests_test.bpf.c"
HEADER_DIR = BPF_DIR / "include" / "hidbpfd"
HID_ID = 7

# struct test_op { __u32 op, hid_id, key, delay_ms, size, count; __u64 arg; __u8 data[512]; }
TEST_OP = struct.Struct(f"<IIIIIIQ{R.DATA_MAX}s")
DEFER, CANCEL, INJECT, OUTPUT, FEATURE, CALL, CALL_UNKNOWN, INJECT_KEY, FLOOD = range(1, 10)


class Program:
    """The test object loaded, its ring drained into ``records``."""

    def __init__(self, obj_path: Path) -> None:
        self.obj = lb.BpfObject.open_file(str(obj_path))
        self.obj.load()
        self.records: list[bytes] = []
        self.ring = lb.RingBuffer(self.obj.map(KR.REQUESTS_MAP).fd, self.records.append)
        self.state_fd = self.obj.map(KR.STATE_MAP).fd
        self.passing_fd = self.obj.map(KR.PASSING_MAP).fd
        self.keys_fd = self.obj.map(KR.KEYS_MAP).fd

    def run(
        self,
        op: int,
        *,
        hid_id: int = HID_ID,
        key: int = 0,
        delay_ms: int = 0,
        data: bytes = b"",
        size: int | None = None,
        count: int = 0,
        arg: int = 0,
    ) -> int:
        n = len(data) if size is None else size
        ctx = ctypes.create_string_buffer(
            TEST_OP.pack(op, hid_id, key, delay_ms, n, count, arg, data), TEST_OP.size
        )
        return lb.prog_test_run(self.obj.program("test_request").fd, ctx)

    def take(self) -> list[bytes]:
        self.ring.consume()
        out = self.records[:]
        self.records.clear()
        return out

    def reset(self, burst: int = 0, interval_ns: int = 0) -> None:
        self.take()
        zero = struct.pack("<I", 0)
        lb.map_update(
            self.state_fd, zero, KR.encode_state(KR.State(burst, interval_ns, 0, 0, 0, 0))
        )
        lb.map_update(self.passing_fd, zero, zero)

    def state(self) -> KR.State:
        raw = lb.map_lookup(self.state_fd, struct.pack("<I", 0), KR.STATE_SIZE)
        assert raw is not None
        return KR.decode_state(raw)

    def close(self) -> None:
        self.ring.free()
        self.obj.close()


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Program]:
    require_bpf()
    out = tmp_path_factory.mktemp("prog") / "requests_test.bpf.o"
    compile_program(SRC, out, cache=tmp_path_factory.mktemp("cache"))
    p = Program(out)
    yield p
    p.close()


@pytest.fixture
def fresh(prog: Program) -> Program:
    prog.reset()
    return prog


class FakeTarget:
    """Records what the server asked of the device."""

    def __init__(self, prog: Program | None = None) -> None:
        self.prog = prog
        self.done: list[tuple[str, bytes | str]] = []

    def inject(self, data: bytes, *, held: bool) -> None:
        self.done.append(("held" if held else "inject", data))

    def output(self, data: bytes) -> None:
        self.done.append(("output", data))

    def set_feature(self, data: bytes) -> None:
        self.done.append(("feature", data))

    def call(self, name: str, key: int, arg: int) -> None:
        self.done.append(("call", f"{name}:{key}:{arg}"))

    def drain(self) -> None:
        pass

    def key_done(self, key: int, ts_ns: int) -> None:
        self.done.append(("key_done", str(key)))


def server(target: FakeTarget, **limits: object) -> R.ProgramServer:
    dev = DeviceId(3, 0x1209, 0xA001, "test", hid_id=DeviceId.sysfs_name(3, 0x1209, 0xA001, HID_ID))
    lim = R.Limits(**{"callbacks": frozenset({"test_callback"}), **limits})  # type: ignore[arg-type]
    return R.ProgramServer(dev, "t.toml#program[0] t.bpf.o", Scheduler(VirtualClock()), target, lim)


# --- layout -------------------------------------------------------------------------------


def test_request_layout_matches_header(tmp_path: Path) -> None:
    c = c_layout(
        tmp_path,
        r"""
#include <linux/types.h>
#include <stddef.h>
#include <stdio.h>
#include "requests.h"
#define F(s, f) printf("\"%s.%s\": %zu,", #s, #f, offsetof(struct s, f))
#define S(s) printf("\"%s\": %zu,", #s, sizeof(struct s))
int main(void) {
    printf("{");
    S(hidbpfd_request); F(hidbpfd_request, kind); F(hidbpfd_request, hid_id);
    F(hidbpfd_request, key); F(hidbpfd_request, delay_ms); F(hidbpfd_request, ts_ns);
    F(hidbpfd_request, arg); F(hidbpfd_request, flags); F(hidbpfd_request, size);
    F(hidbpfd_request, data);
    S(hidbpfd_state); F(hidbpfd_state, interval_ns); F(hidbpfd_state, tat);
    F(hidbpfd_state, requests); F(hidbpfd_state, over_budget); F(hidbpfd_state, ring_full);
    printf("\"end\": 0}");
    return 0;
}
""".replace('"requests.h"', f'"{HEADER_DIR}/requests.h"'),
    )
    assert c["hidbpfd_request"] == R.REQUEST_SIZE == 552
    fields = ("kind", "hid_id", "key", "delay_ms", "ts_ns", "arg", "flags", "size", "data")
    assert offsets(R.REQUEST_FORMAT)[1:] == [c[f"hidbpfd_request.{f}"] for f in fields]
    assert c["hidbpfd_state"] == KR.STATE_SIZE == 48
    sfields = ("interval_ns", "tat", "requests", "over_budget", "ring_full")
    assert offsets(KR.STATE_FORMAT)[1:] == [c[f"hidbpfd_state.{f}"] for f in sfields]


def test_constants_match_header() -> None:
    text = (HEADER_DIR / "requests.h").read_text()
    d = {m[0]: m[1] for m in re.findall(r"^#define\s+(HIDBPFD_\w+)\s+(\S+)", text, re.M)}
    assert int(d["HIDBPFD_REQUEST_VERSION"]) == R.REQUEST_VERSION
    assert int(d["HIDBPFD_DATA_MAX"]) == R.DATA_MAX
    assert int(d["HIDBPFD_CALLBACK_NAME_MAX"]) == R.CALLBACK_NAME_MAX
    assert d["HIDBPFD_REQ_KEYED"] == "(1" and R.REQ_KEYED == 1
    for k in R.Kind:
        assert int(d[f"HIDBPFD_REQ_{k.name}"]) == k
    assert int(d["HIDBPFD_BUDGET_BURST"]) == KR.BUDGET_BURST
    assert int(d["HIDBPFD_BUDGET_INTERVAL_NS"].removesuffix("ULL")) == KR.BUDGET_INTERVAL_NS
    api = (HEADER_DIR / "api.h").read_text()
    assert re.search(r"#define HIDBPFD_DATA_MAX\s+512", api)


# --- the records the API writes -------------------------------------------------------------


def test_inject_record_round_trip(fresh: Program) -> None:
    before = time.monotonic_ns()
    assert fresh.run(INJECT, data=b"\x02\x01\x02", delay_ms=15) == 0
    (raw,) = fresh.take()
    req = R.decode(raw)
    assert (req.kind, req.hid_id, req.keyed, req.delay_ms, req.data) == (
        R.Kind.INJECT,
        HID_ID,
        False,
        15,
        b"\x02\x01\x02",
    )
    assert before <= req.ts_ns <= time.monotonic_ns()  # CLOCK_MONOTONIC, like the scheduler's
    assert fresh.state().requests == 1


@pytest.mark.parametrize(("op", "kind"), [(OUTPUT, R.Kind.OUTPUT), (FEATURE, R.Kind.SET_FEATURE)])
def test_output_and_feature_records(fresh: Program, op: int, kind: R.Kind) -> None:
    data = bytes(range(1, 65))
    assert fresh.run(op, data=data) == 0
    (raw,) = fresh.take()
    assert (R.decode(raw).kind, R.decode(raw).data) == (kind, data)


def test_full_size_report_and_too_large(fresh: Program) -> None:
    data = bytes(i & 0xFF for i in range(R.DATA_MAX))
    assert fresh.run(INJECT, data=data) == 0
    assert R.decode(fresh.take()[0]).data == data
    assert fresh.run(INJECT, data=data, size=R.DATA_MAX + 1) == -errno.E2BIG
    assert fresh.take() == []


def test_defer_holds_and_lets_the_daemons_reinjection_through(fresh: Program) -> None:
    report = b"\x02\x00\x10\x20"
    assert fresh.run(DEFER, key=3, delay_ms=20, data=report) == -1  # held: drop it now
    (raw,) = fresh.take()
    req = R.decode(raw)
    assert (req.kind, req.key, req.keyed, req.delay_ms, req.data) == (
        R.Kind.DEFER,
        3,
        True,
        20,
        report,
    )
    assert lb.map_lookup(fresh.keys_fd, struct.pack("<I", 3), 8) == struct.pack("<Q", req.ts_ns)
    # the daemon re-injects it: the program sees it again, and must let it pass, once
    lb.map_update(fresh.passing_fd, struct.pack("<I", 0), struct.pack("<I", len(report)))
    assert fresh.run(DEFER, key=3, delay_ms=20, data=report) == 0
    assert fresh.take() == []
    assert fresh.run(DEFER, key=3, delay_ms=20, data=report) == -1  # the next one is held
    assert len(fresh.take()) == 1


def test_cancel(fresh: Program) -> None:
    assert fresh.run(CANCEL, key=9) == -errno.ENOENT  # nothing pending: no record
    assert fresh.take() == []
    assert fresh.run(INJECT_KEY, key=9, delay_ms=50, data=b"\x01") == 0
    assert fresh.run(CANCEL, key=9) == 0
    kinds = [R.decode(r).kind for r in fresh.take()]
    assert kinds == [R.Kind.INJECT, R.Kind.CANCEL]
    assert fresh.run(CANCEL, key=9) == -errno.ENOENT


def test_call_record_and_callback_run(fresh: Program) -> None:
    assert fresh.run(CALL, key=4, arg=0xAB, delay_ms=10) == 0
    (raw,) = fresh.take()
    req = R.decode(raw)
    assert (req.kind, req.callback, req.key, req.arg, req.keyed) == (
        R.Kind.CALL,
        "test_callback",
        4,
        0xAB,
        True,
    )
    # the daemon runs it as it would: BPF_PROG_RUN with struct hidbpfd_call_args
    ctx = ctypes.create_string_buffer(
        struct.pack(KR.CALL_ARGS_FORMAT, HID_ID, 4, 0xAB), KR.CALL_ARGS_SIZE
    )
    assert lb.prog_test_run(fresh.obj.program("test_callback").fd, ctx) == 0
    (out,) = fresh.take()  # the callback used the API itself
    assert (R.decode(out).kind, R.decode(out).data) == (R.Kind.OUTPUT, b"\x05\xab")


# --- the daemon's side: decode, validate, serve ---------------------------------------------


def test_server_serves_and_validates(fresh: Program, caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTarget()
    s = server(t, input_max=4, output_max=8, feature_max=2)
    fresh.run(INJECT, data=b"\x01\x02")
    fresh.run(OUTPUT, data=bytes(9))  # beyond the device's largest output report (8)
    fresh.run(OUTPUT, data=bytes(10))  # the same cause again: counted, not logged again
    fresh.run(FEATURE, data=b"\x05\x01")
    fresh.run(INJECT, hid_id=HID_ID + 1, data=b"\x01")  # a device this object is not for
    fresh.run(CALL_UNKNOWN, key=1)
    fresh.run(CALL, key=2, arg=5)
    fresh.run(DEFER, key=1, data=bytes(6))  # a report larger than the device's: re-injected
    with caplog.at_level(logging.DEBUG, logger="hidbpfd.programs"):
        for raw in fresh.take():
            s.on_record(raw)
    assert t.done == [
        ("inject", b"\x01\x02"),
        ("feature", b"\x05\x01"),
        ("call", "test_callback:2:5"),
        ("key_done", "2"),
        ("held", bytes(6)),
    ]
    assert s.counters.refused == {"size": 3, "device": 1, "callback": 1}
    assert s.counters.requests == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per cause
    assert any("no SEC(\"syscall\") program 'no_such_callback'" in w for w in warnings)
    assert any("hid_id 8" in w for w in warnings)


def test_server_refuses_malformed_records() -> None:
    t = FakeTarget()
    s = server(t)
    good = R.encode(R.Request(R.Kind.INJECT, HID_ID, 0, False, 0, 1, 0, b"\x01"))
    s.on_record(good[:100])
    s.on_record(struct.pack("<H", 99) + good[2:])
    s.on_record(good[:2] + struct.pack("<H", 77) + good[4:])
    assert s.counters.refused == {"protocol": 3}
    assert t.done == []


# --- the flood budget -------------------------------------------------------------------------


def test_flood_is_cut_by_the_budget(fresh: Program) -> None:
    # the default burst, with a refill slow enough that no token comes back during the test
    # (under emulation 1000 requests take longer than the default 1 ms per token)
    fresh.reset(burst=KR.BUDGET_BURST, interval_ns=3600 * 10**9)
    assert fresh.run(FLOOD, count=1000) == 0
    got = fresh.take()
    st = fresh.state()
    assert len(got) == KR.BUDGET_BURST  # the burst passes...
    assert st.over_budget == 1000 - KR.BUDGET_BURST  # ...the rest is refused and counted
    assert st.requests == KR.BUDGET_BURST
    assert fresh.run(INJECT, data=b"\x01") == -errno.EBUSY  # still over budget


def test_the_budget_comes_back_with_time(fresh: Program) -> None:
    """With the defaults (state zeroed): a flood takes the burst, and after a few intervals
    requests pass again."""
    fresh.run(FLOOD, count=1000)
    assert KR.BUDGET_BURST <= len(fresh.take()) < 1000
    assert fresh.state().over_budget > 0
    time.sleep(5 * KR.BUDGET_INTERVAL_NS / 1e9)
    assert fresh.run(INJECT, data=b"\x01") == 0


def test_budget_is_per_object_instance_and_configurable(prog: Program) -> None:
    prog.reset(burst=5, interval_ns=10_000_000_000)
    prog.run(FLOOD, count=50)
    assert len(prog.take()) == 5
    assert prog.state().over_budget == 45
    prog.reset()
    prog.run(FLOOD, count=10)
    assert len(prog.take()) == 10


def test_a_refused_defer_passes_the_report(prog: Program) -> None:
    prog.reset(burst=1, interval_ns=10_000_000_000)
    assert prog.run(DEFER, key=1, delay_ms=5, data=b"\x02\x00") == -1  # held
    assert prog.run(DEFER, key=1, delay_ms=5, data=b"\x02\x00") == 0  # over budget: passes
    prog.reset()


def test_ring_full_is_counted(prog: Program) -> None:
    prog.reset(burst=100_000, interval_ns=1)
    n = 0
    while prog.run(INJECT, data=b"\x01") == 0:
        n += 1
        assert n < 10_000
    assert prog.run(INJECT, data=b"\x01") == -errno.ENOSPC
    assert prog.state().ring_full == 2
    assert n == (256 * 1024) // (R.REQUEST_SIZE + 8)  # each record has an 8-byte header
    prog.reset()
