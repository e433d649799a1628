"""``hidbpfd compile SRC.bpf.c [-o OBJ] [--engine userspace|kernel]``: a HID-BPF program that
uses ``<hidbpfd/api.h>``, compiled against this machine's kernel.

- ``vmlinux.h`` comes from the kernel's BTF (``/sys/kernel/btf/vmlinux``) through ``bpftool
  btf dump``, cached per BTF content under ``$XDG_CACHE_HOME/hidbpfd`` (``~/.cache/hidbpfd``);
- the include path has the package's ``include/`` dir (``<hidbpfd/api.h>``) and, with it, the
  dir of the cached vmlinux.h; libbpf's headers (``<bpf/bpf_helpers.h>``) come from the system
  (``apt install libbpf-dev``);
- ``HIDBPFD_HAVE_*`` say which HID types that vmlinux.h has (``hid_compat.h`` supplies the
  others); ``--engine kernel`` adds ``-DHIDBPFD_ENGINE_KERNEL``, and
  ``-DHIDBPFD_WQ_CALLBACK_IMPL`` where the kernel has only the pre-7.0 bpf_wq callback kfunc
  (``bpf_wq_set_callback_impl``; see ``wq_compat.h``).

clang's diagnostics go to stderr as clang prints them (``FILE:LINE:COL: error: ...``); a
failure is a :class:`CompileError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.bpf.build import DEFAULT_BTF, hid_type_defines

INCLUDE_DIR: Final = BPF_DIR / "include"
ENGINES: Final = ("userspace", "kernel")
HINT: Final = "Try: apt install clang llvm bpftool libbpf-dev"


class CompileError(RuntimeError):
    """The program did not compile; the message says why (clang's own lines went to stderr)."""


def cache_dir() -> Path:
    """Where generated vmlinux.h files are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hidbpfd"


def vmlinux_h(btf: Path = DEFAULT_BTF, cache: Path | None = None) -> Path:
    """The cached vmlinux.h of ``btf`` (generated on first use); CompileError if impossible."""
    try:
        digest = hashlib.sha256(btf.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise CompileError(f"cannot read the kernel BTF {btf}: {e.strerror}") from e
    out = (cache or cache_dir()) / f"vmlinux-{digest}" / "vmlinux.h"
    if out.exists():
        return out
    if shutil.which("bpftool") is None:
        raise CompileError(f"bpftool not found. {HINT}")
    res = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(btf), "format", "c"],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise CompileError(f"bpftool btf dump {btf} failed: {res.stderr.strip()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(res.stdout)
    tmp.replace(out)  # atomic: two compiles at once never read half a file
    return out


def default_output(src: Path) -> Path:
    """``prog.bpf.c`` -> ``prog.bpf.o`` (next to it)."""
    name = src.name.removesuffix(".c").removesuffix(".bpf")
    return src.with_name(name + ".bpf.o")


def old_wq_callback(btf: Path) -> bool:
    """The kernel of ``btf`` has ``bpf_wq_set_callback_impl`` and not ``bpf_wq_set_callback``."""
    from hidbpfd.kernel import libbpf as lb

    try:
        b = lb.Btf(str(btf))
    except OSError:
        return False
    try:
        new = b.find("bpf_wq_set_callback", lb.BTF_KIND_FUNC)
        return not new and bool(b.find("bpf_wq_set_callback_impl", lb.BTF_KIND_FUNC))
    finally:
        b.free()


def clang_argv(
    src: Path,
    out: Path,
    vmlinux: Path,
    engine: str,
    extra: Sequence[str] = (),
    *,
    wq_impl: bool = False,
) -> list[str]:
    """The clang command line for ``src`` (exposed for tests and ``--verbose``)."""
    defines = hid_type_defines(vmlinux.read_text())
    if engine == "kernel":
        defines.append("-DHIDBPFD_ENGINE_KERNEL")
        if wq_impl:
            defines.append("-DHIDBPFD_WQ_CALLBACK_IMPL")
    return [
        "clang",
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-mcpu=v3",
        "-D__TARGET_ARCH_x86",
        "-Wall",
        "-Wno-unused-function",
        "-fms-extensions",
        "-Wno-microsoft-anon-tag",
        "-fdiagnostics-color=never",
        *defines,
        "-I",
        str(vmlinux.parent),
        "-I",
        str(INCLUDE_DIR),
        *extra,
        "-c",
        str(src),
        "-o",
        str(out),
    ]


def compile_program(
    src: Path,
    out: Path | None = None,
    *,
    engine: str = "userspace",
    btf: Path = DEFAULT_BTF,
    cache: Path | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Compile ``src`` into ``out`` (default: next to it); returns ``out``. clang's messages
    pass through to stderr; CompileError on failure."""
    if engine not in ENGINES:
        raise CompileError(f"unknown engine {engine!r}: use userspace or kernel")
    if not src.is_file():
        raise CompileError(f"{src}: no such file")
    if shutil.which("clang") is None:
        raise CompileError(f"clang not found. {HINT}")
    out = out or default_output(src)
    wq_impl = engine == "kernel" and old_wq_callback(btf)
    argv = clang_argv(src, out, vmlinux_h(btf, cache), engine, extra, wq_impl=wq_impl)
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.stderr:
        sys.stderr.write(res.stderr)
    if res.returncode != 0:
        raise CompileError(f"clang failed ({res.returncode}): {src} not compiled")
    strip = shutil.which("llvm-strip")
    if strip:  # keeps .BTF/.BTF.ext (line info for the verifier), drops DWARF
        subprocess.run([strip, "-g", str(out)], capture_output=True, check=False)
    return out
