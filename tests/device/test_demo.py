"""``hidbpfd demo`` live, on uhid devices with the real daemon (VM tier)."""

from __future__ import annotations

import io

import pytest

from hidbpfd.demo import SCENARIOS, can_run_live, run_live_demo

pytestmark = pytest.mark.device


def test_live_demo(uhid_available: None) -> None:
    assert can_run_live() == ""
    out = io.StringIO()
    assert run_live_demo(out) == 0
    text = out.getvalue()
    for sc in SCENARIOS:
        assert sc.title in text
    assert "kernel: BPF hid_bpf, inject: in-kernel (hid_bpf_input_report)" in text
    # the pen: 13 reports sent, 3 held by the kernel, 10 passed, 2 re-injected
    assert "13 reports sent, 3 held by the kernel, 10 passed, 2 injected" in text
    assert "→ feature     05 01" in text
