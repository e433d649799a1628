"""The ring buffer: overfilling it (drops counted, reports pass, armed mask untouched) and
its epoll fd waking an asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from hidbpfd.engine.filter import Filter
from hidbpfd.kernel.filter_codec import RECORD_SIZE, VERDICT_DROPPED, VERDICT_HOLD, Record
from hidbpfd.kernel.source import BpfEventSource
from hidbpfd.model import ANY_REPORT, DeviceRule, Pattern, Rule, RuleFlag
from tests.bpf.conftest import Collected, new_hid_id, require_bpf
from tests.helpers import LIMIT_S

pytestmark = pytest.mark.bpf

RING = 4096
SLOT = RECORD_SIZE + 8  # BPF_RINGBUF_HDR_SZ, rounded to 8
FITS = RING // SLOT  # 25 records


@pytest.fixture
def small() -> Iterator[Collected]:
    """A source with a one-page ring, so it fills after FITS records."""
    require_bpf()
    c = Collected(ring_bytes=RING)
    c.source.open()
    yield c
    c.source.close()


def test_full_ring_counts_drops_and_passes_reports(small: Collected) -> None:
    src = small.source
    hid_id = new_hid_id()
    rules = [
        DeviceRule(Rule(Pattern.parse("01"), RuleFlag.HOLD), 0),
        DeviceRule(Rule(Pattern.parse("02"), RuleFlag.ARM), 4),
    ]
    src.set_rules(hid_id, rules)
    ref = Filter(rules)
    assert src.drops() == 0

    verdicts = [src.feed(hid_id, b"\x01\xaa") for _ in range(FITS + 40)]
    assert verdicts == [VERDICT_HOLD] * FITS + [VERDICT_DROPPED] * 40  # dropped: not held
    assert src.drops() == 40

    # an ARM rule firing on a full ring leaves the armed mask as it was
    assert src.feed(hid_id, b"\x02") == VERDICT_DROPPED
    assert ref.run(b"\x02", ring_full=True) is None
    assert src.armed(hid_id) == ref.armed == 0
    assert src.drops() == 41

    recs = small.take()
    assert len(recs) == FITS
    assert all(r.held and r.data == b"\x01\xaa" for r in recs)
    assert [r.ts_ns for r in recs] == sorted(r.ts_ns for r in recs)

    # room again: the next report is recorded and arms
    assert src.feed(hid_id, b"\x02") != VERDICT_DROPPED
    assert src.armed(hid_id) == 1 << 4
    assert src.drops() == 41
    src.clear_rules(hid_id)


def test_ring_wakes_the_loop() -> None:
    require_bpf()
    got: list[tuple[Record, int]] = []
    woken = asyncio.Event()

    def on_record(rec: Record) -> None:
        got.append((rec, time.monotonic_ns()))
        if len(got) == 3:
            woken.set()

    src = BpfEventSource(on_record, ring_bytes=RING)
    src.open()
    hid_id = new_hid_id()
    src.set_rules(hid_id, [DeviceRule(Rule(ANY_REPORT), 0)])

    def device() -> None:
        time.sleep(0.05)  # the loop is asleep in epoll_wait by now
        for i in range(3):
            src.feed(hid_id, bytes([i, 0x55]))
            time.sleep(0.002)

    async def scenario() -> None:
        src.add_to_loop(asyncio.get_running_loop())
        # a plain thread, unknown to the loop: only the ring's epoll fd can wake it
        feeder = threading.Thread(target=device)
        feeder.start()
        try:
            await asyncio.wait_for(woken.wait(), LIMIT_S)
        finally:
            feeder.join()
            src.remove_from_loop()

    try:
        asyncio.run(scenario())
    finally:
        src.close()
    assert [r.data for r, _ in got] == [bytes([i, 0x55]) for i in range(3)]
    assert all(r.hid_id == hid_id and r.matched == 1 for r, _ in got)
    # woken by the ring: nothing else could wake the loop before the wait's LIMIT_S timer
    assert all(0 < woke - r.ts_ns < LIMIT_S * 1e9 for r, woke in got)
