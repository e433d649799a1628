"""Leave what a pre-link hidbpfd left after a crash: a HID-BPF struct_ops registered by a map
update (no BPF link), still holding a device's reports, with no process behind it.

``python -m tests.device.old_style {filter|engine} HID_SYSFS_NAME CONFIG_DIR`` attaches the
device's policies the way older versions did (the filter's ``hidbpfd_ops`` or the in-kernel
engine's ``engine_ops``, map created without BPF_F_LINK, registered by libbpf 1.1's
``bpf_map__attach_struct_ops``), prints ``attached`` and exits without detaching. Used by
tests/device/test_crash.py to check that the daemon removes it at start.
"""

from __future__ import annotations

import os
import sys

from hidbpfd.config import load
from hidbpfd.engine.dispatch import build_table
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.engine import KernelEngine
from hidbpfd.kernel.source import BpfEventSource
from hidbpfd.model import DeviceId


class _Registration:
    """What older versions kept: libbpf 1.1's struct_ops 'link' (the map fd; detaching deletes
    the map element). Never destroyed here: the process exits with it registered."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def destroy(self) -> None:
        raise AssertionError("an old-style orphan is never detached by its maker")


def _register(self: lb.Map) -> _Registration:
    lib = lb.libbpf()
    ptr = lib.check_ptr(
        "bpf_map__attach_struct_ops", lib.fn("bpf_map__attach_struct_ops")(self._ptr)
    )
    return _Registration(lib.fn("bpf_link__fd")(ptr))


def main(argv: list[str]) -> int:
    kind, hid_name, cfg_dir = argv
    bus, vendor, product = hid_name.split(":")  # e.g. 0003:28BD:0905.000A
    dev = DeviceId(int(bus, 16), int(vendor, 16), int(product.split(".")[0], 16), hid_id=hid_name)
    bindings = load([cfg_dir]).bindings_for(dev)
    assert bindings, f"no policy for {dev}"
    # the old way: no BPF_F_LINK on the map, a map update registers it
    lb.Map.set_map_flags = lambda self, flags: None  # type: ignore[method-assign]
    lb.Map.attach_struct_ops = _register  # type: ignore[assignment]
    if kind == "filter":
        src = BpfEventSource(lambda rec: None)
        src.open()
        table, _, _ = build_table(bindings)
        src.set_rules(dev.kernel_id, table)
        how = src.attach_device(dev.kernel_id, modes=("hid_bpf",))
        assert how == "hid_bpf", how
    else:
        KernelEngine().attach(dev.kernel_id, bindings, device=dev)
    print("attached", flush=True)
    os._exit(0)  # like a crash: no clean-up of any kind


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
