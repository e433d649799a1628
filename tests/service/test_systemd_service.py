"""hidbpfd.service under a real systemd, installed from the wheel by the README's commands
(see conftest.py; runs in ``hidbpfd vm --systemd``). In file order: the install, start-up
(active only after READY=1), STATUS=, the sandbox's user, capabilities and device nodes, the
three needs on uhid devices through the unit, reload, the journal's fields, SIGKILL and the
watchdog bringing it back, ``systemd-analyze security``, and uninstall-service."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
import time
from pathlib import Path

import pytest

from hidbpfd.devices.uhid_protocol import UHID_OUTPUT, UHID_SET_REPORT
from tests.device.conftest import run
from tests.helpers import LIMIT_S
from tests.service.conftest import (
    POLICY_DIR,
    capture_device,
    cursor,
    debug_log,
    device_status,
    journal,
    messages_since,
    prop,
    sh,
    status,
    until,
    wait_for,
    wheel,
)

pytestmark = pytest.mark.usefixtures("service")

CAP_PERFMON, CAP_BPF = 38, 39
F13_DOWN, KEYS_UP = bytes.fromhex("01006800"), bytes.fromhex("01000000")
CTRL_C = bytes.fromhex("01010600")
REINIT_OUTPUT, REINIT_FEATURE = bytes.fromhex("10ff801101"), bytes.fromhex("0501")


def main_pid() -> int:
    return int(prop("MainPID"))


def test_installed_by_the_readme_commands() -> None:
    unit = Path("/etc/systemd/system/hidbpfd.service").read_text()
    assert "\nExecStart=/usr/local/bin/hidbpfd run --config /etc/hidbpfd/devices.d\n" in unit
    assert Path("/etc/sysusers.d/hidbpfd.conf").is_file()
    assert Path("/etc/udev/rules.d/60-hidbpfd.rules").is_file()
    assert Path("/etc/udev/rules.d/82-hidbpfd-pins.rules").is_file()
    assert POLICY_DIR.is_dir()
    assert pwd.getpwnam("hidbpfd").pw_shell == "/usr/sbin/nologin"
    assert sh("systemctl", "is-enabled", "hidbpfd").strip() == "enabled"
    assert sh("systemctl", "is-active", "hidbpfd").strip() == "active"
    # the daemon runs from the installed wheel, with its prebuilt BPF objects
    exe = os.readlink(f"/proc/{main_pid()}/exe")
    cmdline = Path(f"/proc/{main_pid()}/cmdline").read_bytes().split(b"\0")
    assert exe.startswith("/usr/bin/python3"), exe
    assert cmdline[1] == b"/usr/local/bin/hidbpfd", cmdline
    objects = list(Path("/usr/local/lib").glob("python3*/dist-packages/hidbpfd/kernel/bpf/*.bpf.o"))
    assert len(objects) >= 4, objects  # prebuilt in the wheel: the guest has no clang


def test_active_only_after_ready() -> None:
    """Type=notify: the unit stays "activating" until the daemon says READY=1, which it sends
    once its control socket answers; systemd's own log shows READY=1 before start -> running."""
    with debug_log():
        states, lines, pid = restart_and_watch()
    assert "activating" in states, states
    ready = next(
        (
            i
            for i, m in enumerate(lines)
            if f"notification message from PID {pid}" in m and "READY=1" in m
        ),
        None,
    )
    running = next((i for i, m in enumerate(lines) if "Changed start -> running" in m), None)
    assert ready is not None and running is not None, "\n".join(lines)
    assert ready < running, "\n".join(lines)


def restart_and_watch() -> tuple[list[str], list[str], int]:
    """Restart without waiting; the unit's states until active; systemd's lines; the pid."""
    cur = cursor()
    old_pid = main_pid()
    sh("systemctl", "restart", "--no-block", "hidbpfd")
    states = []
    deadline = time.monotonic() + LIMIT_S
    # until the new process is active (the old one may still be "active" for a moment)
    while (state := prop("ActiveState")) != "active" or main_pid() in (old_pid, 0):
        states.append(state)
        assert state in ("active", "activating", "deactivating", "inactive"), states
        assert time.monotonic() < deadline, f"never active again: {states}"
        time.sleep(0.05)
    assert status() is not None, "active, but the control socket does not answer"
    return states, messages_since(cur), main_pid()


def test_status_line_in_systemctl_status() -> None:
    out = sh("systemctl", "status", "--no-pager", "hidbpfd")
    m = re.search(r'Status: "(\d+) of (\d+) HID devices managed, (\d+) policies;', out)
    assert m, out
    assert prop("StatusText").startswith(m.group(0).split('"', 1)[1])


def test_user_capabilities_and_sandbox() -> None:
    pid = main_pid()
    st = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    uid = pwd.getpwnam("hidbpfd").pw_uid
    gid = grp.getgrnam("hidbpfd").gr_gid
    assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(gid)] * 4, st["Gid"]
    want = (1 << CAP_BPF) | (1 << CAP_PERFMON)
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(st[field], 16) == want, f"{field} {st[field]}"
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"  # SystemCallFilter= in force
    # ProtectHome=, ProtectSystem=strict, PrivateTmp=: the daemon's view of the file system
    mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    assert " /home " in mounts and " /tmp " in mounts, mounts


