"""The daemon serving a ``[[program]]`` on this kernel: the real daemon, its loop, scheduler,
device I/O worker and control-side status, and a real BPF object's request ring — the test
object ``tests/bpf/programs/requests_test.bpf.c`` (built with ``hidbpfd compile``), loaded
without attaching (this kernel has no HID-BPF) and driven by BPF_PROG_RUN as a HID-BPF program
would write its requests. The sinks are the harness's recorders."""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.engine.requests import DATA_MAX
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.compile import compile_program
from hidbpfd.kernel.programs import ObjectInfo, ProgramInstance
from tests.bpf.conftest import require_bpf
from tests.daemon.harness import OTHER, running, until

pytestmark = pytest.mark.bpf

SRC = Path(__file__).resolve().parents[1] / "bpf" / "programs" / "requests_test.bpf.c"
TEST_OP = struct.Struct(f"<IIIIIIQ{DATA_MAX}s")
DEFER, CANCEL, INJECT, OUTPUT, FEATURE, CALL, CALL_UNKNOWN = range(1, 8)


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_bpf()
    out = tmp_path_factory.mktemp("obj") / "t.bpf.o"
    compile_program(SRC, out, cache=tmp_path_factory.mktemp("cache"))
    return out


def loader(path: str, hid_id: int, on_record: Any) -> ProgramInstance:
    info = ObjectInfo(path, "", "userspace", frozenset({"test_callback"}))
    return ProgramInstance(info, hid_id, on_record, attach=False)


def op(
    handle: ProgramInstance,
    what: int,
    *,
    hid_id: int = OTHER.kernel_id,
    key: int = 0,
    delay_ms: int = 0,
    data: bytes = b"",
    arg: int = 0,
) -> int:
    ctx = ctypes.create_string_buffer(
        TEST_OP.pack(what, hid_id, key, delay_ms, len(data), 0, arg, data), TEST_OP.size
    )
    return lb.prog_test_run(handle.program_fd("test_request"), ctx)


