"""The VM tier: boot a HID-capable kernel under qemu (virtme-ng) and run one command inside it.

The host kernel has no uhid, uinput, hidraw or HID-BPF, so the device tests and the benchmark
run in a throw-away guest instead. ``hidbpfd vm -- CMD...`` (see :func:`main`) is the way in;
it boots once per command, so one boot serves a whole test suite::

    hidbpfd vm -- .venv/bin/python -m pytest tests/device

What happens, in order:

1. :func:`ensure_setup` (idempotent, cached, locked): installs what is missing on the host
   (Debian's qemu-system-x86, busybox-static, kmod, udev, file; virtme-ng from PyPI), then
   downloads the newest ``linux-image-<release>-amd64`` of trixie-backports (and the
   ``linux-binary/-modules/-base`` packages it is split into since 6.19) through a *private*
   apt configuration (its own sources, lists, cache and status under the cache dir, so the
   host's apt sources are untouched), unpacks them with ``dpkg-deb -x``, runs ``depmod`` and
   checks the config for ``CONFIG_HID_BPF=y`` & co. The cache lives in ``$HIDBPFD_VM_CACHE``
   or ``/var/lib/hidbpfd/vm`` (not /var/cache, which the guest sees as an empty tmpfs) and
   outlives clones of the repository.
2. :func:`run_in_vm` starts ``vng --run <vmlinuz>``: the guest shares the host's root
   filesystem read-only (the working directory gets a tmpfs overlay, so the guest can write
   there and the host tree stays untouched; ``--rwdir`` lets a directory through), loads
   uhid/uinput/hid-generic/evdev, mounts bpffs, checks udevd, prints a ready line on stderr,
   then runs CMD in the same directory with the same PATH and VIRTUAL_ENV (without stdin) and
   returns its exit code. A guest that never prints the ready line is a boot failure, reported
   with the tail of virtme-ng's output.

KVM is used only when ``kvm_intel`` or ``kvm_amd`` is loaded: the paravirtual ``kvm_pvm`` of our
development machines cannot run a stock kernel (qemu reports an emulation failure and hangs),
so there the guest runs under software emulation (~12-15 s to the ready line on an idle host).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
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
KVM_ENV: Final = "HIDBPFD_VM_KVM"
VERBOSE_ENV: Final = "HIDBPFD_VM_VERBOSE"  # 1: the guest's kernel console goes to stderr too
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
# modprobe.blacklist= keeps modprobe from even decompressing them. Keep it short: it goes on
# the kernel command line, which x86 cuts at 2048 bytes (and virtme-ng uses ~800 of them).
GUEST_MODULE_BLACKLIST: Final = (
    "kvm_amd,kvm_intel,kvm,irqbypass,ccp,ahci,libahci,libata,sr_mod,cdrom,sg,scsi_mod,"
    "scsi_common,iTCO_wdt,intel_pmc_bxt,i2c_i801,i2c_smbus,lpc_ich,pcspkr,psmouse,serio_raw,"
    "aesni_intel,gf128mul,i6300esb,watchdog,button,powernow_k8,qemu_fw_cfg"
)
# hidraw is part of hid.ko (CONFIG_HIDRAW is a bool), so it is not in the list.
GUEST_MODULES: Final = ("uhid", "uinput", "hid-generic", "evdev")

# virtme-ng gives these directories a tmpfs overlay in the guest already.
GUEST_OVERLAID: Final = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")
# Environment the command sees in the guest, besides these prefixes.
PASSED_ENV: Final = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "LC_ALL", "TERM", "CI")
PASSED_ENV_PREFIXES: Final = ("HIDBPFD_", "PYTEST_")

READY_MARKER: Final = "hidbpfd-vm: guest ready"
# What qemu prints when KVM (e.g. the paravirtual kvm_pvm) cannot run the guest; it then hangs.
KVM_FAILURE_MARKERS: Final = ("KVM internal error", "emulation failure")
GUEST_SETUP_FAILED: Final = 125  # the guest came up but could not load uhid & co
TIMED_OUT: Final = 124  # as timeout(1)
BOOT_TIMEOUT_S: Final = 300.0  # emulated boots take ~15-20 s; a hang shows up as no marker

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


@dataclass(frozen=True, slots=True)
class VmArgs:
    """The parsed ``hidbpfd vm`` command line."""

    cmd: tuple[str, ...]
    memory: str = "2G"
    timeout_s: float | None = None
    rwdirs: tuple[str, ...] = ()


# --- pure helpers (unit-tested in tests/unit/test_vm_args.py) -------------------------------


def parse_args(argv: Sequence[str]) -> VmArgs:
    """Parse the words after ``hidbpfd vm``: options, an optional ``--``, then CMD.

    Called by :func:`main`. Everything from the first word that is not an option (or after
    ``--``) belongs to CMD, so ``hidbpfd vm pytest -q`` passes ``-q`` to pytest.
    """
    parser = argparse.ArgumentParser(
        prog="hidbpfd vm",
        description="Boot a HID-capable kernel in qemu and run CMD inside it; "
        "exits with CMD's exit code.",
    )
    parser.add_argument("--memory", default="2G", help="guest memory (qemu -m), default 2G")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="kill the VM after this"
    )
    parser.add_argument(
        "--rwdir",
        action="append",
        default=[],
        metavar="DIR",
        help="let the guest write DIR on the host (default: guest writes are thrown away)",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run in the guest")
    args = parser.parse_args(list(argv))
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("no command given; try: hidbpfd vm -- .venv/bin/python -m pytest tests/device")
    return VmArgs(
        cmd=tuple(cmd), memory=args.memory, timeout_s=args.timeout, rwdirs=tuple(args.rwdir)
    )


def kvm_usable(
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
    env: Mapping[str, str] = os.environ,
) -> bool:
    """Whether qemu may use KVM: only with a real ``kvm_intel``/``kvm_amd`` and ``/dev/kvm``.

    Called by :func:`run_in_vm` before each boot. ``$HIDBPFD_VM_KVM=0|1`` overrides the guess.
    """
    forced = env.get(KVM_ENV, "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    hardware = (sys_module / "kvm_intel").is_dir() or (sys_module / "kvm_amd").is_dir()
    return hardware and os.access(dev_kvm, os.R_OK | os.W_OK)


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


def guest_env(env: Mapping[str, str], venv: str | None = None) -> dict[str, str]:
    """The part of the host environment that the guest command gets (PATH, VIRTUAL_ENV, ...).

    ``venv`` is the virtual environment ``hidbpfd vm`` itself runs from, if any: the guest
    gets it as VIRTUAL_ENV with its ``bin`` first on PATH, as if it had been activated, so
    ``hidbpfd vm -- pytest`` finds the project's pytest.
    """
    passed = {
        key: value
        for key, value in sorted(env.items())
        if key in PASSED_ENV or key.startswith(PASSED_ENV_PREFIXES)
    }
    if venv and "VIRTUAL_ENV" not in passed:
        passed["VIRTUAL_ENV"] = venv
        bin_dir = os.path.join(venv, "bin")
        path = passed.get("PATH", os.defpath).split(os.pathsep)
        passed["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])
    return passed


def guest_script(cmd: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    """The POSIX shell script virtme-ng runs in the guest: set up, say ready, exec CMD.

    Called by :func:`run_in_vm`. The ready line goes to stderr; :func:`run_in_vm` watches for
    it to tell a guest that never came up from a command that failed.
    """
    modules = " ".join(GUEST_MODULES)
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    fail = f"exit {GUEST_SETUP_FAILED}"
    return (
        f"modprobe -a {modules}"
        f" || {{ echo 'hidbpfd-vm: modprobe {modules} failed' >&2; {fail}; }}\n"
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"
        f" || {{ echo 'hidbpfd-vm: cannot mount bpffs' >&2; {fail}; }}\n"
        "if ! udevadm control --ping >/dev/null 2>&1; then\n"
        "  for d in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do\n"
        '    [ -x "$d" ] && "$d" --daemon && break\n'
        "  done\n"
        "  udevadm trigger --action=add >/dev/null 2>&1\n"
        "fi\n"
        "udevadm settle --timeout=30 || true\n"
        f"echo \"{READY_MARKER} after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)\" >&2\n"
        f"{exports}"
        f"cd {shlex.quote(cwd)} || {fail}\n"
        f"exec {shlex.join(cmd)}\n"
    )


def vng_command(
    assets: VmAssets,
    script_path: Path,
    *,
    cwd: str,
    memory: str,
    use_kvm: bool,
    rwdirs: Sequence[str] = (),
    verbose: bool = False,
) -> list[str]:
    """The ``vng`` invocation that boots ``assets``' kernel and runs the script at ``script_path``.

    The script goes by path, not inline: virtme-ng puts ``--exec`` on the kernel command line,
    which x86 truncates at 2048 bytes (the guest then hangs without a word).
    """
    cmd = [
        str(assets.vng),
        "--run",
        str(assets.kernel_image),
        "--memory",
        memory,
        "--cwd",
        cwd,
        "--append",
        f"module_blacklist={GUEST_MODULE_BLACKLIST} modprobe.blacklist={GUEST_MODULE_BLACKLIST} "
        # every uhid device gets hid-generic: a vendor driver (hid-uclogic for XP-Pen IDs...)
        # would try to talk USB to a uhid device, fail its probe, and leave no hidraw node
        "hid.ignore_special_drivers=1",
    ]
    if not use_kvm:
        cmd.append("--disable-kvm")
    if verbose:
        cmd.append("--verbose")
    for rwdir in rwdirs:
        cmd += ["--rwdir", os.path.abspath(rwdir)]
    writable = [*GUEST_OVERLAID, *(os.path.abspath(d) for d in rwdirs)]
    if not any(cwd == d or cwd.startswith(d.rstrip("/") + "/") for d in writable):
        cmd += ["--overlay-rwdir", cwd]
    cmd += ["--exec", f"exec /bin/sh {shlex.quote(str(script_path))}"]
    return cmd


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
        release=release, kernel_image=image, modules_dir=modules, vng=vng, scripts_dir=scripts
    )


# --- running -----------------------------------------------------------------------------------


class _OutputPump:
    """Copies vng's stdout/stderr through to ours, keeping a tail and watching for the marker."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(proc.stdout, selectors.EVENT_READ, sys.stdout.buffer)
        self.selector.register(proc.stderr, selectors.EVENT_READ, sys.stderr.buffer)
        self.tail: collections.deque[str] = collections.deque(maxlen=25)
        self.partial: dict[int, bytes] = {}
        self.ready = False
        self.kvm_failed = False

    def pump(self, timeout_s: float) -> bool:
        """Copy what is there within ``timeout_s``; False once both pipes are closed."""
        if not self.selector.get_map():
            return False
        for key, _ in self.selector.select(timeout_s):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self.selector.unregister(key.fileobj)
                continue
            out = key.data
            out.write(chunk)
            out.flush()
            *lines, self.partial[key.fd] = (self.partial.get(key.fd, b"") + chunk).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.tail.append(text)
                self.ready = self.ready or text.startswith(READY_MARKER)
                if not self.ready and any(m in text for m in KVM_FAILURE_MARKERS):
                    self.kvm_failed = True
        return bool(self.selector.get_map())


