"""setuptools hook for hidbpfd's wheel (the metadata is in pyproject.toml).

A wheel must run on a machine without clang, so it carries the prebuilt CO-RE BPF objects and
the service files; ``build_py`` here makes sure of both:

- it refuses to build when a ``hidbpfd/kernel/bpf/*.bpf.o`` is missing, or older than the C
  sources and headers it is built from, saying how to build them
  (``python -m hidbpfd.kernel.bpf.build``, or ``tools/wheel`` which does it all);
- it copies the top-level ``units/`` (the one source of the unit, the sysusers file and the
  udev rule) into the package as ``hidbpfd/service/units/``, where ``hidbpfd install-service``
  finds them in an installed wheel.

Editable installs (``pip install -e``, as ``tools/setup`` does) skip both: there the objects
are built in place afterwards, and ``install-service`` reads ``units/`` of the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BPF_DIR = HERE / "hidbpfd" / "kernel" / "bpf"
UNITS_DIR = HERE / "units"
UNIT_FILES = ("hidbpfd.service", "hidbpfd.sysusers", "60-hidbpfd.rules", "82-hidbpfd-pins.rules")
HOW = (
    "build them first: python -m hidbpfd.kernel.bpf.build (needs clang, llvm, bpftool and "
    "libbpf-dev; tools/setup installs them), or run tools/wheel, which builds them and the wheel"
)


def bpf_object_problems(bpf_dir: Path = BPF_DIR) -> list[str]:
    """What is wrong with the prebuilt objects in ``bpf_dir``: missing or stale ones."""
    problems = []
    headers = sorted(bpf_dir.glob("*.h"))
    for src in sorted(bpf_dir.glob("*.bpf.c")):
        text = src.read_text()
        names = [src.name.removesuffix(".bpf.c") + ".bpf.o"]
        if '#include "wq_compat.h"' in text:
            names.append(src.name.removesuffix(".bpf.c") + ".wq_impl.bpf.o")
        newest = max([src, *headers], key=lambda p: p.stat().st_mtime)
        for name in names:
            obj = bpf_dir / name
            if not obj.exists():
                problems.append(f"{obj.relative_to(HERE)} is missing")
            elif obj.stat().st_mtime < newest.stat().st_mtime:
                problems.append(f"{obj.relative_to(HERE)} is older than {newest.relative_to(HERE)}")
    if not problems and not any(bpf_dir.glob("*.bpf.c")):
        problems.append(f"no *.bpf.c in {bpf_dir}")
    return problems


class BuildPy(build_py):
    """build_py that checks the BPF objects and brings the service files in."""

    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)
        if not editable:
            if problems := bpf_object_problems():
                raise SystemExit(
                    "hidbpfd: refusing to build a wheel without up-to-date BPF objects: "
                    + "; ".join(problems)
                    + ". "
                    + HOW
                )
            missing = [n for n in UNIT_FILES if not (UNITS_DIR / n).is_file()]
            if missing:
                raise SystemExit(f"hidbpfd: units/ lacks {', '.join(missing)}")
        super().run()
        if not editable:
            target = Path(self.build_lib) / "hidbpfd" / "service" / "units"
            target.mkdir(parents=True, exist_ok=True)
            for name in UNIT_FILES:
                shutil.copyfile(UNITS_DIR / name, target / name)


setup(cmdclass={"build_py": BuildPy})
