"""Fuzz: mutated hid-recorder captures through the parser and the replay, pure and
``--via-bpf`` (the kernel filter through the feeder). 0 tracebacks, 0 hangs: a capture either
replays or is refused with ``FILE:LINE: what — hint``; when it replays, the kernel filter and
the Python reference print the same trace.

Seeded (``corpus.SEED``); seeds are tests/captures/*.hid and the regression table of
tests/replay/test_bad_captures.py.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.cli import main
from hidbpfd.config import load
from hidbpfd.replay.recording import RecordingError, parse
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.virtual import replay
from tests.fuzz.corpus import CAPTURE_TOKENS, SEED, bounded, corpus
from tests.replay.test_bad_captures import CASES

ROOT = Path(__file__).resolve().parents[2]
N_MUTANTS = 3000
CASE_LIMIT_S = 20.0
_ERROR = re.compile(r"^(?P<file>.+?):(?P<line>\d+): .+ — .+$")


def _seeds() -> list[bytes]:
    files = [p.read_bytes() for p in sorted((ROOT / "tests/captures").glob("*.hid"))]
    return files + [body.encode() for body, *_ in CASES.values() if len(body) < 20_000]


@pytest.fixture(scope="module")
def bpf() -> Iterator[object | None]:
    from hidbpfd.replay.via_bpf import BpfFilterBackend, BpfUnavailable

    try:
        be = BpfFilterBackend.open()
    except BpfUnavailable:
        yield None  # the pure replay is still fuzzed; the parity half is skipped
        return
    yield be
    be.close()


def test_mutated_captures(tmp_path: Path, bpf: object | None) -> None:
    cfg = load([ROOT / "config"])
    assert cfg.ok
    p = tmp_path / "fuzz.hid"
    refused = replayed = 0
    t0 = time.monotonic()
    for i, data in corpus(_seeds(), CAPTURE_TOKENS, N_MUTANTS):
        p.write_bytes(data)
        try:
            with bounded(CASE_LIMIT_S, f"case {i}"):
                try:
                    rec = load_rec(p)
                except RecordingError as e:
                    refused += 1
                    m = _ERROR.match(str(e))
                    assert m and m["file"] == str(p) and int(m["line"]) >= 1, str(e)
                    continue
                pure = [line.json() for line in replay(rec, cfg)]
                if bpf is not None:
                    via = [line.json() for line in replay(rec, cfg, backend=bpf)]  # type: ignore[arg-type]
                    assert via == pure, "the kernel filter and the reference disagree"
                replayed += 1
        except AssertionError as e:
            raise AssertionError(f"case {i} (input {data[:300]!r}...): {e}") from None
    print(
        f"\nfuzz captures: {N_MUTANTS} inputs, {refused} refused, {replayed} replayed "
        f"({'pure + via BPF' if bpf else 'pure only: no BPF here'}), "
        f"{time.monotonic() - t0:.1f} s"
    )


N_GENERATED = 400
DEVICES = ["3 1209 a001", "3 1209 a002", "5 1209 a003", "3 28bd 0905", "3 1234 5678"]


def _payloads() -> list[bytes]:
    out = []
    for p in sorted((ROOT / "tests/captures").glob("*.hid")):
        for line in p.read_text().splitlines():
            if line.startswith("E:"):
                out.append(bytes.fromhex("".join(line.split()[3:])))
    return out


def generated(rng: random.Random, pool: list[bytes]) -> str:
    """A well-formed capture of 1-4 devices: real reports, lightly changed, some longer than
    a ring record (128 bytes), at random (often equal) times."""
    text = ""
    for d in range(rng.randint(1, 4)):
        text += f"D: {d}\nN: fuzz {d}\nI: {rng.choice(DEVICES)}\n"
        t_us = 0
        for _ in range(rng.randint(1, 40)):
            data = bytearray(rng.choice(pool))
            if rng.random() < 0.3:
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.1:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
            t_us += rng.choice([0, 1, 500, 5000, 20000, 3_000_000])
            text += (
                f"E: {t_us // 1_000_000:06d}.{t_us % 1_000_000:06d} {len(data)} {data.hex(' ')}\n"
            )
    return text


def test_generated_captures_replay_the_same_through_the_kernel_filter(
    bpf: object | None,
) -> None:
    cfg = load([ROOT / "config"])
    rng = random.Random(SEED)
    pool = _payloads()
    lines = 0
    t0 = time.monotonic()
    for i in range(N_GENERATED):
        text = generated(rng, pool)
        with bounded(CASE_LIMIT_S, f"generated case {i}"):
            rec = parse(text, f"generated-{i}.hid")
            pure = [line.json() for line in replay(rec, cfg)]
            if bpf is not None:
                via = [line.json() for line in replay(rec, cfg, backend=bpf)]  # type: ignore[arg-type]
                assert via == pure, f"case {i}: kernel filter and reference disagree:\n{text}"
        lines += len(pure)
    print(
        f"\nfuzz generated captures: {N_GENERATED} captures, {lines} trace lines "
        f"({'pure + via BPF' if bpf else 'pure only'}), {time.monotonic() - t0:.1f} s"
    )


@pytest.mark.parametrize("via_bpf", [False, True])
def test_mutated_captures_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bpf: object | None, via_bpf: bool
) -> None:
    if via_bpf and bpf is None:
        pytest.skip("BPF filter unavailable here")
    p = tmp_path / "fuzz.hid"
    flags = ["--via-bpf"] if via_bpf else []
    for i, data in corpus(_seeds(), CAPTURE_TOKENS, 40, seed=12):
        p.write_bytes(data)
        with bounded(CASE_LIMIT_S * 3, f"case {i}"):
            rc = main(["replay", *flags, "--config", str(ROOT / "config"), str(p)])
        err = capsys.readouterr().err
        assert rc in (0, 1), (i, rc, err)
        if rc:
            assert re.match(rf"^hidbpfd replay[^:]*: {re.escape(str(p))}:\d+: .+ — .+$", err), err
