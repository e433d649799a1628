"""``[[program]]`` in policy files: shape, paths relative to the file, errors with FILE:LINE: key,
the object check passed in by ``check`` and the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.config import load
from hidbpfd.model import DeviceId

HEAD = '[device]\nbus = "usb"\nvendor = 0x1209\nproduct = 0xa001\n\n'
NAME = "50-1209__a001-macro.toml"


def write(d: Path, body: str, name: str = NAME) -> Path:
    p = d / name
    p.write_text(HEAD + body)
    return p


def test_a_file_with_programs_only(tmp_path: Path) -> None:
    (tmp_path / "m.bpf.o").write_bytes(b"\x7fELF")
    p = write(tmp_path, '[[program]]\nobject = "m.bpf.o"\n')
    cfg = load([tmp_path])
    assert cfg.errors == []
    (pf,) = cfg.files
    (ref,) = pf.programs
    assert (ref.object, ref.path, ref.index) == ("m.bpf.o", str(tmp_path / "m.bpf.o"), 0)
    assert ref.label == f"{NAME}#program[0] m.bpf.o"
    assert pf.bindings == ()
    dev = DeviceId(3, 0x1209, 0xA001, "kbd")
    assert cfg.programs_for(dev) == [ref] and cfg.bindings_for(dev) == []
    assert p.exists()


def test_programs_beside_policies_and_in_a_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "objs").mkdir()
    (tmp_path / "objs" / "a.bpf.o").write_bytes(b"\x7fELF")
    (tmp_path / "b.bpf.o").write_bytes(b"\x7fELF")
    write(
        tmp_path,
        '[[policy]]\ntype = "defer"\nmatch = "01"\ndelay_ms = 5\n\n'
        '[[program]]\nobject = "objs/a.bpf.o"\n\n[[program]]\nobject = "'
        + str(tmp_path / "b.bpf.o")
        + '"\n',
    )
    cfg = load([tmp_path])
    assert cfg.errors == []
    (pf,) = cfg.files
    assert [r.path for r in pf.programs] == [
        str(tmp_path / "objs/a.bpf.o"),
        str(tmp_path / "b.bpf.o"),
    ]
    assert len(pf.bindings) == 1


@pytest.mark.parametrize(
    ("body", "line", "key", "what"),
    [
        ("[[program]]\n", 6, "program[0]", "missing 'object'"),
        (
            '[[program]]\nobject = "gone.bpf.o"\n',
            7,
            "program[0].object",
            "gone.bpf.o: no such file",
        ),
        ("[[program]]\nobject = 3\n", 7, "program[0].object", "object must be a path"),
        (
            '[[program]]\nobject = "m.bpf.o"\nobjekt = "x"\n',
            8,
            "program[0].objekt",
            "unknown key 'objekt'",
        ),
        (
            '[[program]]\nobject = "m.bpf.o"\n[[program]]\nobject = "m.bpf.o"\n',
            9,
            "program[1].object",
            "already program[0]",
        ),
        ('[[programs]]\nobject = "m.bpf.o"\n', 6, "programs", "unknown top-level key"),
    ],
)
def test_errors_are_located(tmp_path: Path, body: str, line: int, key: str, what: str) -> None:
    (tmp_path / "m.bpf.o").write_bytes(b"\x7fELF")
    p = write(tmp_path, body)
    cfg = load([tmp_path])
    assert cfg.files == []
    msgs = [str(e) for e in cfg.errors]
    assert any(m.startswith(f"{p}:{line}: {key}: ") and what in m for m in msgs), msgs


def test_no_policy_and_no_program_is_still_an_error(tmp_path: Path) -> None:
    write(tmp_path, "")
    (err,) = load([tmp_path]).errors
    assert "no [[policy]] tables" in err.what and "[[program]]" in err.hint


def test_the_object_check_is_passed_in(tmp_path: Path) -> None:
    (tmp_path / "m.bpf.o").write_bytes(b"\x7fELF")
    p = write(tmp_path, '[[program]]\nobject = "m.bpf.o"\n')
    seen: list[str] = []

    def inspect(path: str) -> str | None:
        seen.append(path)
        return "has no struct_ops of type struct hid_bpf_ops"

    cfg = load([tmp_path], inspect=inspect)
    assert seen == [str(tmp_path / "m.bpf.o")]
    (err,) = cfg.errors
    assert str(err).startswith(f"{p}:7: program[0].object: has no struct_ops")
