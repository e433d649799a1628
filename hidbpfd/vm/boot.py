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

import collections
import contextlib
import functools
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from hidbpfd.vm.command import (
    GUEST_SETUP_FAILED,
    KVM_ENV,
    READY_MARKER,
    guest_env,
    guest_script,
    kvm_usable,
    parse_args,
    parse_exit_line,
    vng_command,
)
from hidbpfd.vm.qmp import SuspendWaker
from hidbpfd.vm.rootfs import ensure_rootfs
from hidbpfd.vm.setup import VmAssets, VmError, cache_dir, ensure_setup

VERBOSE_ENV: Final = "HIDBPFD_VM_VERBOSE"  # 1: the guest's kernel console goes to stderr too
TAIL_LINES: Final = 100  # of vng's output, kept for a failure's report (a panic's trace fits)
# What qemu prints when KVM (e.g. the paravirtual kvm_pvm) cannot run the guest; it then hangs.
KVM_FAILURE_MARKERS: Final = ("KVM internal error", "emulation failure")
TIMED_OUT: Final = 124  # as timeout(1)
BOOT_RETRIES: Final = 2  # boots again after a boot that ended by itself before the ready line
VNG_NO_EXIT_CODE: Final = 255  # virtme-run: qemu ended without the guest command's exit code
BOOT_TIMEOUT_S: Final = 300.0  # emulated boots take ~15-20 s; a hang shows up as no marker
# After the systemd tier's exit line the guest powers off; if qemu is still there after this,
# it is killed (the command's exit code is known already)
POWER_OFF_GRACE_S: Final = 30.0


# --- running -----------------------------------------------------------------------------------


_KERNEL_LINE: Final = re.compile(rb"^(\[ *\d+\.\d+\] |Probing EDD\b|Memory KASLR |Poking KASLR )")
_POWER_DOWN: Final = re.compile(rb"^\[ *\d+\.\d+\] reboot: ")


def shown(line: bytes, *, ready: bool) -> bool:
    """Whether a line of vng's output is passed through (when not verbose).

    Before the guest's ready line, everything but the guest kernel's console (the boot
    stub's and the kernel's first lines, printed before its log level is set, and anything it
    says while booting): those lines are kept for the report of a boot that fails
    (:func:`failure_excerpt`). From the ready line on, everything but the kernel's closing
    ``reboot: Power down``; a panic or an oops during the command does show.
    """
    return not (_POWER_DOWN if ready else _KERNEL_LINE).match(line)


@dataclass(slots=True)
class _Stream:
    """One of vng's pipes: where it goes, and the line being read."""

    out: BinaryIO
    line: bytes = b""
    """The current line so far."""
    written: bool = False
    """Its start went through already (the rest follows as it comes)."""


