"""Setting up the VM tier (:func:`ensure_setup`, idempotent, cached, locked): the host tools,
virtme-ng, and the test kernel.

:func:`ensure_setup` installs what is missing on the host (Debian's qemu-system-x86,
busybox-static, kmod, udev, file; virtme-ng from PyPI), then downloads the newest
``linux-image-<release>-amd64`` of trixie-backports (and the ``linux-binary/-modules/-base``
packages it is split into since 6.19) through a *private* apt configuration (its own sources,
lists, cache and status under the cache dir, so the host's apt sources are untouched), unpacks
them with ``dpkg-deb -x``, runs ``depmod`` and checks the config for ``CONFIG_HID_BPF=y`` & co.
The cache lives in ``$HIDBPFD_VM_CACHE`` or ``/var/lib/hidbpfd/vm`` (not /var/cache, which the
guest sees as an empty tmpfs) and outlives clones of the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CACHE_ENV: Final = "HIDBPFD_VM_CACHE"
# Not /var/cache: virtme-ng-init mounts a tmpfs over /var/cache (and /var/tmp, /var/log, /run)
# in the guest, and the guest must see the kernel's modules at their host path.
DEFAULT_CACHE_DIR: Final = Path("/var/lib/hidbpfd/vm")
GUEST_MASKED: Final = (
    "/var/cache",
    "/var/tmp",
    "/var/log",
    "/var/lib/apt",
    "/var/lib/private",
    "/run",
    "/dev",
    "/proc",
    "/sys",
)
MIRROR_ENV: Final = "HIDBPFD_VM_MIRROR"
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
SUITE: Final = "trixie-backports"
KEYRING: Final = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
VIRTME_NG_VERSION: Final = "1.42"

# Host programs and the Debian package that brings each one.
HOST_TOOLS: Final[Mapping[str, str]] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "depmod": "kmod",
    "modprobe": "kmod",
    "udevadm": "udev",  # without udev on the host virtme-ng loses the guest's exit code
    "file": "file",  # virtme-ng reads the kernel release out of the image with it
    "dpkg-deb": "dpkg",
}
BUSYBOX_PACKAGE: Final = "busybox-static"  # copied into virtme's initramfs: must be static

# What the guest kernel must have; the value is the accepted settings.
REQUIRED_CONFIG: Final[Mapping[str, str]] = {
    "CONFIG_HID_BPF": "y",
    "CONFIG_UHID": "ym",
    "CONFIG_HIDRAW": "ym",
    "CONFIG_INPUT_UINPUT": "ym",
    "CONFIG_HID_GENERIC": "ym",
    "CONFIG_INPUT_EVDEV": "ym",
    "CONFIG_BPF_SYSCALL": "y",
    "CONFIG_DEBUG_INFO_BTF": "y",
}

# Modules for emulated hardware we never use (what udev loads on qemu's q35 without them).
# Under emulation every modprobe udev runs for them costs ~0.1 s of udev settle; blocking them
# cuts settle from 7.9 s to 3.0 s. module_blacklist= makes the kernel refuse them,
_KERNEL_PACKAGE_RE: Final = re.compile(r"^linux-image-((\d+)\.(\d+)(?:\.(\d+))?\+[^-]+-amd64)$")


class VmError(Exception):
    """Setting up or booting the VM failed; the message says what to do. :func:`main` prints it."""


@dataclass(frozen=True, slots=True)
class VmAssets:
    """What :func:`ensure_setup` made ready: the unpacked kernel and the virtme-ng to boot it."""

    release: str
    kernel_image: Path
    modules_dir: Path
    vng: Path
    scripts_dir: Path


# --- pure helpers (unit-tested in tests/unit/test_vm_args.py) -------------------------------


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", release))


def choose_kernel(package_names: Iterable[str]) -> str | None:
    """The newest release among ``linux-image-<release>-amd64`` names, e.g. ``7.3.4+deb13-amd64``.

    Called by :func:`ensure_setup` with ``apt-cache pkgnames linux-image-``; ``-dbg``,
    ``-unsigned``, ``cloud-`` and ``rt-`` flavours and the meta-packages are ignored.
    """
    releases = [
        m.group(1)
        for name in package_names
        if (m := _KERNEL_PACKAGE_RE.match(name.strip()))
        and "-cloud-" not in name
        and "-rt-" not in name
    ]
    return max(releases, key=_version_key, default=None)


def kernel_dependencies(release: str, depends: str) -> list[str]:
    """Packages named in a ``Depends:`` field that belong to this kernel release.

    Called by :func:`ensure_setup` while walking ``linux-image-<release>`` down to the packages
    holding the files: since 6.19 Debian splits the image into ``linux-binary-*`` (vmlinuz),
    ``linux-modules-*`` and ``linux-base-*`` (config); earlier images hold everything.
    """
    names: list[str] = []
    for clause in depends.split(","):
        for alternative in clause.split("|"):
            name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
            if release in name and name not in names:
                names.append(name)
    return names


def check_kernel_config(config_text: str) -> list[str]:
    """Problems with a kernel ``.config`` for our tests; empty when it will do.

    Called by :func:`ensure_setup` on the unpacked kernel's config.
    """
    settings: dict[str, str] = {}
    for line in config_text.splitlines():
        if m := re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line.strip()):
            settings[m.group(1)] = m.group(2)
    problems = []
    for option, accepted in REQUIRED_CONFIG.items():
        value = settings.get(option, "n")
        if value not in accepted:
            wanted = " or ".join(f"{option}={v}" for v in accepted)
            problems.append(f"{option} is {value!r}, need {wanted}")
    return problems


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (statically linked)."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:  # ELFCLASS64 only
                return False
            # Elf64_Ehdr: e_phoff at 32, e_phentsize at 54, e_phnum at 56
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


# --- set-up ----------------------------------------------------------------------------------


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$HIDBPFD_VM_CACHE`` or ``/var/lib/hidbpfd/vm``; refuses a place the guest can't see."""
    path = Path(env.get(CACHE_ENV) or DEFAULT_CACHE_DIR).absolute()
    for masked in GUEST_MASKED:
        if path.is_relative_to(masked):
            raise VmError(
                f"{CACHE_ENV}={path} is under {masked}, which the guest sees as an empty tmpfs; "
                f"pick another directory (default {DEFAULT_CACHE_DIR})"
            )
    return path