def run_in_vm(
    cmd: Sequence[str],
    *,
    cwd: str | None = None,
    memory: str = "2G",
    timeout_s: float | None = None,
    rwdirs: Sequence[str] = (),
    boot_timeout_s: float = BOOT_TIMEOUT_S,
    assets: VmAssets | None = None,
) -> int:
    """Boot the test kernel, run ``cmd`` in ``cwd`` inside it, return its exit code.

    Called by :func:`main`; boots once per call, so pass a whole test run as ``cmd``.
    Returns 124 when ``timeout_s`` ran out (the VM is killed), 125 when the guest came up but
    could not load the HID modules, 130 on ^C. Raises :class:`VmError` when set-up fails or
    the guest never comes up (with the tail of virtme-ng's output).
    """
    assets = assets or ensure_setup(log=lambda m: print(m, file=sys.stderr))
    workdir = os.path.abspath(cwd or os.getcwd())
    use_kvm = kvm_usable()
    # The guest reads the script from the host's filesystem, in the cache dir it can see.
    run_dir = cache_dir() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="guest-", suffix=".sh", dir=run_dir)
    script_path = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            venv = sys.prefix if sys.prefix != sys.base_prefix else None
            f.write(guest_script(cmd, workdir, guest_env(os.environ, venv)))
        argv = vng_command(
            assets,
            script_path,
            cwd=workdir,
            memory=memory,
            use_kvm=use_kvm,
            rwdirs=rwdirs,
            verbose=os.environ.get(VERBOSE_ENV) == "1",
        )
        path = f"{assets.scripts_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        outcome = _supervise(argv, {**os.environ, "PATH": path}, workdir, timeout_s, boot_timeout_s)
    finally:
        script_path.unlink(missing_ok=True)
    if outcome.killed_for == "interrupted":
        return 130
    if not outcome.ready:
        mode = "KVM" if use_kvm else "software emulation (no kvm_intel/kvm_amd loaded)"
        why = outcome.killed_for or f"vng exited with {outcome.returncode}"
        raise VmError(
            f"the VM did not boot: {why}; kernel {assets.kernel_image}, {mode}. "
            f"Run again with {VERBOSE_ENV}=1 to see the guest's kernel console.\n"
            f"Last lines of vng's output:\n{outcome.tail or '(none)'}"
        )
    if outcome.killed_for:
        print(f"hidbpfd vm: {outcome.killed_for}; killed the VM", file=sys.stderr)
        return TIMED_OUT
    return outcome.returncode


