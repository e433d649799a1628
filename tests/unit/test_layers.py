"""Clean layers: model, policies, config and the pure engine import nothing from backends, the
daemon or I/O libraries (STYLE.md rule 7). Checked on the source, so a lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "hidbpfd"
PURE = [
    "model.py",
    "filter.py",
    "clock.py",
    "scheduler.py",
    "dispatch.py",
    "recording.py",
    "hid_descriptor.py",
    "replay.py",
    *[f"policies/{p.name}" for p in (PKG / "policies").glob("*.py")],
    *[f"config/{p.name}" for p in (PKG / "config").glob("*.py")],
]
FORBIDDEN = (
    "hidbpfd.backends",
    "hidbpfd.daemon",
    "hidbpfd.cli",
    "hidbpfd.vm",
    "hidbpfd.probe",
    "hidbpfd.bench",
    "asyncio",
    "ctypes",
    "socket",
    "pyudev",
    "evdev",
    "hid",
    "systemd",
    "subprocess",
)


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("rel", sorted(PURE))
def test_pure_module_imports(rel: str) -> None:
    bad = sorted(
        m for m in imports(PKG / rel) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    )
    assert not bad, f"hidbpfd/{rel} imports {bad}"


def test_the_check_sees_imports() -> None:
    """Guard the guard: the scanner does find an import where there is one."""
    assert "hidbpfd.model" in imports(PKG / "filter.py")
