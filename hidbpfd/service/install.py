"""Installing the service for the hidbpfd that runs: ``hidbpfd install-service [--root DIR]
[--dry-run]`` and ``hidbpfd uninstall-service [--root DIR] [--dry-run]`` (contracts, issue 14).

``install-service`` writes, for the local administrator (so under ``/etc``; the unit names a
program of this machine):

- ``/etc/systemd/system/hidbpfd.service``: ``units/hidbpfd.service`` with ``ExecStart=`` naming
  the hidbpfd that runs the command (:func:`hidbpfd_command`);
- ``/etc/sysusers.d/hidbpfd.conf`` (the ``hidbpfd`` user),
  ``/etc/udev/rules.d/60-hidbpfd.rules`` (its group gets the hidraw, uhid and uinput nodes) and
  ``/etc/udev/rules.d/82-hidbpfd-pins.rules`` (after another loader pinned a device's objects,
  its group gets what the daemon needs of them: :mod:`hidbpfd.service.pin_access`, run by
  the Python that runs this command);
- the directory ``/etc/hidbpfd/devices.d/`` for the policy files;

then, on the live system only, runs ``systemd-sysusers`` on its file, ``udevadm control
--reload`` and a ``change`` trigger of the hidraw, uhid and uinput nodes, and ``systemctl
daemon-reload``. ``uninstall-service`` stops and disables the service, removes the four files
(the policy files and the user stay) and reloads the same way.

``--root DIR`` is a packager's DESTDIR: every file lands under DIR and nothing else on the
machine changes (no command is run). ``--dry-run`` prints the same plan and changes nothing.

The files come from the package (``hidbpfd/service/units/``, copied from the top-level
``units/`` when the wheel is built, see ``setup.py``), or from ``units/`` of a source checkout
(an editable install).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import hidbpfd

UNIT_NAME: Final = "hidbpfd.service"
# target path (absolute, on the installed system) -> name of the source file in units/
FILES: Final[tuple[tuple[str, str], ...]] = (
    ("/etc/systemd/system/hidbpfd.service", "hidbpfd.service"),
    ("/etc/sysusers.d/hidbpfd.conf", "hidbpfd.sysusers"),
    ("/etc/udev/rules.d/60-hidbpfd.rules", "60-hidbpfd.rules"),
    ("/etc/udev/rules.d/82-hidbpfd-pins.rules", "82-hidbpfd-pins.rules"),
)
PINS_RULE: Final = "82-hidbpfd-pins.rules"
SHIPPED_PYTHON: Final = "/usr/bin/python3"
"""The interpreter ``units/82-hidbpfd-pins.rules`` names; :func:`rule_text` replaces it."""
POLICY_DIR: Final = "/etc/hidbpfd/devices.d"
SHIPPED_EXEC: Final = "/usr/bin/hidbpfd"
"""The program ``units/hidbpfd.service`` names; :func:`unit_text` replaces it."""
HIDDEN_BY_PROTECT_HOME: Final = ("/home", "/root", "/run/user")
"""What the unit's ``ProtectHome=yes`` makes inaccessible to the service."""
DEVICE_NODES: Final = ("/dev/uhid", "/dev/uinput")


class InstallError(Exception):
    """The service cannot be (un)installed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Step:
    """One thing (un)installing does: write/remove a file, make a directory, run a command."""

    verb: str
    """``write``, ``unchanged``, ``remove``, ``absent``, ``mkdir``, ``keep`` or ``run``."""
    what: str
    """A path, or a command line."""
    detail: str = ""
    content: bytes | None = None
    argv: tuple[str, ...] = ()
    may_fail: bool = False
    """A command whose failure is reported but does not stop the rest (e.g. stopping a
    service that was never started)."""

    def line(self, *, dry_run: bool) -> str:
        """How :func:`apply` reports the step (``would`` first in a dry run)."""
        text = f"{self.verb} {self.what}" + (f" ({self.detail})" if self.detail else "")
        return f"would {text}" if dry_run and self.verb not in ("unchanged", "absent") else text


def units_dir(package_dir: Path | None = None) -> Path:
    """Where the service files are: ``units/`` inside the installed package, else the
    top-level ``units/`` of the source checkout this package runs from."""
    pkg = package_dir or Path(hidbpfd.__file__).resolve().parent
    for candidate in (pkg / "service" / "units", pkg.parent / "units"):
        if all((candidate / name).is_file() for _, name in FILES):
            return candidate
    raise InstallError(
        f"the service files are missing: neither {pkg / 'service' / 'units'} (an installed "
        f"wheel) nor {pkg.parent / 'units'} (a source checkout) has "
        f"{', '.join(name for _, name in FILES)}; reinstall hidbpfd from its wheel (tools/wheel)"
    )


def hidbpfd_command(argv0: str, executable: str) -> list[str]:
    """The command that starts this hidbpfd: the ``hidbpfd`` script that runs (its real
    path, so a pipx or /usr/local/bin symlink is followed), else ``PYTHON -m hidbpfd`` with
    the interpreter that runs (not resolved: a venv's ``bin/python`` is what makes it the
    venv)."""
    script = shutil.which(argv0) if os.sep not in argv0 else argv0
    if script and Path(script).name == "hidbpfd" and os.access(script, os.X_OK):
        return [os.path.realpath(script)]
    return [os.path.abspath(executable), "-m", "hidbpfd"]


def strip_root(path: str, root: Path | None) -> str:
    """``path`` as seen on the target system: a packager running the hidbpfd they staged
    under DESTDIR gets ``ExecStart=`` without the DESTDIR."""
    if root is not None and Path(path).is_relative_to(root) and root != Path("/"):
        return "/" + str(Path(path).relative_to(root))
    return path


def systemd_quote(word: str) -> str:
    """A word of an ``ExecStart=`` line (systemd.service(5) "Command lines")."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    escaped = escaped.replace("$", "$$")
    return f'"{escaped}"' if re.search(r"\s", word) or escaped != word or not word else word


