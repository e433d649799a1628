"""Booting the VM tier: :func:`run_in_vm` starts ``vng --run <vmlinuz>`` and supervises it.

The guest shares the host's root filesystem read-only (the working directory gets a tmpfs
overlay, so the guest can write there and the host tree stays untouched; ``--rwdir`` lets a
directory through), loads uhid/uinput/hid-generic/evdev, mounts bpffs, checks udevd, prints a
ready line on stderr, then runs CMD in the same directory with the same PATH and VIRTUAL_ENV
(without stdin) and returns its exit code. A guest that never prints the ready line is a boot
failure, reported with the tail of virtme-ng's output.

KVM is used only when ``kvm_intel`` or ``kvm_amd`` is loaded: the paravirtual ``kvm_pvm`` of our
development machines cannot run a stock kernel (qemu reports an emulation failure and hangs),
so there the guest runs under software emulation (~12-15 s to the ready line on an idle host).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.vm.setup import VmAssets, VmError, cache_dir, ensure_setup

KVM_ENV: Final = "HIDBPFD_VM_KVM"
VERBOSE_ENV: Final = "HIDBPFD_VM_VERBOSE"  # 1: the guest's kernel console goes to stderr too
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
BOOT_RETRIES: Final = 2  # boots again after a boot that ended by itself before the ready line
VNG_NO_EXIT_CODE: Final = 255  # virtme-run: qemu ended without the guest command's exit code
BOOT_TIMEOUT_S: Final = 300.0  # emulated boots take ~15-20 s; a hang shows up as no marker


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

    Called by :func:`main`; boots once per call, so pass a whole test run as ``cmd``. A boot
    that ends by itself before the guest comes up is tried again, up to :data:`BOOT_RETRIES`
    times (:func:`boot_again`), each failure said on stderr.
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
        env = {**os.environ, "PATH": path}
        attempt = 1
        while True:
            outcome = _supervise(argv, env, workdir, timeout_s, boot_timeout_s)
            if not boot_again(outcome, attempt):
                break
            print(
                f"hidbpfd vm: boot {attempt} of {1 + BOOT_RETRIES} failed before the guest came "
                f"up: {boot_failure(outcome)}; booting again",
                file=sys.stderr,
            )
            attempt += 1
    finally:
        script_path.unlink(missing_ok=True)
    if outcome.killed_for == "interrupted":
        return 130
    if not outcome.ready:
        mode = "KVM" if use_kvm else "software emulation (no kvm_intel/kvm_amd loaded)"
        tries = f" ({attempt} attempts)" if attempt > 1 else ""
        raise VmError(
            f"the VM did not boot{tries}: {boot_failure(outcome)}; "
            f"kernel {assets.kernel_image}, {mode}. "
            f"Run again with {VERBOSE_ENV}=1 to see the guest's kernel console.\n"
            f"Last lines of vng's output:\n{outcome.tail or '(none)'}"
        )
    if outcome.killed_for:
        print(f"hidbpfd vm: {outcome.killed_for}; killed the VM", file=sys.stderr)
        return TIMED_OUT
    return outcome.returncode


@dataclass(frozen=True, slots=True)
class BootOutcome:
    """How one ``vng`` run ended (:func:`_supervise`)."""

    returncode: int
    ready: bool
    """The guest printed :data:`READY_MARKER`: it came up and CMD started."""
    killed_for: str
    """Why we killed the VM (timeout, ^C, KVM failure), or empty."""
    tail: str
    """The last lines of vng's output."""


def boot_again(outcome: BootOutcome, attempt: int, retries: int = BOOT_RETRIES) -> bool:
    """Whether :func:`run_in_vm` boots again after ``attempt`` (1 for the first boot) ended so.

    Only a boot that ended by itself before the guest's ready line is tried again (the command
    never started, so running it again is safe), at most ``retries`` times: an early guest
    kernel panic, or qemu dying, is what virtme-run reports as 255 with no output. Never
    after the ready line (the command ran: its exit code is the answer), nor when we killed
    the VM (a timeout, ^C, KVM that cannot run the kernel would happen again), nor when the
    guest came up and its set-up failed (:data:`GUEST_SETUP_FAILED`: it said why).
    """
    return (
        not outcome.ready
        and not outcome.killed_for
        and outcome.returncode != GUEST_SETUP_FAILED
        and attempt <= retries
    )


def boot_failure(outcome: BootOutcome) -> str:
    """What went wrong with a boot that never reached the ready line, for humans."""
    if outcome.killed_for:
        return outcome.killed_for
    why = f"vng exited with {outcome.returncode}"
    if outcome.returncode == VNG_NO_EXIT_CODE:
        why += (
            " (qemu ended before the guest command could report an exit code: the guest "
            "kernel panicked or qemu died)"
        )
    if not outcome.tail:
        why += "; vng printed nothing"
    return why


def _supervise(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    timeout_s: float | None,
    boot_timeout_s: float,
) -> BootOutcome:
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
    return BootOutcome(returncode, pump.ready, killed_for, "\n".join(pump.tail))


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