def test_three_needs_through_the_unit() -> None:
    """On uhid devices, through the service: F13 is held and Ctrl+C injected instead (hold,
    inject); the wake-up device gets its output and feature reports when it is plugged in."""

    async def body() -> None:
        async with (
            capture_device("macro-key.hid") as keys,
            capture_device("wakeup-reinit.hid") as wake,
        ):
            await wait_for(
                lambda: REINIT_FEATURE in wake.received(UHID_SET_REPORT), "reinit's feature"
            )
            assert REINIT_OUTPUT in wake.received(UHID_OUTPUT)
            keys.uhid.input(F13_DOWN)
            await wait_for(lambda: keys.read[-2:] == [CTRL_C, KEYS_UP], "Ctrl+C injected")
            keys.uhid.input(KEYS_UP)
            await wait_for(lambda: len(keys.read) >= 3, "the release passed")
            # F13 held (applications never see it), Ctrl+C down and up injected, then ours
            assert keys.read == [CTRL_C, KEYS_UP, KEYS_UP], keys.read
            counters = (device_status(keys.hid_id) or {})["counters"]
            assert counters["held"] >= 1 and counters["injected"] >= 2, counters
            wcounters = (device_status(wake.hid_id) or {})["counters"]
            assert wcounters["output"] >= 1 and wcounters["feature"] >= 1, wcounters

    run(body())


