"""The VM tier: boot a HID-capable kernel under qemu (virtme-ng) and run one command inside it.

The host kernel has no uhid, uinput, hidraw or HID-BPF, so the device tests and the benchmark
run in a throw-away guest instead. ``hidbpfd vm -- CMD...`` (see :func:`main`) is the way in;
it boots once per command, so one boot serves a whole test suite::

    hidbpfd vm -- .venv/bin/python -m pytest tests/device

What happens, in order:

1. :func:`hidbpfd.vm.setup.ensure_setup` (idempotent, cached, locked) makes the host ready and
   fetches the test kernel through a private apt configuration (:mod:`hidbpfd.vm.setup`);
2. :func:`hidbpfd.vm.boot.run_in_vm` boots it with ``vng --run`` (the command line, the guest's
   script and environment built by :mod:`hidbpfd.vm.command`), waits for the guest's ready
   line and runs CMD inside (:mod:`hidbpfd.vm.boot`).
"""

from hidbpfd.vm.boot import BOOT_TIMEOUT_S, main, run_in_vm
from hidbpfd.vm.command import (
    GUEST_MODULES,
    READY_MARKER,
    VmArgs,
    guest_env,
    guest_script,
    kvm_usable,
    parse_args,
    vng_command,
)
from hidbpfd.vm.setup import (
    VmAssets,
    VmError,
    cache_dir,
    check_kernel_config,
    choose_kernel,
    ensure_setup,
    is_static_elf,
    kernel_dependencies,
)

__all__ = [
    "BOOT_TIMEOUT_S",
    "GUEST_MODULES",
    "READY_MARKER",
    "VmArgs",
    "VmAssets",
    "VmError",
    "cache_dir",
    "check_kernel_config",
    "choose_kernel",
    "ensure_setup",
    "guest_env",
    "guest_script",
    "is_static_elf",
    "kernel_dependencies",
    "kvm_usable",
    "main",
    "parse_args",
    "run_in_vm",
    "vng_command",
]
