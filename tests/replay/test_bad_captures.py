"""Malformed captures (issue 11 §2): ``FILE:LINE: what — hint`` and exit 1, for ``replay`` and
``replay --via-bpf`` alike; never a traceback. Table-driven: body -> (line, fragment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidbpfd.cli import main
from hidbpfd.replay.recording import MAX_CAPTURE_BYTES, MAX_EVENT_BYTES

ROOT = Path(__file__).resolve().parents[2]
HEAD = "I: 3 1209 a001\n"  # the macro-key example's device: its rules get installed

CASES: dict[str, tuple[str, int, str]] = {
    "I: bad hex": ("I: 3 zz 0905\n", 1, "bad vendor 'zz'"),
    "I: signed": ("I: 3 +1 0905\n", 1, "bad vendor '+1'"),
    "I: too few": ("I: 3 1234\n", 1, "'I:' needs bus vendor product"),
    "I: bus too big": ("I: 10000 1234 5678\n", 1, "bus 10000 is out of range"),
    "I: vendor over 16 bits": ("I: 5 a0030 0001\n", 1, "vendor a0030 is out of range"),
    "R: bad length": (HEAD + "R: x70 01\n", 2, "bad descriptor length 'x70'"),
    "R: bad byte": (HEAD + "R: 2 05 zz\n", 2, "bad hex byte 'zz'"),
    "R: length mismatch": (HEAD + "R: 3 05 01\n", 2, "descriptor says 3 bytes but has 2"),
    "R: too long": (HEAD + "R: 5000\n", 2, "descriptor length 5000 is out of range"),
    "R: empty": (HEAD + "R:\n", 2, "empty report descriptor"),
    "D: over u32": ("D: 4294967296\n" + HEAD, 1, "device index 4294967296 is out of range"),
    "D: negative": ("D: -1\n" + HEAD, 1, "bad device index '-1'"),
    "D: not a number": ("D: one\n" + HEAD, 1, "bad device index 'one'"),
    "D: 256": ("D: 256\n" + HEAD, 1, "out of range (0..255)"),
    "E: over 65535 bytes": (
        HEAD + "E: 0.000000 70000 " + " ".join(["01"] * 70000) + "\n",
        2,
        "event length 70000 is out of range",
    ),
    "E: over HID_MAX_BUFFER_SIZE": (
        HEAD + f"E: 0.000000 {MAX_EVENT_BYTES + 1} 01\n",
        2,
        "out of range",
    ),
    "E: length mismatch": (HEAD + "E: 0.000000 3 01 02\n", 2, "event says 3 bytes but has 2"),
    "E: bad byte": (HEAD + "E: 0.000000 2 01 100\n", 2, "bad hex byte '100'"),
    "E: 0x byte": (HEAD + "E: 0.000000 1 0x1\n", 2, "bad hex byte '0x1'"),
    "E: bad time": (HEAD + "E: 1e5.0 1 01\n", 2, "bad time '1e5.0'"),
    "E: negative time": (HEAD + "E: -1.0 1 01\n", 2, "bad time '-1.0'"),
    "E: huge time": (HEAD + "E: 99999999999999999999.0 1 01\n", 2, "bad time"),
    "E: no bytes": (HEAD + "E: 0.000000 0\n", 2, "needs a time, a length and bytes"),
    "E: empty event": (HEAD + "E: 0.000000 0 01\n", 2, "an empty event"),
    "E: unicode digits": (HEAD + "E: \u0661.0 1 01\n", 2, "bad time"),
    "not a capture line": (HEAD + "hello world\n", 2, "not a capture line"),
    "NUL byte": (HEAD + "N: a\0b\n", 2, "a NUL byte"),
}


@pytest.fixture(params=["replay", "--via-bpf"])
def mode(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "--via-bpf":
        from hidbpfd.kernel.probe import probe

        if not probe()["feeder"]["ok"]:
            pytest.skip(f"BPF feeder unavailable: {probe()['feeder']['reason']}")
        return ["--via-bpf"]
    return []


def _replay(mode: list[str], path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(["replay", *mode, "--config", str(ROOT / "config"), str(path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_capture(
    name: str, mode: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, line, frag = CASES[name]
    p = tmp_path / "bad.hid"
    p.write_text(body)
    err = _replay(mode, p, capsys)
    assert f"{p}:{line}: " in err and frag in err and " — " in err, err


def test_utf8_error_names_its_line(
    mode: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bad.hid"
    p.write_bytes(HEAD.encode() + b"# ok\nN: caf\xe9\n")
    err = _replay(mode, p, capsys)
    assert f"{p}:3: not UTF-8" in err, err


@pytest.mark.parametrize("kind", ["fifo", "dir", "/dev/zero", "big"])
def test_special_files(
    kind: str, mode: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bad.hid"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "big":
        with p.open("wb") as f:
            f.truncate(MAX_CAPTURE_BYTES + 1)
    else:
        p.symlink_to(kind)
    err = _replay(mode, p, capsys)
    assert f"{p}: " in err and ("not a regular file" in err or "too big" in err), err


def test_many_devices_via_bpf_fill_the_rule_map_without_a_traceback(
    mode: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every index 0..255 is valid; each device gets a table in the kernel's 256-entry map
    p = tmp_path / "many.hid"
    p.write_text(
        "".join(f"D: {i}\nI: 3 1209 a001\nE: 0.{i:06d} 4 01 00 68 00\n" for i in range(256))
    )
    rc = main(["replay", *mode, "--config", str(ROOT / "config"), str(p)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.count('"kind": "inject"') >= 256


@pytest.mark.parametrize(
    ("hid_id", "size", "frag"),
    [(2**32, 4, "not a 32-bit number"), (-1, 4, "not a 32-bit number"), (1, 65536, "65535")],
)
def test_feeder_refuses_what_it_cannot_take(hid_id: int, size: int, frag: str) -> None:
    from hidbpfd.replay.via_bpf import BpfFilterBackend, BpfUnavailable

    try:
        be = BpfFilterBackend.open()
    except BpfUnavailable as e:
        pytest.skip(f"BPF filter unavailable: {e}")
    try:
        with pytest.raises(ValueError, match=frag):
            be.source.feed(hid_id, bytes(size))
    finally:
        be.close()
