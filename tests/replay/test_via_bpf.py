"""``replay --via-bpf`` and ``replay`` print identical traces for every capture: the kernel's
filter (feeder program + ring buffer) and the Python reference agree on real captures.

Skipped, with the reason, where the BPF objects cannot be loaded (no BPF, not root, not built).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.config import load
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.virtual import replay
from tests.replay.test_captures import CAPTURES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bpf_backend() -> Iterator[object]:
    from hidbpfd.replay.via_bpf import BpfFilterBackend, BpfUnavailable

    try:
        be = BpfFilterBackend.open()
    except BpfUnavailable as e:
        pytest.skip(f"BPF filter unavailable: {e}")
    yield be
    be.close()


@pytest.mark.bpf
@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_via_bpf_equals_replay(name: str, bpf_backend: object) -> None:
    cfg = load([ROOT / "config"])
    rec = load_rec(ROOT / "tests/captures" / f"{name}.hid")
    pure = [line.json() for line in replay(rec, cfg)]
    via = [line.json() for line in replay(rec, cfg, backend=bpf_backend)]  # type: ignore[arg-type]
    assert via == pure
    assert [json.loads(x) for x in via] == [
        json.loads(x)
        for x in (ROOT / "tests/captures" / f"{name}.trace.jsonl").read_text().splitlines()
    ]


@pytest.mark.bpf
def test_cli_via_bpf(capsys: pytest.CaptureFixture[str], bpf_backend: object) -> None:
    from hidbpfd.cli import main

    assert (
        main(
            [
                "replay",
                "--via-bpf",
                "--config",
                str(ROOT / "config"),
                str(ROOT / "tests/captures/macro-key.hid"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == (ROOT / "tests/captures/macro-key.trace.jsonl").read_text()
