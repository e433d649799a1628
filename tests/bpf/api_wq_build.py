"""Build test programs that use ``<hidbpfd/api.h>`` with ``-DHIDBPFD_ENGINE_KERNEL``.

Shared by the host test (tests/bpf/test_api_wq_build.py: it compiles) and the VM test
(tests/device/test_api_wq.py: it runs). vmlinux.h comes from the running kernel's BTF, with
``hidbpfd.kernel.bpf.build``'s generator; the HID types a kernel's vmlinux.h lacks come from
``programs/hid_types.h`` (CO-RE finds them in the loading kernel's BTF).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Final

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf.build import (
    DEFAULT_BTF,
    compile_object,
    generate_vmlinux_h,
    hid_type_defines,
)

HERE: Final = Path(__file__).resolve().parent
PROGRAMS: Final = HERE / "programs"
API_INCLUDE: Final = HERE.parents[1] / "hidbpfd" / "kernel" / "bpf" / "include"
DEMO: Final = PROGRAMS / "api_wq_demo.bpf.c"


def missing_tools() -> str | None:
    """Why programs cannot be built here, or None."""
    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt install clang llvm bpftool)"
    if not DEFAULT_BTF.exists():
        return f"no kernel BTF at {DEFAULT_BTF}"
    return None


def build(src: Path, out_dir: Path, *defines: str) -> Path:
    """Compile ``src`` for the in-kernel engine against this kernel's vmlinux.h; returns the
    object. Raises :class:`hidbpfd.kernel.bpf.build.BuildError` with clang's errors."""
    inc = out_dir / "include"
    vmlinux = inc / "vmlinux.h"
    generate_vmlinux_h(DEFAULT_BTF, vmlinux)
    out = out_dir / (src.name.removesuffix(".bpf.c") + ".bpf.o")
    flags = [*hid_type_defines(vmlinux.read_text()), "-DHIDBPFD_ENGINE_KERNEL", *defines]
    flags += ["-I", str(API_INCLUDE), "-I", str(PROGRAMS)]
    compile_object(src, out, inc, flags)
    return out


def open_for(obj: Path, ops: str, hid_id: int) -> lb.BpfObject:
    """Open ``obj`` with its struct_ops ``ops`` bound to device ``hid_id`` (``hid_id`` is the
    first member of struct hid_bpf_ops; libbpf 1.1 has no skeleton to set it, so it is
    patched in the ELF image) and registered through a link (BPF_F_LINK), as
    hidbpfd.kernel.engine does. The caller loads it."""
    image = lb.elf_patch(obj.read_bytes(), ops, 0, struct.pack("<i", hid_id))
    bpf = lb.BpfObject.open_mem(image)
    bpf.map(ops).set_map_flags(lb.BPF_F_LINK)
    return bpf
