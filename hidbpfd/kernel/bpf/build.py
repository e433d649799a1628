"""Build the BPF objects: ``python -m hidbpfd.kernel.bpf.build [--btf PATH] [--out-dir DIR]``.

Run by developers and packagers (never by the daemon, which loads the prebuilt objects).

1. ``vmlinux.h`` from a kernel's BTF (default: the running kernel's
   ``/sys/kernel/btf/vmlinux``) with ``bpftool btf dump ... format c``, into ``build/``
   next to this file (never committed).
2. For each HID type our programs use, define ``HIDBPFD_HAVE_<kind>_<name>`` when that
   vmlinux.h has it; ``hid_compat.h`` declares the others with ``preserve_access_index``
   so CO-RE resolves them by name in the loading kernel's BTF. The objects therefore load
   on kernels with and without HID whatever machine built them.
3. ``clang -O2 -g -target bpf -mcpu=v3`` every ``*.bpf.c`` here into ``*.bpf.o`` next to
   it (package data). ``-mcpu=v3`` for the atomic and/or on the armed mask (Linux 5.12+).
   Sources using bpf_wq are also built as ``*.wq_impl.bpf.o`` for kernels before 7.0
   (``wq_compat.h``).
4. ``llvm-strip -g``: drops the DWARF (650 KB -> 40 KB) and keeps ``.BTF``/``.BTF.ext``,
   which is all libbpf and the verifier use (line info included).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

log = logging.getLogger("hidbpfd.kernel.bpf.build")

SRC_DIR: Final = Path(__file__).resolve().parent
DEFAULT_BTF: Final = Path("/sys/kernel/btf/vmlinux")

HID_TYPES: Final[tuple[tuple[str, str], ...]] = (
    ("enum", "hid_report_type"),
    ("enum", "hid_class_request"),
    ("struct", "hid_device"),
    ("struct", "hid_bpf_ctx"),
    ("struct", "hid_bpf_ops"),
)
"""The types ``hid_compat.h`` can supply; each is used from vmlinux.h when it is there."""


class BuildError(RuntimeError):
    """A build step failed; the message names the step and carries the tool's stderr."""


def _run(argv: Sequence[str], what: str) -> str:
    log.debug("%s: %s", what, " ".join(argv))
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError(
            f"{what}: {argv[0]} not found. Try: apt install clang llvm bpftool libbpf-dev"
        ) from e
    if res.returncode != 0:
        raise BuildError(f"{what} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def generate_vmlinux_h(btf: Path, out: Path) -> None:
    """Write vmlinux.h for ``btf``, rewriting it only when it changed (keeps make-like speed)."""
    text = _run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"], "bpftool btf dump")
    if not out.exists() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def hid_type_defines(vmlinux_h: str) -> list[str]:
    """``-DHIDBPFD_HAVE_STRUCT_hid_device`` etc. for the HID types ``vmlinux_h`` defines."""
    defines = []
    for kind, name in HID_TYPES:
        if re.search(rf"^{kind} {name} {{", vmlinux_h, re.MULTILINE):
            defines.append(f"-DHIDBPFD_HAVE_{kind.upper()}_{name}")
    return defines


def compile_object(src: Path, out: Path, include_dir: Path, defines: Sequence[str]) -> None:
    """Compile one ``.bpf.c`` into ``out`` with clang."""
    _run(
        [
            "clang",
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-mcpu=v3",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
            # Linux 6.19+ is built with -fms-extensions: its BTF has members like
            # "struct socket_alloc;" (an embedded anonymous struct), which bpftool emits as is
            "-fms-extensions",
            "-Wno-microsoft-anon-tag",
            *defines,
            "-I",
            str(include_dir),
            "-I",
            str(SRC_DIR),
            "-c",
            str(src),
            "-o",
            str(out),
        ],
        f"clang {src.name}",
    )


def build(btf: Path = DEFAULT_BTF, out_dir: Path = SRC_DIR) -> list[Path]:
    """Generate vmlinux.h and compile every ``*.bpf.c``; returns the objects written."""
    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found. Try: apt install clang llvm bpftool libbpf-dev")
    build_dir = SRC_DIR / "build"
    vmlinux_h = build_dir / "vmlinux.h"
    generate_vmlinux_h(btf, vmlinux_h)
    defines = hid_type_defines(vmlinux_h.read_text())
    log.info("HID types found in %s: %s", btf, " ".join(defines) or "none")
    objects = []
    for src in sorted(SRC_DIR.glob("*.bpf.c")):
        for suffix, extra in variants(src):
            out = out_dir / (src.name.removesuffix(".bpf.c") + suffix)
            compile_object(src, out, build_dir, [*defines, *extra])
            strip = shutil.which("llvm-strip")
            if strip:
                _run([strip, "-g", str(out)], f"llvm-strip {out.name}")
            else:
                log.warning("llvm-strip not found: %s keeps its DWARF (apt install llvm)", out.name)
            objects.append(out)
    return objects


WQ_IMPL_SUFFIX: Final = ".wq_impl.bpf.o"


def variants(src: Path) -> list[tuple[str, list[str]]]:
    """(object suffix, extra defines) to build ``src`` as: a source using ``wq_compat.h`` is
    built once per calling convention of the bpf_wq callback kfunc (see that header)."""
    out: list[tuple[str, list[str]]] = [(".bpf.o", [])]
    if '#include "wq_compat.h"' in src.read_text():
        out.append((WQ_IMPL_SUFFIX, ["-DHIDBPFD_WQ_CALLBACK_IMPL"]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: build, print the objects, exit 1 with the error on failure."""
    p = argparse.ArgumentParser(prog="python -m hidbpfd.kernel.bpf.build", description=__doc__)
    p.add_argument("--btf", type=Path, default=DEFAULT_BTF, help="kernel BTF for vmlinux.h")
    p.add_argument("--out-dir", type=Path, default=SRC_DIR, help="where the .bpf.o go")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        for obj in build(args.btf, args.out_dir):
            print(obj)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