def unit_text(shipped: str, command: Sequence[str]) -> str:
    """The shipped unit with ``ExecStart=`` running ``command`` instead of /usr/bin/hidbpfd."""
    pattern = re.compile(rf"^ExecStart={re.escape(SHIPPED_EXEC)}(?= )", re.MULTILINE)
    text, n = pattern.subn(
        lambda _: "ExecStart=" + " ".join(systemd_quote(w) for w in command), shipped
    )
    if n != 1:
        raise InstallError(
            f"the shipped {UNIT_NAME} has no 'ExecStart={SHIPPED_EXEC} ...' line to adapt"
        )
    return text


def rule_text(shipped: str, python: str) -> str:
    """The shipped pins rule with ``RUN`` naming ``python`` instead of /usr/bin/python3."""
    if re.search(r"[\s\"'$%]", python):
        raise InstallError(
            f"{python}: a Python path with spaces, quotes, $ or % cannot be named in a udev rule"
        )
    old = f'RUN{{program}}+="{SHIPPED_PYTHON} -m '
    if shipped.count(old) != 1:
        raise InstallError(f"the shipped {PINS_RULE} has no '{old}...' line to adapt")
    return shipped.replace(old, f'RUN{{program}}+="{python} -m ')


def hidden_paths(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` (resolved) that ``ProtectHome=yes`` hides from the service."""
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if any(Path(real).is_relative_to(h) for h in HIDDEN_BY_PROTECT_HOME):
            out.append(real if real == p else f"{p} (really {real})")
    return out


def _target(root: Path | None, path: str) -> Path:
    return Path(path) if root is None else root / path.lstrip("/")


def _systemd_running() -> bool:
    """sd_booted(3): systemd is the init system of this machine."""
    return Path("/run/systemd/system").is_dir()


def _reload_steps(sysusers: str | None) -> list[Step]:
    """The commands that make the live system see the files (installed or removed)."""
    steps = []
    if sysusers is not None:
        steps.append(
            Step("run", f"systemd-sysusers {sysusers}", argv=("systemd-sysusers", sysusers))
        )
    nodes = [n for n in DEVICE_NODES if os.path.exists(n)]
    for argv in (
        ("udevadm", "control", "--reload"),
        ("udevadm", "trigger", "--action=change", "--subsystem-match=hidraw"),
        ("udevadm", "trigger", "--action=change", *nodes) if nodes else (),
        ("systemctl", "daemon-reload"),
    ):
        if argv:
            steps.append(Step("run", " ".join(argv), argv=argv))
    return steps


def plan_install(
    root: Path | None,
    *,
    command: Sequence[str],
    source: Path | None = None,
    systemd_running: bool | None = None,
    python: str | None = None,
) -> list[Step]:
    """What ``install-service`` does: the files, the policy directory, then (live system
    only) the commands. Called by :func:`install`; pure but for reading files."""
    src = source or units_dir()
    steps = []
    for path, name in FILES:
        shipped = (src / name).read_text()
        if name == UNIT_NAME:
            content = unit_text(shipped, command).encode()
            detail = "ExecStart=" + " ".join(systemd_quote(w) for w in command) + " run ..."
        elif name == PINS_RULE:
            py = python or strip_root(os.path.abspath(sys.executable), root)
            content, detail = rule_text(shipped, py).encode(), f"RUN {py} -m ..."
        else:
            content, detail = shipped.encode(), ""
        target = _target(root, path)
        same = target.is_file() and target.read_bytes() == content
        steps.append(Step("unchanged" if same else "write", str(target), detail, content))
    policies = _target(root, POLICY_DIR)
    if not policies.is_dir():
        steps.append(Step("mkdir", str(policies)))
    if root is not None:
        return steps
    running = _systemd_running() if systemd_running is None else systemd_running
    if running:
        return [*steps, *_reload_steps(FILES[1][0])]
    # no systemd to reload (a container, a chroot): the user is still made
    sysusers = ("systemd-sysusers", FILES[1][0])
    return [*steps, Step("run", " ".join(sysusers), "systemd is not running", argv=sysusers)]


def plan_uninstall(root: Path | None, *, systemd_running: bool | None = None) -> list[Step]:
    """What ``uninstall-service`` does: stop and disable (live system), remove the four
    files, keep the policy directory, take back the pins rule's grants (live system),
    reload. Called by :func:`uninstall`."""
    running = root is None and (_systemd_running() if systemd_running is None else systemd_running)
    steps = []
    unit = _target(root, FILES[0][0])
    if running and unit.exists():
        argv = ("systemctl", "disable", "--now", UNIT_NAME)
        steps.append(Step("run", " ".join(argv), argv=argv, may_fail=True))
    for path, _ in FILES:
        target = _target(root, path)
        exists = target.exists() or target.is_symlink()
        steps.append(Step("remove" if exists else "absent", str(target)))
    policies = _target(root, "/etc/hidbpfd")
    if policies.is_dir():
        steps.append(Step("keep", str(policies), "policy files are never removed"))
    if root is None:
        argv = (os.path.abspath(sys.executable), "-m", "hidbpfd.service.pin_access", "--revoke")
        steps.append(Step("run", " ".join(argv), "the pins rule's grants", argv=argv))
    if running:
        steps += _reload_steps(None)
    return steps


def apply(steps: Sequence[Step], *, dry_run: bool, say: Callable[[str], None]) -> None:
    """Carry out (or, in a dry run, only print) the steps in order; raises
    :class:`InstallError` on the first failure, after saying what was done."""
    for step in steps:
        say(step.line(dry_run=dry_run))
        if dry_run:
            continue
        try:
            _do(step)
        except OSError as e:
            hint = " — run as root (sudo), or give --root DIR" if e.errno in (1, 13) else ""
            raise InstallError(f"{step.verb} {step.what}: {e.strerror}{hint}") from e


def _do(step: Step) -> None:
    path = Path(step.what)
    if step.verb == "write":
        assert step.content is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.hidbpfd-new")
        tmp.write_bytes(step.content)
        tmp.chmod(0o644)
        tmp.replace(path)
    elif step.verb == "mkdir":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif step.verb == "remove":
        path.unlink()
    elif step.verb == "run":
        try:
            done = subprocess.run(step.argv, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise InstallError(f"{step.what}: {step.argv[0]} is not installed") from e
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            msg = f"{step.what} failed (exit {done.returncode}): {why[-1] if why else ''}"
            if not step.may_fail:
                raise InstallError(msg)
            print(f"hidbpfd: {msg}", file=sys.stderr)


def visibility_problem(command: Sequence[str]) -> str:
    """Why the service could not reach its own program (``ProtectHome=yes``), or ``""``."""
    pkg = str(Path(hidbpfd.__file__).resolve().parent)
    hidden = hidden_paths(list(dict.fromkeys([command[0], sys.executable, pkg])))
    if not hidden:
        return ""
    return (
        f"{', '.join(hidden)} is under {' or '.join(HIDDEN_BY_PROTECT_HOME)}, which the unit's "
        "ProtectHome=yes hides from the service, so it could not start. Install hidbpfd "
        "system-wide (pip install), in a venv under /opt, or with pipx and "
        "PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin, then run its install-service"
    )


def install(root: Path | None, *, dry_run: bool, say: Callable[[str], None] = print) -> None:
    """``hidbpfd install-service``: see the module docstring."""
    if root is None and not dry_run and os.geteuid() != 0:
        raise InstallError(
            "install-service changes /etc and reloads systemd: run it as root, "
            "or give --root DIR to stage the files under DIR"
        )
    command = hidbpfd_command(sys.argv[0], sys.executable)
    if root is not None:
        command = [strip_root(command[0], root), *command[1:]]
    problem = visibility_problem(command)
    if problem and root is None and not dry_run:
        raise InstallError(problem)
    if problem and root is not None:
        say(f"warning: {problem}")
    apply(plan_install(root, command=command), dry_run=dry_run, say=say)
    if problem and root is None:
        raise InstallError(f"install-service would refuse: {problem}")
    if root is None and not dry_run:
        say("next: systemctl enable --now hidbpfd")


def uninstall(root: Path | None, *, dry_run: bool, say: Callable[[str], None] = print) -> None:
    """``hidbpfd uninstall-service``: see the module docstring."""
    if root is None and not dry_run and os.geteuid() != 0:
        raise InstallError(
            "uninstall-service changes /etc and reloads systemd: run it as root, or give --root DIR"
        )
    apply(plan_uninstall(root), dry_run=dry_run, say=say)
