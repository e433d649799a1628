"""The wheel (issue 14): built from a copy of this checkout with pip, it carries every prebuilt
BPF object and the service files (byte for byte the top-level ``units/``), so the target
needs no clang; without an object, or with one older than its sources, the build refuses and
says how to build them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BPF = ROOT / "hidbpfd" / "kernel" / "bpf"
UNIT_FILES = ("hidbpfd.service", "hidbpfd.sysusers", "60-hidbpfd.rules")
TOP_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")

pytestmark = pytest.mark.skipif(
    not list(BPF.glob("*.bpf.o")),
    reason="no BPF objects built here (tools/setup builds them)",
)


def source_copy(dst: Path) -> Path:
    """What a wheel is built from: the package, units/ and the build files of this checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(ROOT / "hidbpfd", dst / "hidbpfd", ignore=ignore)
    shutil.copytree(ROOT / "units", dst / "units")
    for name in TOP_FILES:
        shutil.copy2(ROOT / name, dst / name)
    return dst


def build_wheel(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # no build isolation: the test extra brings setuptools>=77, and no network is needed
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )


def test_wheel_carries_objects_and_units(tmp_path: Path) -> None:
    src = source_copy(tmp_path / "src")
    done = build_wheel(src, tmp_path / "dist")
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("hidbpfd-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        objects = sorted(p.name for p in BPF.glob("*.bpf.o"))
        for name in objects:
            member = f"hidbpfd/kernel/bpf/{name}"
            assert member in names, f"{member} not in the wheel"
            assert z.read(member) == (BPF / name).read_bytes()
        for name in UNIT_FILES:
            member = f"hidbpfd/service/units/{name}"
            assert z.read(member) == (ROOT / "units" / name).read_bytes(), member
        assert not any("vmlinux.h" in n for n in names), "the build's vmlinux.h is not shipped"
    # one per source, and the wq_impl variant of those using bpf_wq
    assert {"hidbpfd.bpf.o", "hidbpfd_ops.bpf.o", "engine.bpf.o"} <= set(objects)


def test_build_refuses_without_an_object(tmp_path: Path) -> None:
    src = source_copy(tmp_path / "src")
    (src / "hidbpfd/kernel/bpf/hidbpfd_ops.bpf.o").unlink()
    done = build_wheel(src, tmp_path / "dist")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "hidbpfd/kernel/bpf/hidbpfd_ops.bpf.o is missing" in out, out
    assert "python -m hidbpfd.kernel.bpf.build" in out, out
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_build_refuses_stale_objects(tmp_path: Path) -> None:
    src = source_copy(tmp_path / "src")
    header = src / "hidbpfd/kernel/bpf/hidbpfd.h"
    newer = max(p.stat().st_mtime for p in (src / "hidbpfd/kernel/bpf").glob("*.bpf.o")) + 10
    os.utime(header, (newer, newer))
    done = build_wheel(src, tmp_path / "dist")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "is older than hidbpfd/kernel/bpf/hidbpfd.h" in out, out
