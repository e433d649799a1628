"""Monitor clients never slow the drain of the ring (issue 10, item 6), with the real daemon
and BPF filter (reports fed through the feeder; fake udev): the outcomes of a drained burst are
turned into monitor lines only after the whole burst was handled, the daemon's monitor queue is
bounded (the rest dropped, counted, told to the clients), and clients that never read lose
their own lines without holding anything up."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from hidbpfd.daemon.status import MONITOR_BACKLOG
from hidbpfd.service.control import request
from tests.daemon.harness import OUT_OF_PROX, PEN, running, until
from tests.helpers import LIMIT_S

BURST = 300
"""Records per burst: the harness's 64 KiB ring holds 409."""


def test_a_burst_is_handled_before_any_monitor_line_is_built(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            slot = r.d.dispatch.slots[PEN.key]
            seen_at_first: list[int] = []
            got: list[dict[str, Any]] = []

            def subscriber(item: dict[str, Any]) -> None:
                if not seen_at_first:
                    seen_at_first.append(slot.counters.seen)
                got.append(item)

            stop = r.d._subscribe(subscriber)
            for _ in range(BURST):
                r.feed(PEN, OUT_OF_PROX)
            await until(lambda: slot.counters.seen == BURST, "the burst drained")
            await until(lambda: len(got) >= BURST, "its monitor lines")
            stop()
            # every record of the burst was handled (held, its deferral scheduled) before the
            # first monitor line was built: monitoring never runs between a record and the next
            assert seen_at_first == [BURST]
            assert [g["kind"] for g in got[:1]] == ["hold"]
            assert r.src.drops() == 0

    asyncio.run(body())


def test_the_monitor_queue_is_bounded_and_says_what_it_dropped(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            got: list[dict[str, Any]] = []
            stop = r.d._subscribe(got.append)
            slot = r.d.dispatch.slots[PEN.key]
            # bursts drained without a turn of the loop between them: outcomes pile up
            n = 0
            while n * 2 <= MONITOR_BACKLOG + BURST:
                for _ in range(BURST):
                    r.feed(PEN, OUT_OF_PROX)
                r.src.consume()
                n += BURST
            assert slot.counters.seen == n and r.src.drops() == 0
            assert len(r.d._monitor_q) == MONITOR_BACKLOG
            lost = r.d.monitor_dropped
            assert lost > 0
            await until(lambda: not r.d._monitor_q, "the queue emptied")
            stop()
            assert got[0] == {"dropped": lost}
            assert len(got) >= 1 + MONITOR_BACKLOG  # (and the timers that fired meanwhile)
            st = r.d.status()
            assert st["monitor_dropped"] == lost and st["ring_drops"] == 0

    asyncio.run(body())


def test_monitors_that_never_read_hold_up_nothing(tmp_path: Path) -> None:
    sock = str(tmp_path / "c.sock")

    async def body() -> None:
        async with running(tmp_path, socket_path=sock) as r:
            loop = asyncio.get_running_loop()
            clients = []
            for _ in range(50):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await loop.sock_connect(s, sock)
                await loop.sock_sendall(s, b'{"cmd": "monitor"}\n')
                clients.append(s)
            await until(lambda: len(r.d.control._monitors) == 50, "50 monitors")  # type: ignore[union-attr]
            slot = r.d.dispatch.slots[PEN.key]
            total = 0
            for _ in range(20):  # 6,000 records: far more lines than the clients take
                for _ in range(BURST):
                    r.feed(PEN, OUT_OF_PROX)
                total += BURST
                await until(lambda t=total: slot.counters.seen == t, "burst drained")
            st = await asyncio.to_thread(request, sock, "status", timeout=LIMIT_S)
            assert st["ring_drops"] == 0
            mons = r.d.control._monitors  # type: ignore[union-attr]
            assert len(mons) == 50 and all(m.dropped > 0 for m in mons)  # lost their own
            # a client that reads at last is told how many lines it lost
            s = clients[0]
            seen = b""
            async with asyncio.timeout(LIMIT_S):
                while b'{"dropped": ' not in seen:
                    seen += await loop.sock_recv(s, 1 << 16)
            for c in clients:
                c.close()
            await until(lambda: not r.d._subscribers, "monitors gone")

    asyncio.run(body())


def test_a_big_backlog_is_drained_a_turn_at_a_time() -> None:
    """A ring sized for a long burst never blocks the loop for its whole backlog: consume()
    handles at most TURN_RECORDS records, then the loop turns (timers, ``status``)."""
    from hidbpfd.config import load
    from hidbpfd.engine.dispatch import build_table
    from hidbpfd.kernel.source import TURN_RECORDS, BpfEventSource
    from tests.bpf.conftest import require_bpf

    require_bpf()
    cfg = load([Path(__file__).resolve().parents[2] / "config"])
    (pen,) = [f for f in cfg.files if Path(f.path).name.startswith("50-28bd__0905")]
    table, _, _ = build_table(pen.bindings)
    got: list[object] = []
    src = BpfEventSource(got.append, ring_bytes=1 << 20)
    src.open()
    try:
        src.set_rules(PEN.kernel_id, table)
        n = 3 * TURN_RECORDS + 5
        for _ in range(n):
            src.feed(PEN.kernel_id, OUT_OF_PROX)
        counts = []
        while k := src.consume():
            counts.append(k)
        assert counts == [TURN_RECORDS] * 3 + [5] and len(got) == n and src.drops() == 0
    finally:
        src.close()
