"""Fixtures for the BPF tier: the real kernel filter, driven through the feeder.

Tests that need BPF skip with the probe's reason when this machine cannot load the feeder;
with ``HIDBPFD_REQUIRE_BPF=1`` (CI on a BPF-capable runner) they fail instead, so a broken
BPF set-up never passes silently.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from hidbpfd.kernel.filter_codec import Record
from hidbpfd.kernel.probe import probe
from hidbpfd.kernel.source import BpfEventSource

_hid_ids = itertools.count(0x1000)


def require_bpf() -> None:
    """Skip (or fail under HIDBPFD_REQUIRE_BPF=1) unless the feeder loads and runs here."""
    feeder = probe()["feeder"]
    if feeder["ok"]:
        return
    msg = f"BPF feeder unavailable: {feeder['reason']}"
    if os.environ.get("HIDBPFD_REQUIRE_BPF") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def new_hid_id() -> int:
    """A device id no other test in this process uses (the maps are shared per source)."""
    return next(_hid_ids)


class Collected:
    """A BpfEventSource and the records it delivered, drained on demand."""

    def __init__(self, ring_bytes: int = 1 << 20) -> None:
        self.records: list[Record] = []
        self.source = BpfEventSource(self.on_record, ring_bytes=ring_bytes)

    def on_record(self, rec: Record) -> None:
        """The source's callback: keep the record for :meth:`take`."""
        self.records.append(rec)

    def take(self) -> list[Record]:
        """Drain the ring and return (and forget) everything delivered so far."""
        while self.source.consume():  # at most TURN_RECORDS per call
            pass
        out = self.records[:]
        self.records.clear()
        return out


@pytest.fixture(scope="module")
def kernel() -> Iterator[Collected]:
    """One opened event source for a test module (1 MiB ring)."""
    require_bpf()
    c = Collected()
    c.source.open()
    yield c
    c.source.close()
