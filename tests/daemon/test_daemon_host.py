"""The daemon on this kernel, end to end except udev and the device nodes.

Real: the BPF objects and filter, the ring buffer on the asyncio loop, the timerfd-driven
scheduler, the dispatch, the policies, reload. Reports enter through the feeder program
(BPF_PROG_RUN) exactly as the kernel hands a real device's reports to the filter; udev is a
fake watcher and the sinks are recorders, because this kernel has no HID devices (the VM tier
runs the same daemon against uhid devices). Waiting is on conditions, never on fixed sleeps,
and nothing asserts how fast anything was.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hidbpfd.config.settings import Settings
from tests.daemon.harness import (
    IN_RANGE,
    KBD,
    OTHER,
    OUT_OF_PROX,
    PEN,
    VEND,
    pending,
    running,
    until,
)
from tests.helpers import LIMIT_S

pytestmark = pytest.mark.bpf


def test_devices_managed_by_their_files(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            assert set(r.d.managed) == {PEN.key, KBD.key, VEND.key}
            assert OTHER.key in r.d.present and OTHER.key not in r.d.managed
            # reinit on = ["added"]: output, 10 ms, feature, verify read-back
            await until(
                lambda: r.got(VEND.key, "feature") == [bytes.fromhex("0501")], "reinit on added"
            )
            assert r.got(VEND.key, "output") == [bytes.fromhex("10ff801101")]

    asyncio.run(body())


def test_defer_through_ring_buffer_and_timerfd(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            r.feed(PEN, IN_RANGE)  # unmatched: the daemon never hears of it
            r.feed(PEN, OUT_OF_PROX)  # held, re-injected after 20 ms
            await until(
                lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX], "re-injection after the delay"
            )
            slot = r.d.dispatch.slots[PEN.key]
            assert slot.counters.held == 1
            # a spurious one: cancelled by the next report, never re-injected
            r.feed(PEN, OUT_OF_PROX)
            r.feed(PEN, IN_RANGE)
            await until(lambda: slot.counters.seen == 3, "the cancelling report reached the daemon")
            assert pending(r, PEN) == 0, "the cancelled re-injection is still pending"
            assert r.got(PEN.key, "inject") == [OUT_OF_PROX]

    asyncio.run(body())


def test_macro_key(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            r.feed(KBD, bytes.fromhex("01000400"))  # 'a': not a trigger
            r.feed(KBD, bytes.fromhex("01006800"))  # F13
            await until(lambda: len(r.got(KBD.key, "inject")) == 2, "macro injected")
            assert r.got(KBD.key, "inject") == [
                bytes.fromhex("01010600"),
                bytes.fromhex("01000000"),
            ]
            assert r.d.dispatch.slots[KBD.key].counters.seen == 1

    asyncio.run(body())


def test_remove_cancels_pending_work_and_readd_starts_clean(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            r.feed(PEN, OUT_OF_PROX)
            await until(lambda: pending(r, PEN) == 1, "re-injection pending")
            r.w.remove(PEN)
            assert pending(r, PEN) == 0
            await until(lambda: PEN.key not in r.d.managed, "device let go")
            r.w.add(PEN)
            assert PEN.key in r.d.managed and r.d.dispatch.slots[PEN.key].counters.seen == 0
            assert r.got(PEN.key, "inject") == []

    asyncio.run(body())


def test_bad_reload_keeps_last_good_file(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            pen_file = r.cfg / "50-28bd__0905-pen-proximity.toml"
            pen_file.write_text(pen_file.read_text().replace("delay_ms = 20", "delay_ms = -1"))
            kbd_file = r.cfg / "50-1209__a001-macro-key.toml"
            kbd_file.write_text(
                kbd_file.read_text().replace('"01 00 00 00"]', '"01 00 00 00", "01 00 05 00"]')
            )
            res = r.d.reload()
            assert [e.key for e in res.errors] == ["policy[0].delay_ms"]
            assert res.changed == [KBD.key]
            # the pen still has its last good policy
            r.feed(PEN, OUT_OF_PROX)
            await until(
                lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX], "old pen policy still serving"
            )
            # the keyboard has its new one
            r.feed(KBD, bytes.fromhex("01006800"))
            await until(lambda: len(r.got(KBD.key, "inject")) == 3, "new macro")

    asyncio.run(body())


def test_reload_keeps_pending_work_of_unchanged_policies(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path) as r:
            r.feed(PEN, OUT_OF_PROX)
            await until(lambda: pending(r, PEN) == 1, "pending")
            (r.cfg / "50-1209__a003-release-guard.toml").unlink()
            res = r.d.reload()
            assert res.errors == [] and res.changed == []
            await until(
                lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX],
                "pending work survived the reload",
            )

    asyncio.run(body())


def test_busy_poll_serves_the_ring_without_epoll(tmp_path: Path) -> None:
    """``--busy-poll``: the ring is drained by the polling task (its epoll reader removed
    here, so only the poller can deliver), timers still run, and the daemon stops cleanly."""

    async def body() -> None:
        async with running(tmp_path) as r:
            r.d.busy_poll = True  # too late for this run: start a poller as run() would
            poller = asyncio.get_running_loop().create_task(r.src.busy_poll(r.d._stop))
            r.src.remove_from_loop()
            r.feed(KBD, bytes.fromhex("01006800"))  # F13: the macro trigger
            await until(lambda: len(r.got(KBD.key, "inject")) == 2, "macro injected by the poller")
            r.feed(PEN, OUT_OF_PROX)  # a deferral: the timerfd still fires while polling
            await until(lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX], "deferred re-inject")
            r.d.stop()
            await asyncio.wait_for(poller, LIMIT_S)

    asyncio.run(body())


def test_busy_poll_option_starts_the_poller(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path, settings=Settings(busy_poll=True)) as r:
            r.src.remove_from_loop()
            r.feed(PEN, OUT_OF_PROX)
            await until(lambda: r.got(PEN.key, "inject") == [OUT_OF_PROX], "deferred re-inject")

    asyncio.run(body())