class _OutputPump:
    """Copies vng's stdout/stderr through to ours, keeping a tail and watching for the marker.

    Lines go through as they come, but a line that may be the guest kernel's waits for its end
    (every line before the ready line, one starting with ``[`` after it), to be dropped if it is
    (:func:`shown`); verbose, everything goes through.
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], *, verbose: bool = False, nonce: str = ""
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(proc.stdout, selectors.EVENT_READ, _Stream(sys.stdout.buffer))
        self.selector.register(proc.stderr, selectors.EVENT_READ, _Stream(sys.stderr.buffer))
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.ready = False
        self.kvm_failed = False
        self.verbose = verbose
        self.nonce = nonce
        self.exit_code: int | None = None
        """The guest command's exit code from its exit line (the systemd tier's ``nonce``)."""

    def pump(self, timeout_s: float) -> bool:
        """Copy what is there within ``timeout_s``; False once both pipes are closed."""
        if not self.selector.get_map():
            return False
        for key, _ in self.selector.select(timeout_s):
            st: _Stream = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self.selector.unregister(key.fileobj)
                if st.line and not st.written and self._shown(st.line):
                    st.out.write(st.line)
                if st.line:
                    self._note(st.line)
                st.out.flush()
                continue
            for piece in chunk.splitlines(keepends=True):
                self._take(st, piece)
            st.out.flush()
        return bool(self.selector.get_map())

    def _take(self, st: _Stream, piece: bytes) -> None:
        """A piece of a line, up to and including its newline if it has one."""
        st.line += piece
        complete = piece.endswith(b"\n")
        if st.written:
            st.out.write(piece)
        elif complete:
            if self._shown(st.line[:-1]):
                st.out.write(st.line)
        elif not self._may_hide(st.line):
            st.out.write(st.line)
            st.written = True
        if complete:
            self._note(st.line[:-1])
            st.line, st.written = b"", False

    def _shown(self, line: bytes) -> bool:
        return self.verbose or shown(line, ready=self.ready)

    def _may_hide(self, start: bytes) -> bool:
        """Whether a line starting so may still turn out to be one :func:`shown` drops."""
        return not self.verbose and (not self.ready or start.startswith(b"["))

    def _note(self, line: bytes) -> None:
        text = line.decode(errors="replace")
        self.tail.append(text)
        # "in", not startswith: on a serial console (the systemd tier) a line may come
        # after control characters
        self.ready = self.ready or READY_MARKER in text
        if self.ready and self.nonce and self.exit_code is None:
            self.exit_code = parse_exit_line(text, self.nonce)
        if not self.ready and any(m in text for m in KVM_FAILURE_MARKERS):
            self.kvm_failed = True


def run_in_vm(
    cmd: Sequence[str],
    *,
    cwd: str | None = None,
    memory: str = "2G",
    timeout_s: float | None = None,
    rwdirs: Sequence[str] = (),
    boot_timeout_s: float = BOOT_TIMEOUT_S,
    assets: VmAssets | None = None,
    systemd: bool = False,
) -> int:
    """Boot the test kernel, run ``cmd`` in ``cwd`` inside it, return its exit code.

    Called by :func:`main`; boots once per call, so pass a whole test run as ``cmd``. A boot
    that ends by itself before the guest comes up is tried again, up to :data:`BOOT_RETRIES`
    times (:func:`boot_again`), each failure said on stderr.
    Returns 124 when ``timeout_s`` ran out (the VM is killed), 125 when the guest came up but
    could not load the HID modules, 130 on ^C. Raises :class:`VmError` when set-up fails or
    the guest never comes up (with the tail of virtme-ng's output). ``systemd``: the systemd
    tier (see :func:`vng_command`).
    """
    say = functools.partial(print, file=sys.stderr)
    assets = assets or ensure_setup(log=say)
    rootfs = ensure_rootfs(log=say) if systemd else None
    workdir = os.path.abspath(cwd or os.getcwd())
    use_kvm = kvm_usable()
    verbose = os.environ.get(VERBOSE_ENV) == "1"
    # The guest reads the script from the host's filesystem, in the cache dir it can see.
    run_dir = cache_dir() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="guest-", suffix=".sh", dir=run_dir)
    script_path = Path(name)
    # the systemd tier's guest can suspend (tests/service/): qemu's SUSPEND -> system_wakeup
    qmp = script_path.with_suffix(".qmp") if systemd else None
    # the systemd tier's exit line carries it: a line of CMD's own output cannot pass for it
    nonce = secrets.token_hex(8) if systemd else ""
    try:
        with os.fdopen(fd, "w") as f:
            venv = sys.prefix if sys.prefix != sys.base_prefix else None
            env_in_guest = guest_env(os.environ, venv, systemd=systemd)
            f.write(guest_script(cmd, workdir, env_in_guest, systemd=systemd, nonce=nonce))
        argv = vng_command(
            assets,
            script_path,
            cwd=workdir,
            memory=memory,
            use_kvm=use_kvm,
            rwdirs=rwdirs,
            verbose=verbose,
            rootfs=rootfs,
            qmp=qmp,
        )
        path = f"{assets.scripts_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path}
        attempt = 1
        while True:
            waker = SuspendWaker(qmp, say=say) if qmp is not None else None
            if waker is not None:
                waker.start()
            try:
                outcome = _supervise(
                    argv, env, workdir, timeout_s, boot_timeout_s, verbose=verbose, nonce=nonce
                )
            finally:
                if waker is not None:
                    waker.stop()
            if not boot_again(outcome, attempt):
                break
            print(
                f"hidbpfd vm: boot {attempt} of {1 + BOOT_RETRIES} failed before the guest came "
                f"up, booting again. It ended so: {boot_failure(outcome)}",
                file=sys.stderr,
            )
            attempt += 1
    finally:
        script_path.unlink(missing_ok=True)
        if qmp is not None:
            qmp.unlink(missing_ok=True)
    if outcome.killed_for == "interrupted":
        return 130
    if not outcome.ready:
        mode = "KVM" if use_kvm else "software emulation (no kvm_intel/kvm_amd loaded)"
        tries = f" ({attempt} attempts)" if attempt > 1 else ""
        raise VmError(
            f"the VM did not boot{tries}: {boot_failure(outcome, quote_panic=False)}; "
            f"kernel {assets.kernel_image}, {mode}. "
            f"Run again with {VERBOSE_ENV}=1 to see the guest's kernel console.\n"
            f"Last lines of vng's output:\n{failure_excerpt(outcome.tail) or '(none)'}"
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


def boot_failure(outcome: BootOutcome, *, quote_panic: bool = True) -> str:
    """What went wrong with a boot that never reached the ready line, for humans; with the
    guest kernel's panic message and trace, if it panicked and ``quote_panic``."""
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
    elif quote_panic and (panic := failure_excerpt(outcome.tail, 0)):
        why += f"; the guest kernel said:\n{panic}"
    return why


def failure_excerpt(output: str, lines: int = 25) -> str:
    """What to show of vng's output after a failure: its last ``lines`` non-blank lines, and
    from the guest kernel's ``Kernel panic`` line on if there is one (its reason comes first,
    then its trace)."""
    kept = [line.rstrip() for line in output.splitlines() if line.strip()]
    panic = next((i for i, line in enumerate(kept) if "Kernel panic" in line), None)
    start = len(kept) - lines
    if panic is not None:
        start = min(start, panic)
    return "\n".join(kept[max(start, 0) :])


def _supervise(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    timeout_s: float | None,
    boot_timeout_s: float,
    *,
    verbose: bool = False,
    nonce: str = "",
) -> BootOutcome:
    """Run vng, pass its output through (:class:`_OutputPump`), kill it (and qemu) on a timeout
    or ^C.

    With ``nonce`` (the systemd tier) the command's exit code is the one its exit line says
    (:func:`~hidbpfd.vm.command.parse_exit_line`), not vng's: the guest powers off right after
    that line, and qemu is killed if it is still there :data:`POWER_OFF_GRACE_S` later."""
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
    pump = _OutputPump(proc, verbose=verbose, nonce=nonce)
    killed_for = ""
    exited_at: float | None = None  # when the exit line came
    kill = False
    try:
        while pump.pump(0.5):
            now = time.monotonic()
            elapsed = now - started
            if pump.exit_code is not None:
                exited_at = exited_at or now
                if now - exited_at > POWER_OFF_GRACE_S:
                    kill = True
                    break
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
        if killed_for or kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    if pump.exit_code is not None and not killed_for:
        returncode = pump.exit_code
    return BootOutcome(returncode, pump.ready, killed_for, "\n".join(pump.tail))


def main(argv: list[str]) -> int:
    """``hidbpfd vm [--memory M] [--timeout S] [--rwdir DIR] [--systemd] [--] CMD...``: CMD's
    exit code.

    Called by the ``hidbpfd`` command line (and ``python -m hidbpfd.vm``). Set-up progress and
    errors go to stderr; errors exit 2 without a traceback.
    """
    args = parse_args(argv)
    try:
        return run_in_vm(
            args.cmd,
            memory=args.memory,
            timeout_s=args.timeout_s,
            rwdirs=args.rwdirs,
            systemd=args.systemd,
        )
    except VmError as e:
        print(f"hidbpfd vm: error: {e}", file=sys.stderr)
        return 2
