"""The root filesystem of the systemd tier (``hidbpfd vm --systemd``): a Debian 12 system with
systemd as PID 1, built once with mmdebstrap and cached as an ext4 image.

The plain VM tier shares the host's root read-only and runs the command as init's child; a
service needs a system of its own: systemd, udevd, dbus and logind running, ``/etc`` writable
for ``hidbpfd install-service``, pip for the wheel. virtme-ng's ``--systemd`` on the host's root
was measured first and does not boot here: its early init runs ``mkdir -p /lib/modules`` on
the read-only host root (no ``/lib/modules`` on a host without a kernel package), the guest's
init exits and the kernel panics 6.6 s into boot; and even where it boots, it would run the
host's own set of units, and pip and ``systemctl enable`` would meet a read-only ``/usr`` and
``/etc``. So: :func:`ensure_rootfs` builds ``debian12-<key>.img`` (``mmdebstrap --variant=minbase``
with :data:`PACKAGES`, timers and units that only cost boot time masked, ``mkfs.ext4 -d``;
~25 s once here, 311 MB unpacked), and :mod:`hidbpfd.vm.boot` boots it with
``vng --root-disk IMG --rw --systemd`` and qemu's ``-snapshot``, so every boot starts from the
same image and the guest's writes are thrown away.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hidbpfd.vm.setup import (
    DEFAULT_MIRROR,
    MIRROR_ENV,
    VmError,
    _apt_install,
    _locked,
    _run,
    cache_dir,
)

SUITE: Final = "bookworm"
IMAGE_SIZE: Final = "2G"  # sparse; the system takes ~330 MB of it
# Debian 12's own packages for what the service and its tests need: the daemon's runtime
# dependencies come from apt, so ``pip install`` of the wheel fetches nothing.
PACKAGES: Final = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "util-linux",  # rtcwake
    "libcap2-bin",  # getpcaps
    "python3",
    "python3-pip",
    "python3-venv",  # the venv install form
    "pipx",  # and the pipx one
    "python3-pyudev",
    "python3-evdev",
    "python3-systemd",
    "libbpf1",
    "python3-pytest",  # the service tests run in the guest with Debian's python
    "python3-hypothesis",  # tests/conftest.py loads its profile
)
# Units that only cost boot time under emulation (timers for apt, dpkg, e2scrub, fstrim).
MASKED: Final = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "getty@tty1.service",
)
LAYOUT_VERSION: Final = 1  # bump when the customisation below changes: a new image is built


def rootfs_key(mirror: str) -> str:
    """What the image is built from, hashed: a change of it builds a new image."""
    text = "\n".join([SUITE, mirror, *PACKAGES, *MASKED, str(LAYOUT_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def customize(root: Path) -> None:
    """Mask :data:`MASKED` and name the host, in the unpacked system at ``root``."""
    etc = root / "etc/systemd/system"
    for unit in MASKED:
        for wants in etc.glob(f"*.wants/{unit}"):
            wants.unlink()
        link = etc / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "etc/hostname").write_text("hidbpfd-vm\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 hidbpfd-vm\n")


def ensure_rootfs(*, log: Callable[[str], None] = print) -> Path:
    """The cached image, built first if missing (needs root, mmdebstrap and the archive,
    ``$HIDBPFD_VM_MIRROR`` or deb.debian.org).

    Called by :func:`hidbpfd.vm.boot.run_in_vm` for ``--systemd``; takes the set-up lock of
    the cache dir. Images of another key are removed once the new one is there.
    """
    cache = cache_dir()
    with _locked(cache / ".setup.lock"):
        return _ensure_rootfs(cache, os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR, log)


def _ensure_rootfs(cache: Path, mirror: str, log: Callable[[str], None]) -> Path:
    key = rootfs_key(mirror)
    images = cache / "rootfs"
    image = images / f"debian12-{key}.img"
    ready = image.is_file()
    if not ready and os.geteuid() != 0:
        raise VmError(
            f"the systemd tier's root filesystem {image} is not built yet and building it "
            "needs root (mmdebstrap --mode=root): run hidbpfd vm --systemd once as root"
        )
    # qemu-img: virtme-ng asks it the image's format at every boot (else a warning)
    tools = [("qemu-img", "qemu-utils")]
    if not ready:
        tools += [("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")]
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing = [package for tool, package in tools if shutil.which(tool, path=path) is None]
    if missing and os.geteuid() == 0:
        _apt_install(missing, log)
    if ready:
        return image
    images.mkdir(parents=True, exist_ok=True)
    tree = images / f"build-{key}"
    shutil.rmtree(tree, ignore_errors=True)
    log(
        f"hidbpfd vm: building the systemd tier's Debian 12 root filesystem from {mirror} "
        f"(mmdebstrap, once)"
    )
    try:
        _run(
            [
                "mmdebstrap",
                "--mode=root",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(tree),
                mirror,
            ],
            "mmdebstrap",
        )
        customize(tree)
        partial = image.with_suffix(".partial")
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "hidbpfd-root",
                "-d",
                str(tree),
                str(partial),
                IMAGE_SIZE,
            ],
            "mkfs.ext4 -d",
        )
        partial.rename(image)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    for old in images.glob("debian12-*.img"):
        if old != image:
            old.unlink()
    used = image.stat().st_blocks * 512 // 1_000_000
    log(f"hidbpfd vm: root filesystem ready: {image} ({used} MB used)")
    return image