@dataclass(frozen=True, slots=True)
class _Outcome:
    returncode: int
    ready: bool
    killed_for: str
    tail: str


def _supervise(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    timeout_s: float | None,
    boot_timeout_s: float,
) -> _Outcome:
    """Run vng, pass its output through, kill it (and qemu) on a timeout or ^C."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        # No stdin: virtme-run crashes when it is closed (as under CI), and guest commands
        # here are test runs, not interactive shells.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so a timeout or ^C can end vng, virtme-run and qemu together
    )
    pump = _OutputPump(proc)
    killed_for = ""
    try:
        while pump.pump(0.5):
            elapsed = time.monotonic() - started
            if pump.kvm_failed:
                killed_for = (
                    f"qemu's KVM cannot run this kernel (emulation failure); "
                    f"set {KVM_ENV}=0 to use software emulation"
                )
                break
            if not pump.ready and elapsed > boot_timeout_s:
                killed_for = f"the guest did not come up within {boot_timeout_s:.0f} s"
                break
            if timeout_s is not None and elapsed > timeout_s:
                killed_for = f"timed out after {timeout_s:.0f} s"
                break
    except KeyboardInterrupt:
        killed_for = "interrupted"
    finally:
        if killed_for:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    return _Outcome(returncode, pump.ready, killed_for, "\n".join(pump.tail))


def main(argv: list[str]) -> int:
    """``hidbpfd vm [--memory M] [--timeout S] [--rwdir DIR] [--] CMD...``: CMD's exit code.

    Called by the ``hidbpfd`` command line (and ``python -m hidbpfd.vm``). Set-up progress and
    errors go to stderr; errors exit 2 without a traceback.
    """
    args = parse_args(argv)
    try:
        return run_in_vm(args.cmd, memory=args.memory, timeout_s=args.timeout_s, rwdirs=args.rwdirs)
    except VmError as e:
        print(f"hidbpfd vm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
