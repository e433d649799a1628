"""``hidbpfd demo --replay``: every need shown, with the point of each scenario borne out."""

from __future__ import annotations

import io

from hidbpfd.demo import SCENARIOS, run_replay_demo


def test_replay_demo_shows_every_need() -> None:
    out = io.StringIO()
    assert run_replay_demo(out) == 0
    text = out.getvalue()
    for sc in SCENARIOS:
        assert sc.title in text and sc.config in text
    assert "13 reports from the device, 3 held, 10 pass, 2 inject" in text  # pen: 1 dropped, 2 late
    assert "» inject  01 01 06 00" in text  # the macro
    assert "→ feature 05 01" in text  # the re-init
