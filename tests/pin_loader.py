"""A separate loader, the way udev-hid-bpf loads a HID-BPF object: not hidbpfd.

    python tests/pin_loader.py OBJ.bpf.o SYSNAME ROOT

Opens OBJ, writes the device's hid_id into its ``hid_bpf_ops`` struct_ops, loads it, registers
the struct_ops through a BPF link, and pins the link and every map under
``ROOT/<device>/<object>/`` — the layout udev-hid-bpf uses under /sys/fs/bpf/hid: ``<device>``
is SYSNAME with ``:`` and ``.`` made ``_`` (a bpffs takes no dots), ``<object>`` OBJ's name
without ``.bpf.o``, dots made ``_``. Then it exits: the pinned link keeps the program
attached, the pinned maps keep its request ring reachable. Prints the pin directory.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from hidbpfd.kernel import libbpf as lb


def main(obj_path: str, sysname: str, root: str) -> int:
    hid_id = int(sysname.rsplit(".", 1)[1], 16)
    image = Path(obj_path).read_bytes()
    probe = lb.BpfObject.open_mem(image)
    try:
        (ops,) = [n for n, m in probe.maps.items() if m.type == lb.BPF_MAP_TYPE_STRUCT_OPS]
    finally:
        probe.close()
    # struct hid_bpf_ops { int hid_id; ... }: the device this instance attaches to
    obj = lb.BpfObject.open_mem(lb.elf_patch(image, ops, 0, struct.pack("<i", hid_id)))
    obj.map(ops).set_map_flags(lb.BPF_F_LINK)
    obj.load()
    link = obj.map(ops).attach_struct_ops()
    name = Path(obj_path).name.removesuffix(".bpf.o").replace(".", "_")
    d = Path(root) / sysname.replace(":", "_").replace(".", "_") / name
    d.mkdir(parents=True, exist_ok=True)
    lb.obj_pin(link.fd, str(d / ops))
    for mname, m in obj.maps.items():
        if m.type == lb.BPF_MAP_TYPE_STRUCT_OPS or mname.startswith("."):
            continue  # the struct_ops is pinned as its link; .rodata/.bss are internal
        lb.obj_pin(m.fd, str(d / mname))
    print(d)
    sys.stdout.flush()
    os._exit(0)  # no cleanup: what stays is what the pins hold


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