def test_daemon_serves_a_program(tmp_path: Path, obj: Path) -> None:
    image = obj.read_bytes()

    async def body() -> None:
        async with running(tmp_path, program_loader=loader) as r:
            # the harness's config dir is ready only now: add the file, reload
            (r.cfg / obj.name).write_bytes(image)
            (r.cfg / "50-0001__0002-prog.toml").write_text(
                '[device]\nvendor = 0x0001\nproduct = 0x0002\n\n[[program]]\nobject = "t.bpf.o"\n'
            )
            res = r.d.reload()
            assert OTHER.key in res.changed
            (sp,) = r.d.programs[OTHER.key].programs
            assert sp.error == "" and isinstance(sp.handle, ProgramInstance)
            h = sp.handle
            key = OTHER.key
            monitor: list[dict[str, Any]] = []
            unsubscribe = r.d._subscribe(monitor.append)  # what `hidbpfd monitor` gets

            assert op(h, INJECT, data=b"\x01\x02") == 0  # now: through the ring, on the loop
            await until(lambda: r.got(key, "inject") == [b"\x01\x02"], "the injection")
            assert op(h, DEFER, key=1, delay_ms=20, data=b"\x02\x00") == -1
            await until(lambda: r.got(key, "inject")[1:] == [b"\x02\x00"], "the held report")
            assert op(h, DEFER, key=1, delay_ms=5000, data=b"\x02\x01") == -1
            assert op(h, CANCEL, key=1) == 0
            assert op(h, OUTPUT, data=b"\x10\x01") == 0
            await until(lambda: r.got(key, "output") == [b"\x10\x01"], "the output report")
            assert op(h, CALL, key=2, arg=7, delay_ms=10) == 0  # the callback asks for 05 07
            await until(lambda: r.got(key, "output")[1:] == [b"\x05\x07"], "the callback's output")
            op(h, INJECT, hid_id=OTHER.kernel_id + 1, data=b"\x01")  # not this device
            op(h, CALL_UNKNOWN, key=3)
            await until(lambda: sp.server is not None and sp.server.counters.requests == 9, "all")
            assert r.got(key, "inject") == [b"\x01\x02", b"\x02\x00"]  # the cancelled one: never
            unsubscribe()
            label = "50-0001__0002-prog.toml#program[0] t.bpf.o"
            mine = [m for m in monitor if m["device"] == key]
            assert mine and all(m["policy"] == label for m in mine)
            shown = [(m["kind"], m["data"], m["detail"]) for m in mine]
            assert ("request", "0102", "inject 2 bytes") in shown
            assert ("hold", "0200", "defer 2 bytes key=1 20 ms") in shown
            assert ("inject", "0200", "defer key=1 due") in shown
            assert ("cancel", "0201", "key=1 (held report dropped)") in shown
            assert ("call", "", "call test_callback(7) key=2 10 ms") in shown
            assert ("output", "0507", "output 2 bytes") in shown
            assert [k for k, _, _ in shown].count("refused") == 2

            (dev,) = [d for d in r.d.status()["devices"] if d["hid_id"] == key]
            (st,) = dev["programs"]
            assert st["program"] == "50-0001__0002-prog.toml#program[0] t.bpf.o"
            assert (st["requests"], st["held"], st["injected"], st["output"], st["calls"]) == (
                9,
                2,
                2,
                2,
                1,
            )
            assert st["cancelled"] == 1 and st["errors"] == 0 and st["pending"] == 0
            assert st["refused"] == {"device": 1, "callback": 1}
            assert st["drops"] == {"over_budget": 0, "ring_full": 0}

            # reload with the object rebuilt: swapped, a held report released first
            assert op(h, DEFER, key=4, delay_ms=60_000, data=b"\x02\x04") == -1
            await until(lambda: sp.server is not None and sp.server.counters.held == 3, "held")
            o = r.cfg / "t.bpf.o"
            stt = o.stat()
            os.utime(o, ns=(stt.st_atime_ns, stt.st_mtime_ns + 1_000_000_000))
            assert OTHER.key in r.d.reload().changed
            assert r.got(key, "inject")[-1] == b"\x02\x04"
            (sp2,) = r.d.programs[key].programs
            assert sp2.handle is not h and sp2.handle is not None
            assert r.d.reload().changed == []  # nothing changed: nothing swapped

            # removal detaches
            r.w.remove(OTHER)
            assert key not in r.d.programs
            r.w.add(OTHER)
            (sp3,) = r.d.programs[key].programs
            assert isinstance(sp3.handle, ProgramInstance)
            # a report held when the daemon is told to stop is re-injected first
            assert op(sp3.handle, DEFER, key=1, delay_ms=60_000, data=b"\x02\x09") == -1
            await until(lambda: sp3.server is not None and sp3.server.counters.held == 1, "held")
            before = len(r.got(key, "inject"))
            injected_after = r.got
        assert injected_after(key, "inject")[before:] == [b"\x02\x09"]

    asyncio.run(body())


def test_a_program_that_cannot_load_is_reported(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path, program_loader=loader) as r:
            (r.cfg / "bad.bpf.o").write_bytes(b"\x7fELF not really")
            (r.cfg / "50-0001__0002-prog.toml").write_text(
                '[device]\nvendor = 0x0001\nproduct = 0x0002\n\n[[program]]\nobject = "bad.bpf.o"\n'
            )
            r.d.reload()
            (sp,) = r.d.programs[OTHER.key].programs
            assert sp.handle is None and "load failed" in sp.error
            (dev,) = [d for d in r.d.status()["devices"] if d["hid_id"] == OTHER.key]
            assert "load failed" in dev["programs"][0]["error"]
            assert r.d.managed  # the other devices' policies carry on

    asyncio.run(body())