def _run(cmd: Sequence[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a set-up step; a failure becomes a :class:`VmError` with the tail of its output."""
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
    except FileNotFoundError as e:
        raise VmError(f"{what}: {cmd[0]} is not installed ({e})") from e
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise VmError(f"{what} failed (exit {done.returncode}): {shlex.join(cmd)}\n{tail}")
    return done  # type: ignore[no-any-return]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apt_install(packages: Sequence[str], log: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise VmError(
            f"missing host packages {' '.join(packages)}; "
            f"try: sudo apt-get install -y --no-install-recommends {' '.join(packages)}"
        )
    log(f"hidbpfd vm: installing {' '.join(packages)} (apt-get)")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        _run(cmd, "installing host packages", env=env)
    except VmError:
        _run(["apt-get", "update"], "apt-get update", env=env)
        _run(cmd, "installing host packages", env=env)


def _which(tool: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories a non-root PATH may lack."""
    return shutil.which(
        tool, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    )


def _ensure_host_tools(log: Callable[[str], None]) -> None:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if _which(tool) is None]
    busybox = shutil.which("busybox")
    if busybox is None or not is_static_elf(Path(busybox)):
        missing.append(BUSYBOX_PACKAGE)
    if not any(
        Path(p).exists() for p in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
    ):
        missing.append("udev")
    if missing:
        _apt_install(sorted(set(missing)), log)


def _ensure_virtme_ng(log: Callable[[str], None]) -> tuple[Path, Path]:
    scripts = Path(sysconfig.get_path("scripts"))
    vng = scripts / "vng"
    try:
        installed = importlib.metadata.version("virtme-ng")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != VIRTME_NG_VERSION or not vng.exists():
        log(f"hidbpfd vm: installing virtme-ng=={VIRTME_NG_VERSION} (pip, into {sys.prefix})")
        _run(
            [sys.executable, "-m", "pip", "install", "-q", f"virtme-ng=={VIRTME_NG_VERSION}"],
            "installing virtme-ng from PyPI",
        )
    if not vng.exists():
        raise VmError(f"virtme-ng installed but {vng} is missing")
    return vng, scripts


class _PrivateApt:
    """apt-get/apt-cache with their own sources, lists, cache and status under ``root``.

    Only :func:`ensure_setup` uses it, to fetch the trixie-backports kernel without touching
    the host's apt configuration.
    """

    def __init__(self, root: Path, mirror: str) -> None:
        self.root = root
        self.mirror = mirror
        for sub in ("lists/partial", "archives/partial", "debs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "sources.list").write_text(
            f"deb [arch=amd64 signed-by={KEYRING}] {mirror} {SUITE} main\n"
        )

    def options(self) -> list[str]:
        r = self.root
        return [
            f"-oDir::State={r}",
            f"-oDir::State::Lists={r}/lists",
            f"-oDir::State::status={r}/status",
            f"-oDir::Cache={r}",
            f"-oDir::Cache::Archives={r}/archives",
            f"-oDir::Etc::SourceList={r}/sources.list",
            "-oDir::Etc::SourceParts=/dev/null",
            "-oDir::Etc::Preferences=/dev/null",
            "-oDir::Etc::PreferencesParts=/dev/null",
            "-oAcquire::Languages=none",
            "-oAPT::Sandbox::User=root",
        ]

    def update(self) -> None:
        try:
            _run(["apt-get", *self.options(), "--error-on=any", "update"], "apt-get update")
        except VmError as e:
            raise VmError(
                f"cannot download the package lists of {self.mirror} {SUITE}; the VM needs "
                f"the Debian archive once, to fetch its kernel (~125 MB). "
                f"Check the network or set ${MIRROR_ENV}.\n{e}"
            ) from e

    def pkgnames(self, prefix: str) -> list[str]:
        done = _run(["apt-cache", *self.options(), "pkgnames", prefix], "apt-cache pkgnames")
        return done.stdout.split()

    def depends(self, package: str) -> str:
        done = _run(
            ["apt-cache", *self.options(), "show", "--no-all-versions", package],
            f"apt-cache show {package}",
        )
        for line in done.stdout.splitlines():
            if line.startswith("Depends:"):
                return line.split(":", 1)[1]
        return ""

    def download(self, packages: Sequence[str]) -> list[Path]:
        debs = self.root / "debs"
        for old in debs.glob("*.deb"):
            old.unlink()
        _run(
            ["apt-get", *self.options(), "download", *packages],
            f"downloading {' '.join(packages)}",
            cwd=debs,
        )
        return sorted(debs.glob("*.deb"))


def _find_one(root: Path, candidates: Sequence[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise VmError(f"unpacked kernel in {root} has no {what} (looked for {', '.join(candidates)})")


def _kernel_layout(root: Path, release: str) -> tuple[Path, Path, Path]:
    """(vmlinuz, modules dir, config) of a kernel unpacked at ``root``, old or new layout."""
    modules = _find_one(
        root, [f"usr/lib/modules/{release}", f"lib/modules/{release}"], "modules directory"
    )
    image = _find_one(
        root, [f"{modules.relative_to(root)}/vmlinuz", f"boot/vmlinuz-{release}"], "vmlinuz"
    )
    config = _find_one(
        root, [f"{modules.relative_to(root)}/config", f"boot/config-{release}"], "config"
    )
    return image, modules, config


def _depmod(modules: Path, release: str) -> None:
    # depmod -b BASE looks in BASE/lib/modules (kmod 30) or BASE/usr/lib/modules (newer kmod
    # builds); try the base that fits either.
    for base in (modules.parent.parent, modules.parent.parent.parent):
        depmod = _which("depmod") or "depmod"
        subprocess.run([depmod, "-b", str(base), release], capture_output=True, check=False)
        if (modules / "modules.dep").exists():
            return
    raise VmError(f"depmod did not produce {modules / 'modules.dep'}")


def _fetch_kernel(cache: Path, log: Callable[[str], None]) -> tuple[str, Path]:
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    apt = _PrivateApt(cache / "apt", mirror)
    log(f"hidbpfd vm: reading {mirror} {SUITE}")
    apt.update()
    release = choose_kernel(apt.pkgnames("linux-image-"))
    if release is None:
        raise VmError(f"no linux-image-*-amd64 package found in {mirror} {SUITE}")
    wanted: list[str] = []
    todo = [f"linux-image-{release}"]
    while todo:
        package = todo.pop()
        if package in wanted:
            continue
        wanted.append(package)
        todo += kernel_dependencies(release, apt.depends(package))
    log(f"hidbpfd vm: downloading {' '.join(wanted)}")
    debs = apt.download(wanted)
    size = sum(d.stat().st_size for d in debs)
    log(f"hidbpfd vm: downloaded {size / 1e6:.0f} MB; unpacking")
    kernels = cache / "kernels"
    partial = kernels / f"{release}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(partial)], f"unpacking {deb.name}")
    _, modules, config = _kernel_layout(partial, release)
    problems = check_kernel_config(config.read_text(errors="replace"))
    if problems:
        raise VmError(f"kernel {release} from {SUITE} cannot run our tests: " + "; ".join(problems))
    _depmod(modules, release)
    final = kernels / release
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for deb in debs:
        deb.unlink()
    return release, final


def ensure_setup(*, log: Callable[[str], None] = print) -> VmAssets:
    """Make sure the host can boot the test kernel; download and unpack it on first use.

    Called by :func:`run_in_vm` (and so by ``hidbpfd vm``) before every boot; after the first
    run it only checks files and returns. Takes a lock in the cache dir, so two runs at once
    don't both download. Raises :class:`VmError` with what to do.
    """
    cache = cache_dir()
    with _locked(cache / ".setup.lock"):
        _ensure_host_tools(log)
        vng, scripts = _ensure_virtme_ng(log)
        state_file = cache / "kernel.json"
        state: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_file.read_text())
        root = Path(state.get("root", "/nonexistent"))
        release = state.get("release", "")
        try:
            image, modules, _ = _kernel_layout(root, release)
            ready = (modules / "modules.dep").exists()
        except VmError:
            ready = False
        if not ready:
            started = time.monotonic()
            release, root = _fetch_kernel(cache, log)
            image, modules, _ = _kernel_layout(root, release)
            state_file.write_text(json.dumps({"release": release, "root": str(root)}) + "\n")
            log(f"hidbpfd vm: kernel {release} ready in {time.monotonic() - started:.0f} s")
    return VmAssets(
        release=release,
        kernel_image=image,
        modules_dir=modules,
        vng=vng,
        scripts_dir=scripts,
    )
