"""The VM tier's command line: what ``hidbpfd vm`` is asked (:func:`parse_args`), whether KVM
can be used (:func:`kvm_usable`), and what :mod:`hidbpfd.vm.boot` runs: the ``vng --run``
command (:func:`vng_command`), the guest's set-up script (:func:`guest_script`) and its
environment (:func:`guest_env`). Pure: nothing here starts a process (unit-tested in
tests/unit/test_vm_args.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.vm.qmp import qmp_option
from hidbpfd.vm.setup import VmAssets

KVM_ENV: Final = "HIDBPFD_VM_KVM"
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
# In the systemd tier these name host paths the guest does not have.
HOST_ONLY_ENV: Final = ("PATH", "VIRTUAL_ENV", "PYTHONPATH")
SYSTEMD_GUEST_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMD_ENV: Final = "HIDBPFD_VM_SYSTEMD"  # set to 1 for the command in the systemd tier
SYSTEMD_UP_TIMEOUT_S: Final = 240  # systemctl is-system-running --wait, under emulation

READY_MARKER: Final = "hidbpfd-vm: guest ready"
# The systemd tier's command talks to the host over the emulated serial port, which survives a
# suspend of the guest (virtme-ng's virtio-serial ports do not, docs/vm.md): its output, then
# this line with the run's nonce and its exit code.
EXIT_MARKER: Final = "hidbpfd-vm: guest command exited"
SERIAL_CONSOLE: Final = "/dev/ttyS0"  # x86's first serial port: the guest kernel's console
# The systemd tier's CMD runs in a copy of the working directory on the guest's own disk: the
# host's 9p share does not survive a suspend either (an access to it after the resume blocks
# forever, measured). Not copied: what the guest cannot use or does not need.
GUEST_WORKDIR: Final = "/var/tmp/hidbpfd-vm-work"
NOT_COPIED: Final = (".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache")
GUEST_SETUP_FAILED: Final = 125  # the guest came up but could not load uhid & co
QUIET_LOGLEVEL: Final = 1  # the guest console's level unless verbose: emergencies, panics, oopses


@dataclass(frozen=True, slots=True)
class VmArgs:
    """The parsed ``hidbpfd vm`` command line."""

    cmd: tuple[str, ...]
    memory: str = "2G"
    timeout_s: float | None = None
    rwdirs: tuple[str, ...] = ()
    systemd: bool = False


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
    parser.add_argument(
        "--systemd",
        action="store_true",
        help="boot a Debian 12 system with systemd as PID 1 (built once with mmdebstrap, "
        "cached) instead of sharing the host's root; CMD runs as root once it is up",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run in the guest")
    args = parser.parse_args(list(argv))
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("no command given; try: hidbpfd vm -- .venv/bin/python -m pytest tests/device")
    return VmArgs(
        cmd=tuple(cmd),
        memory=args.memory,
        timeout_s=args.timeout,
        rwdirs=tuple(args.rwdir),
        systemd=args.systemd,
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


def guest_env(
    env: Mapping[str, str], venv: str | None = None, *, systemd: bool = False
) -> dict[str, str]:
    """The part of the host environment that the guest command gets (PATH, VIRTUAL_ENV, ...).

    ``venv`` is the virtual environment ``hidbpfd vm`` itself runs from, if any: the guest
    gets it as VIRTUAL_ENV with its ``bin`` first on PATH, as if it had been activated, so
    ``hidbpfd vm -- pytest`` finds the project's pytest. In the systemd tier the guest is
    another system: nothing of the host's PATH or venv, the guest's own PATH instead.
    """
    passed = {
        key: value
        for key, value in sorted(env.items())
        if (key in PASSED_ENV or key.startswith(PASSED_ENV_PREFIXES))
        and not (systemd and key in HOST_ONLY_ENV)
    }
    if systemd:
        return {**passed, "PATH": SYSTEMD_GUEST_PATH, SYSTEMD_ENV: "1"}
    if venv and "VIRTUAL_ENV" not in passed:
        passed["VIRTUAL_ENV"] = venv
        bin_dir = os.path.join(venv, "bin")
        path = passed.get("PATH", os.defpath).split(os.pathsep)
        passed["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])
    return passed


def exit_line(nonce: str, code: int | str) -> str:
    """The line that ends a systemd-tier run on the serial console (:func:`guest_script`)."""
    return f"{EXIT_MARKER} {nonce} {code}"


def parse_exit_line(line: str, nonce: str) -> int | None:
    """The exit code in ``line`` if it is this run's :func:`exit_line`, else None. Searched
    anywhere in the line: the serial console may put control characters before it."""
    match = re.search(re.escape(f"{EXIT_MARKER} {nonce} ") + r"(\d{1,3})\s*$", line)
    return int(match.group(1)) if match else None


def guest_script(
    cmd: Sequence[str],
    cwd: str,
    env: Mapping[str, str],
    *,
    systemd: bool = False,
    nonce: str = "",
) -> str:
    """The POSIX shell script virtme-ng runs in the guest: set up, say ready, exec CMD.

    Called by :func:`run_in_vm`. The ready line goes to stderr; :func:`run_in_vm` watches for
    it to tell a guest that never came up from a command that failed. In the systemd tier it
    runs from virtme-ng's serial getty once systemd is up, and first waits for the boot to
    finish (``systemctl is-system-running --wait``; failed units are listed, not fatal).

    In the systemd tier CMD's output (stdout and stderr, merged, through a pipe so CMD sees no
    terminal) goes to the serial console (:data:`SERIAL_CONSOLE`, which vng passes to its
    stderr), then :func:`exit_line` with ``nonce`` and CMD's exit code, then the guest powers
    off at once: virtme-ng's own channels for them die when the guest suspends (docs/vm.md),
    the serial port does not.
    """
    modules = " ".join(GUEST_MODULES)
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    fail = f"exit {GUEST_SETUP_FAILED}"
    wait = ""
    if systemd:
        wait = (
            # the serial console may lose the first bytes written to it
            "echo; echo\n"
            f"state=$(timeout {SYSTEMD_UP_TIMEOUT_S} systemctl is-system-running --wait)\n"
            '[ "$state" = running ] || { echo "hidbpfd-vm: systemd is $state:" >&2;'
            " systemctl --failed --no-legend --no-pager >&2; }\n"
            # virtme-ng's init binds a file of its own over /etc/shadow (for its logins):
            # systemd-sysusers could not replace it ("Device or resource busy")
            "umount /etc/shadow 2>/dev/null\n"
            # and a tmpfs over /var/log, hiding the journal systemd-journald writes there
            "umount /var/log 2>/dev/null\n"
        )
    return (
        f"{wait}modprobe -a {modules}"
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
        f"echo \"{READY_MARKER} after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
        + (", systemd $state" if systemd else "")
        + '" >&2\n'
        + f"{exports}"
        + (_local_copy(cwd) if systemd else f"cd {shlex.quote(cwd)} || {fail}\n")
        + (_serial_run(cmd, nonce) if systemd else f"exec {shlex.join(cmd)}\n")
    )


def _local_copy(cwd: str) -> str:
    """:func:`guest_script` in the systemd tier: copy ``cwd`` to :data:`GUEST_WORKDIR` (but
    :data:`NOT_COPIED`), go there."""
    excludes = " ".join(f"--exclude={shlex.quote(name)}" for name in NOT_COPIED)
    return (
        f"mkdir -p {GUEST_WORKDIR} && tar -C {shlex.quote(cwd)} {excludes} -cf - . "
        f"| tar -C {GUEST_WORKDIR} -xf - || {{ echo 'hidbpfd-vm: cannot copy the working "
        f"directory to {GUEST_WORKDIR}' >&2; exit {GUEST_SETUP_FAILED}; }}\n"
        f"cd {GUEST_WORKDIR} || exit {GUEST_SETUP_FAILED}\n"
    )


def _serial_run(cmd: Sequence[str], nonce: str) -> str:
    """:func:`guest_script`'s end in the systemd tier: CMD over the serial console.

    The console is opened once, before CMD, and kept open (fd 3): after a resume, an open() of
    the serial port blocks forever (measured, docs/vm.md), a write on an open one goes through.
    """
    tty = SERIAL_CONSOLE
    return (
        # no \n -> \r\n on the way out: the host splits lines at \n
        f"stty -F {tty} -opost 2>/dev/null\n"
        f"exec 3>{tty} || exit {GUEST_SETUP_FAILED}\n"
        f"rcfile=$(mktemp) || exit {GUEST_SETUP_FAILED}\n"
        # through a pipe, Python would hold its output back until it ends
        "export PYTHONUNBUFFERED=1\n"
        f'{{ {shlex.join(cmd)}; echo $? >"$rcfile"; }} </dev/null 2>&1 3>&- | cat >&3\n'
        'rc=$(cat "$rcfile"); rc=${rc:-255}\n'
        # a newline first: the line must start on a line of its own
        f"printf '\\n%s\\n' \"{exit_line(nonce, '$rc')}\" >&3\n"
        # the host has the exit code: power off now, not through virtme-ng's exit-code port
        # (after a suspend, a write to it would block forever)
        "sync; poweroff -f\n"
        'exit "$rc"\n'
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
    rootfs: Path | None = None,
    qmp: Path | None = None,
) -> list[str]:
    """The ``vng`` invocation that boots ``assets``' kernel and runs the script at ``script_path``.

    The script goes by path, not inline: virtme-ng puts ``--exec`` on the kernel command line,
    which x86 truncates at 2048 bytes (the guest then hangs without a word).

    The guest kernel's console always comes to vng's stderr (``--verbose``; virtme-ng sends it
    to /dev/null otherwise), but unless ``verbose`` at log level 1: nothing but emergencies,
    and a panic or an oops, which raise the level themselves. So a guest that dies before it
    says anything leaves its reason in vng's output, instead of a bare exit code 255.
    ``--force-9p``: virtme-ng would first try a virtiofsd, and Debian 12's (qemu's C one)
    refuses virtme-ng's options, so every boot waited ~3 s for it before falling back to 9p.

    With ``rootfs`` (the systemd tier, :mod:`hidbpfd.vm.rootfs`) the guest boots that ext4
    image with systemd as PID 1 (``--root-disk --systemd``), writable but through qemu's
    ``-snapshot`` (the writes go to a temporary file, the image stays as built), with the
    script's directory and the working directory shared read-only. ``qmp``: a QMP socket for
    qemu at that path (:mod:`hidbpfd.vm.qmp` wakes a suspended guest through it).
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
        "hid.ignore_special_drivers=1 "
        # no early-boot test of the timer interrupt: on an overloaded host an emulated vCPU
        # can miss its ticks and the kernel panics ("IO-APIC + timer doesn't work!")
        "no_timer_check"
        + ("" if verbose else f" loglevel={QUIET_LOGLEVEL}")
        + (" systemd.show_status=false" if rootfs is not None and not verbose else ""),
        "--verbose",
        "--force-9p",
    ]
    if not use_kvm:
        cmd.append("--disable-kvm")
    if rootfs is not None:
        cmd += ["--root-disk", str(rootfs), "--root-fstype", "ext4", "--rw"]
        cmd += ["--qemu-opts=-snapshot", "--systemd", "--rodir", str(script_path.parent)]
    if qmp is not None:
        cmd.append(f"--qemu-opts={qmp_option(qmp)}")
    for rwdir in rwdirs:
        cmd += ["--rwdir", os.path.abspath(rwdir)]
    writable = [*GUEST_OVERLAID, *(os.path.abspath(d) for d in rwdirs)]
    if rootfs is not None:
        # virtme-ng's overlay of a host directory does not reach a --root-disk guest: the
        # working directory is shared read-only there (tests write to their tmp_path)
        if not any(cwd == d or cwd.startswith(d.rstrip("/") + "/") for d in rwdirs):
            cmd += ["--rodir", cwd]
    elif not any(cwd == d or cwd.startswith(d.rstrip("/") + "/") for d in writable):
        cmd += ["--overlay-rwdir", cwd]
    cmd += ["--exec", f"exec /bin/sh {shlex.quote(str(script_path))}"]
    return cmd
