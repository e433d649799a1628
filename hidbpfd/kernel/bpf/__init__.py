"""The BPF side of hidbpfd: C sources, the shared layout header and the prebuilt objects.

``hidbpfd.h`` is the one definition of the ring-buffer record and rule-table layout;
``hidbpfd.bpf.o`` (maps, feeder, tracing fallback, injectors) and ``hidbpfd_ops.bpf.o``
(the HID-BPF struct_ops, one instance per device) are built by ``python -m
hidbpfd.kernel.bpf.build`` and shipped as package data. Loaded by hidbpfd.kernel.source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

BPF_DIR: Final = Path(__file__).resolve().parent
MAIN_OBJECT: Final = BPF_DIR / "hidbpfd.bpf.o"
OPS_OBJECT: Final = BPF_DIR / "hidbpfd_ops.bpf.o"
HEADER: Final = BPF_DIR / "hidbpfd.h"
