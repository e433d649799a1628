"""``hidbpfd install-service`` and ``uninstall-service`` (issue 14), on the host: with ``--root``
every file lands under DIR and no command runs (systemctl, udevadm and systemd-sysusers are
replaced on PATH by recorders that would show a call); ``--dry-run`` changes nothing; the unit
names the hidbpfd that ran the command; policy files survive an uninstall. The live system's
plan (the reload commands) is checked through the plan functions; the VM tier runs it for
real under systemd (tests/service/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hidbpfd.service.install import (
    FILES,
    InstallError,
    hidbpfd_command,
    hidden_paths,
    plan_install,
    plan_uninstall,
    strip_root,
    systemd_quote,
    unit_text,
)

ROOT = Path(__file__).resolve().parents[2]
HIDBPFD = Path(sys.executable).with_name("hidbpfd")
UNITS = {name: ROOT / "units" / name for _, name in FILES}
RECORDED = ("systemctl", "udevadm", "systemd-sysusers")


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with fake systemctl/udevadm/systemd-sysusers that
    append their command line to a log; and that log."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in RECORDED:
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def hidbpfd(*args: str, env: dict[str, str], exe: list[str] | None = None) -> str:
    done = subprocess.run(
        [*(exe or [str(HIDBPFD)]), *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_root_lands_under_dir_and_runs_nothing(
    tmp_path: Path, recorder: tuple[dict[str, str], Path]
) -> None:
    env, log = recorder
    dest = tmp_path / "dest"
    out = hidbpfd("install-service", "--root", str(dest), env=env)
    assert not log.exists(), f"a command ran: {log.read_text()}"
    files = [p for p in tree(dest) if (dest / p).is_file()]
    assert files == sorted(p.lstrip("/") for p, _ in FILES)
    assert (dest / "etc/hidbpfd/devices.d").is_dir()
    for path, name in FILES[1:3]:
        assert (dest / path.lstrip("/")).read_bytes() == UNITS[name].read_bytes()
        assert oct((dest / path.lstrip("/")).stat().st_mode & 0o777) == "0o644"
    unit = (dest / "etc/systemd/system/hidbpfd.service").read_text().splitlines()
    shipped = UNITS["hidbpfd.service"].read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, unit, strict=True) if a != b]
    exec_start = f"ExecStart={os.path.realpath(HIDBPFD)} run --config /etc/hidbpfd/devices.d"
    assert changed == [
        ("ExecStart=/usr/bin/hidbpfd run --config /etc/hidbpfd/devices.d", exec_start)
    ]
    assert f"write {dest}/etc/systemd/system/hidbpfd.service" in out
    again = hidbpfd("install-service", "--root", str(dest), env=env)
    rule = (dest / "etc/udev/rules.d/82-hidbpfd-pins.rules").read_text()
    shipped_rule = UNITS["82-hidbpfd-pins.rules"].read_text()
    python = HIDBPFD.read_text().splitlines()[0].removeprefix("#!")  # the script's Python
    assert rule == shipped_rule.replace('="/usr/bin/python3 -m', f'="{python} -m'), rule
    assert f'RUN{{program}}+="{python} -m hidbpfd.service.pin_access $kernel"' in rule
    assert again.count("unchanged ") == 4 and "write " not in again, again


def test_install_by_python_m_names_the_interpreter(
    tmp_path: Path, recorder: tuple[dict[str, str], Path]
) -> None:
    env, _ = recorder
    hidbpfd(
        "install-service", "--root", str(tmp_path), env=env, exe=[sys.executable, "-m", "hidbpfd"]
    )
    unit = (tmp_path / "etc/systemd/system/hidbpfd.service").read_text()
    assert f"\nExecStart={sys.executable} -m hidbpfd run --config /etc/hidbpfd/devices.d\n" in unit


def test_install_packager_destdir_strips_root(
    tmp_path: Path, recorder: tuple[dict[str, str], Path]
) -> None:
    """A packager running the hidbpfd staged under DESTDIR gets the target's path."""
    env, _ = recorder
    dest = tmp_path / "dest"
    staged = dest / "usr/bin/hidbpfd"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(HIDBPFD.read_bytes())  # the venv's console script
    staged.chmod(0o755)
    hidbpfd("install-service", "--root", str(dest), env=env, exe=[str(staged)])
    unit = (dest / "etc/systemd/system/hidbpfd.service").read_text()
    assert "\nExecStart=/usr/bin/hidbpfd run --config /etc/hidbpfd/devices.d\n" in unit