def test_udev_rule_gives_the_nodes() -> None:
    """The rule's group on hidraw, uhid and uinput, and the daemon (not root) holds them."""

    async def body() -> None:
        async with capture_device("wakeup-reinit.hid") as wake:
            gid = grp.getgrnam("hidbpfd").gr_gid
            for node in ("/dev/uhid", "/dev/uinput", wake.hidraw):
                s = os.stat(node)
                assert s.st_gid == gid and stat.S_IMODE(s.st_mode) == 0o660, (node, s)
            pid = main_pid()
            fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            await wait_for(
                lambda: (
                    wake.hidraw
                    in {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
                ),
                f"the daemon to hold {wake.hidraw} open (it holds {sorted(fds)})",
            )

    run(body())


def test_reload_keeps_the_last_good_version() -> None:
    """systemctl reload: RELOADING=1 then READY=1 (systemd's log: reload -> running); then
    a broken file keeps its last good version and the daemon keeps serving."""
    with debug_log():
        reload_and_break()


def reload_and_break() -> None:
    extra = POLICY_DIR / "50-28bd__0905-pen-proximity.toml"
    good = (Path(__file__).resolve().parents[2] / "config" / extra.name).read_text()
    before = status() or {}
    cur = cursor()
    extra.write_text(good)
    sh("systemctl", "reload", "hidbpfd")
    after = until(lambda: (s := status()) and s["reloads"] > before["reloads"] and s, "the reload")
    assert str(extra) in after["files"] and not after["config_errors"], after
    lines = messages_since(cur)
    pid = main_pid()
    reloading = [i for i, m in enumerate(lines) if f"PID {pid}" in m and "RELOADING=1" in m]
    ready = [i for i, m in enumerate(lines) if f"PID {pid}" in m and "READY=1" in m]
    assert reloading and ready and reloading[0] < ready[-1], "\n".join(lines)
    assert any("Changed reload -> running" in m for m in lines), "\n".join(lines)
    # now break it: the file keeps its last good version, the daemon keeps serving
    extra.write_text(good.replace("delay_ms = 20", "delay_ms = -5"))
    sh("systemctl", "reload", "hidbpfd")
    bad = until(lambda: (s := status()) and s["reloads"] > after["reloads"] and s, "the bad reload")
    assert any(f"{extra}:" in e and "delay_ms" in e for e in bad["config_errors"]), bad
    assert str(extra) in bad["files"], bad
    assert sh("systemctl", "is-active", "hidbpfd").strip() == "active"
    extra.unlink()
    sh("systemctl", "reload", "hidbpfd")


def test_journal_fields_and_priorities() -> None:
    """A device that refuses its feature report: the error reaches the journal with the
    HIDBPFD_* fields and priority 3 (err)."""

    async def body() -> str:
        async with capture_device("wakeup-reinit.hid", set_report=lambda ev: errno.EPIPE) as wake:
            hid = wake.hid_id
            await wait_for(
                lambda: any(e.get("HIDBPFD_DEVICE") == hid for e in journal("-p", "err")),
                "the journal entry",
            )
            return hid

    hid = run(body())
    entry = next(e for e in journal() if e.get("HIDBPFD_DEVICE") == hid)
    assert entry["PRIORITY"] == "3", entry
    assert entry["HIDBPFD_VENDOR"] == "1209" and entry["HIDBPFD_PRODUCT"] == "a002", entry
    assert entry["HIDBPFD_FILE"] == "50-1209__a002-wakeup-reinit.toml", entry
    assert entry["HIDBPFD_POLICY"].startswith("50-1209__a002-wakeup-reinit.toml#0"), entry
    assert entry["SYSLOG_IDENTIFIER"] == "hidbpfd" and entry["_SYSTEMD_UNIT"] == "hidbpfd.service"


def serves_again() -> None:
    async def body() -> None:
        async with capture_device("macro-key.hid") as keys:
            keys.uhid.input(F13_DOWN)
            await wait_for(lambda: CTRL_C in keys.read, "Ctrl+C from the restarted daemon")

    run(body())


def test_sigkill_restarts_and_serves() -> None:
    pid, restarts = main_pid(), int(prop("NRestarts"))
    os.kill(pid, 9)
    until(
        lambda: int(prop("NRestarts")) > restarts and prop("ActiveState") == "active",
        "Restart=on-failure",
    )
    assert main_pid() != pid
    serves_again()


def test_stopped_process_is_restarted_by_the_watchdog() -> None:
    pid, restarts = main_pid(), int(prop("NRestarts"))
    cur = cursor()
    os.kill(pid, 19)  # SIGSTOP: no more WATCHDOG=1
    until(
        lambda: int(prop("NRestarts")) > restarts and prop("ActiveState") == "active",
        "the watchdog's restart",
        timeout_s=LIMIT_S + 30,
    )
    assert main_pid() != pid
    system = sh("journalctl", "--no-pager", "-o", "cat", "--after-cursor", cur)
    assert "hidbpfd.service: Watchdog timeout" in system, system
    serves_again()


def test_security_exposure_of_the_installed_unit() -> None:
    out = sh("systemd-analyze", "security", "--no-pager", "hidbpfd")
    m = re.search(r"Overall exposure level for hidbpfd\.service: ([\d.]+)", out)
    assert m and float(m.group(1)) <= 2.0, out


def test_uninstall_service_keeps_the_policies() -> None:
    sh("hidbpfd", "uninstall-service")
    assert sh("systemctl", "is-active", "hidbpfd", check=False).strip() == "inactive"
    for path in (
        "/etc/systemd/system/hidbpfd.service",
        "/etc/sysusers.d/hidbpfd.conf",
        "/etc/udev/rules.d/60-hidbpfd.rules",
        "/etc/udev/rules.d/82-hidbpfd-pins.rules",
    ):
        assert not Path(path).exists(), path
    assert sorted(p.name for p in POLICY_DIR.iterdir()) == [
        "50-1209__a001-macro-key.toml",
        "50-1209__a002-wakeup-reinit.toml",
    ]


def test_a_venv_install_runs_the_same_way() -> None:
    """The venv form of docs/service.md, after the system-wide one is gone: the unit names
    the venv's hidbpfd, and it runs and answers."""
    sh("pip", "uninstall", "-y", "--break-system-packages", "hidbpfd")
    venv = Path("/opt/hidbpfd")
    sh("python3", "-m", "venv", "--system-site-packages", str(venv))
    sh(str(venv / "bin/pip"), "install", str(wheel()), timeout=300)
    sh(str(venv / "bin/hidbpfd"), "install-service")
    sh("systemctl", "enable", "--now", "hidbpfd", timeout=300)
    try:
        cmdline = Path(f"/proc/{main_pid()}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1] == b"/opt/hidbpfd/bin/hidbpfd", cmdline
        assert cmdline[0] == b"/opt/hidbpfd/bin/python3", cmdline
        until(lambda: sh(str(venv / "bin/hidbpfd"), "status", check=False), "its status")
    finally:
        sh(str(venv / "bin/hidbpfd"), "uninstall-service")


PIPX_ENV = ("PIPX_HOME=/opt/pipx", "PIPX_BIN_DIR=/usr/local/bin")


def test_a_pipx_install_runs_the_same_way() -> None:
    """The pipx form of docs/service.md (pipx's home and bin outside the home directories the
    unit hides): the unit names the hidbpfd of pipx's venv, and it runs and answers."""
    assert not Path("/etc/systemd/system/hidbpfd.service").exists()  # the venv test took it
    sh("env", *PIPX_ENV, "pipx", "install", "--system-site-packages", str(wheel()), timeout=300)
    try:
        assert os.path.realpath("/usr/local/bin/hidbpfd") == "/opt/pipx/venvs/hidbpfd/bin/hidbpfd"
        sh("hidbpfd", "install-service")
        sh("systemctl", "enable", "--now", "hidbpfd", timeout=300)
        try:
            cmdline = Path(f"/proc/{main_pid()}/cmdline").read_bytes().split(b"\0")
            assert cmdline[1] == b"/opt/pipx/venvs/hidbpfd/bin/hidbpfd", cmdline
            assert prop("User") == "hidbpfd"
            until(lambda: sh("hidbpfd", "status", check=False), "its status")
        finally:
            sh("hidbpfd", "uninstall-service")
    finally:
        sh("env", *PIPX_ENV, "pipx", "uninstall", "hidbpfd")
