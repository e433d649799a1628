"""The probe always answers: valid JSON, every entry with ``ok`` and a ``reason``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from hidbpfd.kernel import probe as probe_mod

EXPECTED = {
    "kernel",
    "libbpf",
    "btf",
    "ring_buffer",
    "bpf_wq",
    "hid_bpf_struct_ops",
    "hid_bpf_input_report",
    "hid_bpf_try_input_report",
    "hid_bpf_hw_output_report",
    "hid_bpf_hw_request",
    "feeder",
    "tracing",
    "uhid",
    "uinput",
    "hidraw",
}


def check_entries(result: Mapping[str, object]) -> None:
    assert set(result) == EXPECTED
    for key, entry in result.items():
        assert isinstance(entry, dict), key
        assert isinstance(entry["ok"], bool), key
        assert isinstance(entry["reason"], str) and entry["reason"], key
        if "errno" in entry:
            assert isinstance(entry["errno"], int) and not entry["ok"], key


def test_main_prints_json_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe_mod.main(["--compact"]) == 0
    check_entries(json.loads(capsys.readouterr().out))


def test_no_load_skips_loading_but_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe_mod.main(["--no-load"]) == 0
    result = json.loads(capsys.readouterr().out)
    check_entries(result)
    if result["ring_buffer"]["ok"]:
        assert "not tried" in result["feeder"]["reason"]


def test_cached_and_copied() -> None:
    a = probe_mod.probe()
    a["kernel"]["ok"] = "mangled"
    b = probe_mod.probe()
    assert b["kernel"]["ok"] is True  # callers get their own copy of the cached answer
    check_entries(b)


def test_missing_object_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bpf.o"
    result = probe_mod.probe(obj_path=missing)
    check_entries(result)
    assert result["feeder"]["ok"] is False
    assert "not built" in str(result["feeder"]["reason"]) or "unavailable" in str(
        result["feeder"]["reason"]
    )


def test_kernel_btf_facts_are_consistent() -> None:
    btf = probe_mod.kernel_btf()
    if not btf.ok:
        pytest.skip(btf.reason)
    if btf.hid_bpf:
        assert btf.device_event_arity in (2, 3)
    else:
        assert btf.device_event_arity is None