def test_dry_run_changes_nothing(tmp_path: Path, recorder: tuple[dict[str, str], Path]) -> None:
    env, log = recorder
    dest = tmp_path / "dest"
    out = hidbpfd("install-service", "--root", str(dest), "--dry-run", env=env)
    assert not dest.exists() and not log.exists()
    for path, _ in FILES:
        assert f"would write {dest}{path}" in out, out
    assert f"would mkdir {dest}/etc/hidbpfd/devices.d" in out
    hidbpfd("install-service", "--root", str(dest), env=env)
    before = {p: (dest / p).stat().st_mtime_ns for p in tree(dest)}
    out = hidbpfd("uninstall-service", "--root", str(dest), "--dry-run", env=env)
    assert {p: (dest / p).stat().st_mtime_ns for p in tree(dest)} == before
    for path, _ in FILES:
        assert f"would remove {dest}{path}" in out, out
    assert not log.exists()


def test_uninstall_keeps_policy_files(
    tmp_path: Path, recorder: tuple[dict[str, str], Path]
) -> None:
    env, log = recorder
    dest = tmp_path / "dest"
    hidbpfd("install-service", "--root", str(dest), env=env)
    policy = dest / "etc/hidbpfd/devices.d/50-mine.toml"
    policy.write_text("[device]\n")
    out = hidbpfd("uninstall-service", "--root", str(dest), env=env)
    assert [p for p in tree(dest) if (dest / p).is_file()] == ["etc/hidbpfd/devices.d/50-mine.toml"]
    assert f"keep {dest}/etc/hidbpfd (policy files are never removed)" in out
    out = hidbpfd("uninstall-service", "--root", str(dest), env=env)
    assert out.count("absent ") == 4, out
    assert not log.exists()


def test_live_plan_reloads_in_order(tmp_path: Path) -> None:
    """Without --root: the files, then sysusers before udev (the rule names the group), the
    udev reload and trigger, daemon-reload; uninstall stops and disables first."""
    steps = plan_install(None, command=["/usr/local/bin/hidbpfd"], systemd_running=True)
    runs = [s.what for s in steps if s.verb == "run"]
    assert runs[0] == "systemd-sysusers /etc/sysusers.d/hidbpfd.conf"
    assert runs[1] == "udevadm control --reload"
    assert runs[2] == "udevadm trigger --action=change --subsystem-match=hidraw"
    assert runs[-1] == "systemctl daemon-reload"
    no_systemd = plan_install(None, command=["/usr/local/bin/hidbpfd"], systemd_running=False)
    assert [s.what for s in no_systemd if s.verb == "run"] == [runs[0]]
    root = tmp_path / "r"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/hidbpfd.service").write_text("")
    assert not any(s.verb == "run" for s in plan_uninstall(root, systemd_running=True))
    undo = [s.argv for s in plan_uninstall(None, systemd_running=True) if s.verb == "run"]
    revoke = (os.path.abspath(sys.executable), "-m", "hidbpfd.service.pin_access", "--revoke")
    assert undo.index(revoke) < undo.index(("udevadm", "control", "--reload")), undo


def test_exec_start_forms() -> None:
    assert hidbpfd_command(str(HIDBPFD), sys.executable) == [os.path.realpath(HIDBPFD)]
    assert hidbpfd_command("/x/hidbpfd/__main__.py", "/opt/v/bin/python") == [
        "/opt/v/bin/python",
        "-m",
        "hidbpfd",
    ]
    assert strip_root("/dest/usr/bin/hidbpfd", Path("/dest")) == "/usr/bin/hidbpfd"
    assert strip_root("/usr/bin/hidbpfd", Path("/dest")) == "/usr/bin/hidbpfd"
    assert systemd_quote("/opt/my venv/bin/hidbpfd") == '"/opt/my venv/bin/hidbpfd"'
    assert systemd_quote("/opt/a%b") == '"/opt/a%%b"'
    assert systemd_quote("/usr/bin/hidbpfd") == "/usr/bin/hidbpfd"
    with pytest.raises(InstallError, match="no 'ExecStart=/usr/bin/hidbpfd"):
        unit_text("[Service]\nExecStart=/bin/true\n", ["/x"])


def test_protect_home_paths_are_named(tmp_path: Path) -> None:
    assert hidden_paths(["/root/.local/bin/hidbpfd", "/usr/bin/hidbpfd"]) == [
        "/root/.local/bin/hidbpfd"
    ]
    link = tmp_path / "python"
    link.symlink_to("/home/u/.pyenv/bin/python3")
    assert hidden_paths([str(link)]) == [f"{link} (really /home/u/.pyenv/bin/python3)"]
