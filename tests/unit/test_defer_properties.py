"""Properties of ``defer``, whatever the timing (hypothesis):

1. a held report is never re-injected after a cancelling report (with ``drop``), and with
   ``flush`` it is re-injected exactly when the first cancelling report comes;
2. a held report is never lost without a cancelling report within its delay.

Each held report carries a unique id byte so that every injection can be traced to its origin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hidbpfd.config import Config, load
from hidbpfd.replay.recording import RecordedDevice, Recording
from hidbpfd.replay.virtual import replay

DELAY_NS = 20 * 1_000_000
OTHER = ["02 20", "02 21", "05"]  # in range / in range + tip / another report


def _config(tmp: Path, on_cancel: str, cancel_on: str | None) -> Config:
    extra = f'cancel_on = "{cancel_on}"\n' if cancel_on else ""
    p = tmp / "50-1234__5678-defer.toml"
    p.write_text(
        '[device]\nvendor = 0x1234\n[[policy]]\ntype = "defer"\nmatch = "02 00"\n'
        f'delay_ms = 20\non_cancel = "{on_cancel}"\n{extra}'
    )
    cfg = load([p])
    assert cfg.ok
    return cfg


# (time in µs, None for a held report / index into OTHER)
events_st = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=60_000),
        st.one_of(st.none(), st.integers(0, len(OTHER) - 1)),
    ),
    max_size=30,
).map(lambda evs: sorted(evs, key=lambda e: e[0]))


@pytest.mark.parametrize("on_cancel", ["drop", "flush"])
@pytest.mark.parametrize("cancel_on", [None, "02 20", "05"])
@settings(max_examples=150)  # the rest: the shared profile (tests/conftest.py)
@given(evs=events_st)
def test_defer_properties(
    tmp_path: Path, on_cancel: str, cancel_on: str | None, evs: list[tuple[int, int | None]]
) -> None:
    cfg = _config(tmp_path, on_cancel, cancel_on)
    reports: list[tuple[int, bytes]] = []
    held_at: dict[bytes, tuple[int, int]] = {}  # report -> (event index, time ns)
    for i, (t_us, kind) in enumerate(evs):
        data = bytes([0x02, 0x00, len(held_at)]) if kind is None else bytes.fromhex(OTHER[kind])
        if kind is None:
            held_at[data] = (i, t_us * 1000)
        reports.append((t_us * 1000, data))
    dev = RecordedDevice(0, bus=3, vendor=0x1234, product=0x5678, events=reports)
    trace = list(replay(Recording("<prop>", [dev]), cfg))
    t0 = reports[0][0] if reports else 0
    injected = {
        bytes.fromhex(x.data): t0 + round(x.t * 1e9)
        for x in trace
        if x.kind == "inject" and x.data.startswith("0200")
    }
    assert not [x for x in trace if x.kind == "pass" and x.data.startswith("0200")], (
        "held report leaked"
    )

    def cancels(data: bytes) -> bool:
        return cancel_on is None or data.startswith(bytes.fromhex(cancel_on))

    for data, (i, t_held) in held_at.items():
        later = reports[i + 1 :]
        first_cancel = next((t for t, d in later if cancels(d) and t < t_held + DELAY_NS), None)
        if data in injected:
            t_inj = injected[data]
            assert t_held <= t_inj <= t_held + DELAY_NS, "re-injected outside its window"
            # property 1: never re-injected after a cancelling report (with flush, at the
            # first one at the latest; a newer held report may release it earlier)
            cancels_before = [t for t, d in later if cancels(d) and t < t_inj]
            assert not cancels_before, (data.hex(), t_inj, cancels_before)
        else:
            # property 2: dropped only because a cancelling report came in time
            assert first_cancel is not None and on_cancel == "drop", (
                f"{data.hex()} lost without a cancel"
            )
