"""The pure parts of ``hidbpfd vm``: arguments, the KVM decision, kernel choice, config check."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hidbpfd.vm import boot
from hidbpfd.vm.boot import (
    BOOT_RETRIES,
    BootOutcome,
    boot_again,
    boot_failure,
    failure_excerpt,
    shown,
)
from hidbpfd.vm.command import (
    GUEST_SETUP_FAILED,
    GUEST_WORKDIR,
    READY_MARKER,
    VmArgs,
    exit_line,
    guest_env,
    guest_script,
    kvm_usable,
    parse_args,
    parse_exit_line,
    vng_command,
)
from hidbpfd.vm.setup import (
    VmAssets,
    VmError,
    cache_dir,
    check_kernel_config,
    choose_kernel,
    is_static_elf,
    kernel_dependencies,
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--", "pytest", "-q"], VmArgs(cmd=("pytest", "-q"))),
        (["pytest", "-q", "--", "x"], VmArgs(cmd=("pytest", "-q", "--", "x"))),
        (
            ["--memory", "4G", "--timeout", "60", "--", "sh", "-c", "exit 3"],
            VmArgs(cmd=("sh", "-c", "exit 3"), memory="4G", timeout_s=60.0),
        ),
        (["--rwdir", "/tmp/out", "--", "true"], VmArgs(cmd=("true",), rwdirs=("/tmp/out",))),
        (["--", "--memory"], VmArgs(cmd=("--memory",))),
    ],
)
def test_parse_args(argv: list[str], expected: VmArgs) -> None:
    assert parse_args(argv) == expected


@pytest.mark.parametrize("argv", [[], ["--"], ["--memory", "1G"]])
def test_parse_args_needs_a_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "no command given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("modules", "env", "expected"),
    [
        ({"kvm", "kvm_intel"}, {}, True),
        ({"kvm", "kvm_amd"}, {}, True),
        ({"kvm", "kvm_pvm"}, {}, False),  # paravirtual KVM: a stock kernel hangs under it
        (set(), {}, False),
        ({"kvm", "kvm_pvm"}, {"HIDBPFD_VM_KVM": "1"}, True),
        ({"kvm", "kvm_intel"}, {"HIDBPFD_VM_KVM": "0"}, False),
    ],
)
def test_kvm_only_with_hardware_kvm(
    tmp_path: Path, modules: set[str], env: dict[str, str], expected: bool
) -> None:
    sys_module = tmp_path / "module"
    for name in modules:
        (sys_module / name).mkdir(parents=True)
    dev_kvm = tmp_path / "kvm"
    dev_kvm.touch()
    assert kvm_usable(sys_module, dev_kvm, env) is expected


def test_no_kvm_without_dev_kvm(tmp_path: Path) -> None:
    (tmp_path / "kvm_intel").mkdir()
    assert kvm_usable(tmp_path, tmp_path / "missing", {}) is False


PKGNAMES_OUTPUT = """  # apt-cache pkgnames linux-image- (excerpt)
linux-image-6.16.12+deb13-amd64
linux-image-6.19.14+deb13-amd64
linux-image-7.3.4+deb13-amd64
linux-image-7.3.4+deb13-amd64-dbg
linux-image-7.3.4+deb13-cloud-amd64
linux-image-7.3.4+deb13-rt-amd64
linux-image-7.2.12+deb13-amd64
linux-image-7.10.1+deb13-amd64-unsigned
linux-image-amd64
linux-image-cloud-amd64
"""


def test_choose_kernel_takes_the_newest_plain_amd64_image() -> None:
    assert choose_kernel(PKGNAMES_OUTPUT.split()) == "7.3.4+deb13-amd64"


def test_choose_kernel_compares_versions_numerically() -> None:
    names = ["linux-image-6.9.1+deb13-amd64", "linux-image-6.10.2+deb13-amd64"]
    assert choose_kernel(names) == "6.10.2+deb13-amd64"


def test_choose_kernel_without_candidates() -> None:
    assert choose_kernel(["linux-image-amd64", "linux-headers-7.3.4+deb13-amd64"]) is None


def test_kernel_dependencies_follow_the_split_packages() -> None:
    depends = (
        " dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool,"
        " linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1),"
        " linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1),"
        " linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), kmod"
    )
    assert kernel_dependencies("7.3.4+deb13-amd64", depends) == [
        "linux-base-7.3.4+deb13-amd64",
        "linux-binary-7.3.4+deb13-amd64",
        "linux-modules-7.3.4+deb13-amd64",
    ]
    assert kernel_dependencies("7.3.4+deb13-amd64", "") == []


GOOD_CONFIG = """
# CONFIG_FOO is not set
CONFIG_HID_BPF=y
CONFIG_UHID=m
CONFIG_HIDRAW=y
CONFIG_INPUT_UINPUT=m
CONFIG_HID_GENERIC=m
CONFIG_INPUT_EVDEV=m
CONFIG_BPF_SYSCALL=y
CONFIG_DEBUG_INFO_BTF=y
"""


def test_config_check_accepts_a_hid_bpf_kernel() -> None:
    assert check_kernel_config(GOOD_CONFIG) == []


def test_config_check_names_what_is_missing() -> None:
    text = GOOD_CONFIG.replace("CONFIG_HID_BPF=y", "# CONFIG_HID_BPF is not set").replace(
        "CONFIG_UHID=m", "CONFIG_UHID=n"
    )
    problems = check_kernel_config(text)
    assert problems == [
        "CONFIG_HID_BPF is 'n', need CONFIG_HID_BPF=y",
        "CONFIG_UHID is 'n', need CONFIG_UHID=y or CONFIG_UHID=m",
    ]


def test_config_check_wants_hid_bpf_built_in() -> None:
    assert check_kernel_config(GOOD_CONFIG.replace("CONFIG_HID_BPF=y", "CONFIG_HID_BPF=m")) == [
        "CONFIG_HID_BPF is 'm', need CONFIG_HID_BPF=y"
    ]


def test_guest_env_passes_only_what_the_command_needs() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "VIRTUAL_ENV": "/work/.venv",
        "HIDBPFD_REQUIRE_DEVICE": "1",
        "PYTEST_ADDOPTS": "-x",
        "SSH_AUTH_SOCK": "/tmp/agent",
        "HOME": "/root",
    }
    assert guest_env(env) == {
        "HIDBPFD_REQUIRE_DEVICE": "1",
        "PATH": "/usr/bin:/bin",
        "PYTEST_ADDOPTS": "-x",
        "VIRTUAL_ENV": "/work/.venv",
    }


def test_guest_env_activates_the_venv_we_run_from() -> None:
    got = guest_env({"PATH": "/usr/bin:/w/.venv/bin"}, venv="/w/.venv")
    assert got == {"PATH": "/w/.venv/bin:/usr/bin", "VIRTUAL_ENV": "/w/.venv"}
    # an explicitly activated venv wins
    assert guest_env({"PATH": "/a", "VIRTUAL_ENV": "/v"}, venv="/w/.venv")["VIRTUAL_ENV"] == "/v"


def test_guest_script_sets_up_then_execs_the_command_quoted() -> None:
    script = guest_script(["python", "-c", "print('a b')"], "/work/my repo", {"PATH": "/x y:/bin"})
    lines = script.splitlines()
    assert lines[0].startswith("modprobe -a uhid uinput hid-generic evdev")
    assert any("mount -t bpf bpf /sys/fs/bpf" in line for line in lines)
    ready = next(i for i, line in enumerate(lines) if READY_MARKER in line)
    assert lines[ready + 1 :] == [
        "export PATH='/x y:/bin'",
        "cd '/work/my repo' || exit 125",
        "exec python -c 'print('\"'\"'a b'\"'\"')'",
    ]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_guest_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / "guest.sh"
    script.write_text(guest_script(["true"], "/", {}))
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def _assets() -> VmAssets:
    root = Path("/cache/kernels/7.3.4+deb13-amd64/usr/lib/modules/7.3.4+deb13-amd64")
    return VmAssets(
        release="7.3.4+deb13-amd64",
        kernel_image=root / "vmlinuz",
        modules_dir=root,
        vng=Path("/venv/bin/vng"),
        scripts_dir=Path("/venv/bin"),
    )


def test_vng_command_without_kvm_overlays_the_work_tree() -> None:
    cmd = vng_command(
        _assets(), Path("/cache/run/g.sh"), cwd="/work/main", memory="2G", use_kvm=False
    )
    assert cmd[:3] == ["/venv/bin/vng", "--run", str(_assets().kernel_image)]
    assert "--disable-kvm" in cmd
    assert cmd[cmd.index("--overlay-rwdir") + 1] == "/work/main"
    assert cmd[-2:] == ["--exec", "exec /bin/sh /cache/run/g.sh"]
    append = cmd[cmd.index("--append") + 1]
    assert "module_blacklist=" in append and "modprobe.blacklist=" in append
    assert "uhid" not in append and "evdev" not in append and "hid" not in append.split("=")[1]


def test_vng_command_with_kvm_and_rwdirs() -> None:
    cmd = vng_command(
        _assets(),
        Path("/c/g.sh"),
        cwd="/work/main",
        memory="4G",
        use_kvm=True,
        rwdirs=["/work/main"],
    )
    assert "--disable-kvm" not in cmd
    assert cmd[cmd.index("--memory") + 1] == "4G"
    assert cmd[cmd.index("--rwdir") + 1] == "/work/main"
    assert "--overlay-rwdir" not in cmd  # writable already


def test_vng_command_needs_no_overlay_where_virtme_has_one() -> None:
    cmd = vng_command(_assets(), Path("/c/g.sh"), cwd="/tmp/x", memory="2G", use_kvm=False)
    assert "--overlay-rwdir" not in cmd


def test_the_kernel_command_line_stays_short() -> None:
    # x86 cuts the kernel command line at 2048 bytes and virtme-ng uses ~800 of them
    cmd = vng_command(_assets(), Path("/c/g.sh"), cwd="/w", memory="2G", use_kvm=False)
    ours = len(cmd[cmd.index("--append") + 1]) + len(cmd[-1]) * 4 // 3
    assert ours < 900, shlex.join(cmd)


def test_cache_dir_default_and_override() -> None:
    assert cache_dir({}) == Path("/var/lib/hidbpfd/vm")
    assert cache_dir({"HIDBPFD_VM_CACHE": "/srv/vm"}) == Path("/srv/vm")


def test_cache_dir_refuses_what_the_guest_cannot_see() -> None:
    with pytest.raises(VmError, match="tmpfs"):
        cache_dir({"HIDBPFD_VM_CACHE": "/var/cache/hidbpfd/vm"})


def test_is_static_elf(tmp_path: Path) -> None:
    assert is_static_elf(Path("/bin/sh")) is False  # dynamically linked
    not_elf = tmp_path / "script"
    not_elf.write_text("#!/bin/sh\n")
    assert is_static_elf(not_elf) is False
    assert is_static_elf(tmp_path / "missing") is False
    busybox = shutil.which("busybox")
    if (
        busybox
        and "statically linked"
        in subprocess.run(
            ["file", "-L", busybox], capture_output=True, text=True, check=False
        ).stdout
    ):
        assert is_static_elf(Path(busybox)) is True


def test_main_reports_errors_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(*_args: object, **_kwargs: object) -> int:
        raise VmError("cannot download the package lists")

    monkeypatch.setattr(boot, "run_in_vm", fail)
    assert boot.main(["--", "true"]) == 2
    assert capsys.readouterr().err == "hidbpfd vm: error: cannot download the package lists\n"


def _outcome(returncode: int = 255, *, ready: bool = False, killed_for: str = "") -> BootOutcome:
    return BootOutcome(returncode, ready, killed_for, "")


@pytest.mark.parametrize(
    ("outcome", "again"),
    [
        (_outcome(255), True),  # virtme-run: qemu ended without the script's exit code
        (_outcome(1), True),  # vng itself failed before the guest said anything
        (_outcome(-9), True),  # qemu/vng killed by someone else
        (_outcome(0, ready=True), False),  # the command ran: its exit code is the answer
        (_outcome(255, ready=True), False),  # the command ran, then the guest died
        (_outcome(GUEST_SETUP_FAILED), False),  # the guest came up and said why it failed
        (_outcome(-9, killed_for="the guest did not come up within 300 s"), False),
        (_outcome(-9, killed_for="interrupted"), False),
        (_outcome(-9, killed_for="qemu's KVM cannot run this kernel (emulation failure)"), False),
    ],
)
def test_boot_again_only_for_a_boot_that_ended_before_the_guest_came_up(
    outcome: BootOutcome, again: bool
) -> None:
    assert boot_again(outcome, 1) is again


def test_boot_again_is_bounded() -> None:
    assert BOOT_RETRIES >= 1
    tries = [boot_again(_outcome(255), attempt) for attempt in range(1, BOOT_RETRIES + 3)]
    assert tries == [True] * BOOT_RETRIES + [False, False]
    assert boot_again(_outcome(255), 1, retries=0) is False


def test_boot_failure_says_what_255_means_and_that_vng_was_silent() -> None:
    why = boot_failure(_outcome(255))
    assert "vng exited with 255" in why and "panicked" in why and "printed nothing" in why
    spoke = BootOutcome(1, False, "", "virtme-run: error: something")
    assert boot_failure(spoke) == "vng exited with 1"
    assert boot_failure(_outcome(-9, killed_for="timed out after 5 s")) == "timed out after 5 s"


def test_run_in_vm_boots_again_after_an_early_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two silent 255s, then a boot that comes up: CMD's exit code, each failure on stderr."""
    outcomes = [_outcome(255), _outcome(255), _outcome(3, ready=True)]
    argvs: list[list[str]] = []

    def supervise(argv: list[str], *_args: object, **_kwargs: object) -> BootOutcome:
        argvs.append(list(argv))
        return outcomes.pop(0)

    monkeypatch.setenv("HIDBPFD_VM_CACHE", str(tmp_path))
    monkeypatch.setattr(boot, "_supervise", supervise)
    assert boot.run_in_vm(["true"], cwd=str(tmp_path), assets=_assets()) == 3
    err = capsys.readouterr().err
    assert err.count("failed before the guest came up, booting again. It ended so: vng exited") == 2
    assert "boot 1 of 3" in err and "boot 2 of 3" in err
    assert len(argvs) == 3 and argvs[0] == argvs[2]
    assert not list((tmp_path / "run").iterdir())  # the guest script is gone


def test_run_in_vm_gives_up_after_the_retries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    calls: list[int] = []

    def supervise(*_args: object, **_kwargs: object) -> BootOutcome:
        calls.append(1)
        return _outcome(255)

    monkeypatch.setenv("HIDBPFD_VM_CACHE", str(tmp_path))
    monkeypatch.setattr(boot, "_supervise", supervise)
    with pytest.raises(VmError, match=r"did not boot \(3 attempts\): vng exited with 255"):
        boot.run_in_vm(["true"], cwd=str(tmp_path), assets=_assets())
    assert len(calls) == 1 + BOOT_RETRIES
    assert capsys.readouterr().err.count("booting again") == BOOT_RETRIES


PANIC = [
    "[    1.801234] Kernel panic - not syncing: IO-APIC + timer doesn't work!",
    *(f"[    1.80{i:04d}]  frame_{i}+0x1/0x2" for i in range(40)),
]


def test_failure_excerpt_starts_at_the_panic() -> None:
    output = "\n".join(["vng: something", "", *PANIC])
    excerpt = failure_excerpt(output).splitlines()
    assert excerpt[0] == PANIC[0] and excerpt[-1] == PANIC[-1] and "" not in excerpt
    assert failure_excerpt("a\nb\nc", 2) == "b\nc"  # no panic: the last lines
    assert failure_excerpt("a\nb\nc", 0) == ""
    assert failure_excerpt("\n".join(PANIC), 0).splitlines()[0] == PANIC[0]


def test_boot_failure_quotes_the_guest_kernel_panic() -> None:
    why = boot_failure(BootOutcome(255, False, "", "\n".join(PANIC)))
    assert why.startswith("vng exited with 255 (qemu ended")
    assert "the guest kernel said:\n" + PANIC[0] in why and "printed nothing" not in why
    assert "said" not in boot_failure(BootOutcome(255, False, "", PANIC[0]), quote_panic=False)


@pytest.mark.parametrize(
    ("line", "before", "after"),
    [
        (b"[    0.000000] Linux version 7.3.4+deb13-amd64", False, True),
        (b"[   12.345678] hid-generic 0003:1209:B0B0.0001: hidraw0", False, True),
        (b"Probing EDD (edd=off to disable)... ok", False, True),
        (b"Poking KASLR using RDRAND RDTSC...", False, True),
        (b"[    1.801234] Kernel panic - not syncing: Attempted to kill init!", False, True),
        (b"[  139.757598] reboot: Power down", False, False),
        (b"virtme-run: error: something went wrong", True, True),
        (b"hidbpfd-vm: modprobe uhid uinput hid-generic evdev failed", True, True),
        (b"[1/3] not a kernel line", True, True),
    ],
)
def test_the_guest_kernel_console_is_held_back_until_ready(
    line: bytes, before: bool, after: bool
) -> None:
    assert shown(line, ready=False) is before
    assert shown(line, ready=True) is after


def test_vng_command_keeps_the_console_but_quiet() -> None:
    quiet = vng_command(_assets(), Path("/c/g.sh"), cwd="/w", memory="2G", use_kvm=False)
    loud = vng_command(
        _assets(), Path("/c/g.sh"), cwd="/w", memory="2G", use_kvm=False, verbose=True
    )
    for cmd in (quiet, loud):
        assert "--verbose" in cmd and "--force-9p" in cmd
    assert quiet[quiet.index("--append") + 1].endswith(" loglevel=1")
    assert "loglevel" not in loud[loud.index("--append") + 1]


def test_supervise_holds_the_kernel_console_back_until_ready(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A real child printing like vng: kernel lines before the ready line stay out of our
    output (but in the tail), everything from the ready line on goes through as it comes,
    partial lines too."""
    script = (
        "printf '[    0.000000] Linux version 7\\nvirtme: starting\\n'; sleep 0.2; "
        "printf 'Probing EDD... ok\\nhalf a '; sleep 0.2; printf 'line\\n'; printf 'err\\n' >&2; "
        f"printf '{READY_MARKER} after 1 s\\n[    9.000000] later\\n..'; sleep 0.2; printf '..'; "
        "sleep 0.2; printf '\\n[   10.000000] reboot: Power down\\n'"
    )
    out = boot._supervise(["sh", "-c", script], dict(os.environ), str(tmp_path), None, 60.0)
    seen = capfd.readouterr()
    assert out.ready and out.returncode == 0 and not out.killed_for
    assert "Linux version" not in seen.out and "Probing EDD" not in seen.out
    assert "virtme: starting\nhalf a line\n" in seen.out and seen.err == "err\n"
    assert seen.out.endswith(f"{READY_MARKER} after 1 s\n[    9.000000] later\n....\n")
    assert "[    0.000000] Linux version 7" in out.tail.splitlines()


def test_supervise_passes_everything_when_verbose(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = "printf '[    0.000000] Linux version 7\\n'; exit 255"
    out = boot._supervise(
        ["sh", "-c", script], dict(os.environ), str(tmp_path), None, 60.0, verbose=True
    )
    assert not out.ready and out.returncode == 255
    assert capfd.readouterr().out == "[    0.000000] Linux version 7\n"


# --- the systemd tier (hidbpfd vm --systemd, issue 14) -----------------------------------------


def test_parse_args_systemd() -> None:
    args = parse_args(["--systemd", "--timeout", "600", "--", "python3", "-m", "pytest"])
    assert args.systemd and args.timeout_s == 600 and args.cmd == ("python3", "-m", "pytest")
    assert not parse_args(["true"]).systemd


def test_vng_command_boots_the_rootfs_with_systemd() -> None:
    img = Path("/cache/rootfs/debian12-abc.img")
    cmd = vng_command(
        _assets(),
        Path("/cache/run/g.sh"),
        cwd="/work/main",
        memory="2G",
        use_kvm=False,
        rootfs=img,
    )
    assert cmd[cmd.index("--root-disk") + 1] == str(img)
    assert cmd[cmd.index("--root-fstype") + 1] == "ext4"
    assert {"--rw", "--systemd", "--qemu-opts=-snapshot"} <= set(cmd)  # writes thrown away
    rodirs = [cmd[i + 1] for i, w in enumerate(cmd) if w == "--rodir"]
    assert rodirs == ["/cache/run", "/work/main"]  # the script, and the work tree read-only
    assert "--overlay-rwdir" not in cmd
    assert "systemd.show_status=false" in cmd[cmd.index("--append") + 1]


def test_guest_env_in_the_systemd_tier_is_the_guests() -> None:
    env = {"PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv", "HIDBPFD_X": "1", "HOME": "/r"}
    got = guest_env(env, "/venv", systemd=True)
    assert got == {
        "HIDBPFD_X": "1",
        "HIDBPFD_VM_SYSTEMD": "1",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_guest_script_in_the_systemd_tier_waits_for_the_boot(tmp_path: Path) -> None:
    text = guest_script(["true"], "/", {}, systemd=True)
    assert "systemctl is-system-running --wait" in text
    assert text.index("is-system-running") < text.index("hidbpfd-vm: guest ready")
    assert "umount /etc/shadow" in text and "umount /var/log" in text
    script = tmp_path / "guest.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_guest_script_in_the_systemd_tier_reports_over_the_serial_port(tmp_path: Path) -> None:
    """CMD runs in a local copy of the working directory, its output and exit line go to the
    serial console opened once, then the guest powers off (docs/vm.md: what survives a
    resume)."""
    text = guest_script(["pytest", "-q"], "/w x", {}, systemd=True, nonce="n0")
    lines = text.splitlines()
    copy = next(i for i, line in enumerate(lines) if line.startswith("mkdir -p " + GUEST_WORKDIR))
    assert "tar -C '/w x' --exclude=.venv --exclude=.git" in lines[copy]
    assert lines[copy + 1] == f"cd {GUEST_WORKDIR} || exit 125"
    assert "exec 3>/dev/ttyS0 || exit 125" in lines
    assert '{ pytest -q; echo $? >"$rcfile"; } </dev/null 2>&1 3>&- | cat >&3' in lines
    # opened once: after a resume, opening the serial port again blocks forever
    assert [line for line in lines if "/dev/ttyS0" in line] == [
        "stty -F /dev/ttyS0 -opost 2>/dev/null",
        "exec 3>/dev/ttyS0 || exit 125",
    ]
    assert lines[-2:] == ["sync; poweroff -f", 'exit "$rc"']
    assert not any(line.startswith("exec pytest") for line in lines)
    # the shell's own run of the tail, with the serial port and poweroff replaced
    tail = "\n".join(lines[lines.index("exec 3>/dev/ttyS0 || exit 125") :])
    out = tmp_path / "console"
    script = tmp_path / "tail.sh"
    script.write_text(
        tail.replace("/dev/ttyS0", str(out))
        .replace("pytest -q", "sh -c 'echo hello; echo oops >&2; exit 7'")
        .replace("poweroff -f", "true")
    )
    done = subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 7 and done.stdout == ""
    console = out.read_text().splitlines()
    assert console[:2] == ["hello", "oops"]
    assert parse_exit_line(console[-1], "n0") == 7


def test_exit_line_is_found_only_with_the_run_s_nonce() -> None:
    line = exit_line("abc", 3)
    assert parse_exit_line(line, "abc") == 3
    assert parse_exit_line("\x1b[0m" + line + "\r", "abc") == 3  # serial console noise
    assert parse_exit_line(line, "abd") is None
    assert parse_exit_line(exit_line("abc", "$rc"), "abc") is None
    assert parse_exit_line("hidbpfd-vm: guest ready", "abc") is None


def test_supervise_takes_the_exit_line_s_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vng that prints the exit line and then stays (a guest whose power-off hangs) is
    killed after the grace period, and the run's code is the line's."""
    fake = tmp_path / "vng"
    fake.write_text(
        "#!/bin/sh\n"
        f"echo '{READY_MARKER}' >&2\n"
        "echo output\n"
        f"echo '{exit_line('n1', 4)}' >&2\n"
        "exec sleep 60\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(boot, "POWER_OFF_GRACE_S", 0.2)
    started = time.monotonic()
    outcome = boot._supervise([str(fake)], dict(os.environ), str(tmp_path), 30, 30, nonce="n1")
    assert outcome.returncode == 4 and outcome.ready and not outcome.killed_for
    assert time.monotonic() - started < 30


def test_rootfs_key_follows_what_the_image_is_built_from(monkeypatch: pytest.MonkeyPatch) -> None:
    from hidbpfd.vm import rootfs

    key = rootfs.rootfs_key("http://deb.debian.org/debian")
    assert key == rootfs.rootfs_key("http://deb.debian.org/debian")
    assert key != rootfs.rootfs_key("http://mirror.example/debian")
    monkeypatch.setattr(rootfs, "PACKAGES", (*rootfs.PACKAGES, "strace"))
    assert key != rootfs.rootfs_key("http://deb.debian.org/debian")


def test_rootfs_customize_masks_the_timers(tmp_path: Path) -> None:
    from hidbpfd.vm.rootfs import MASKED, customize

    wants = tmp_path / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "apt-daily.timer").symlink_to("/lib/systemd/system/apt-daily.timer")
    customize(tmp_path)
    assert not (wants / "apt-daily.timer").is_symlink()
    for unit in MASKED:
        assert os.readlink(tmp_path / "etc/systemd/system" / unit) == "/dev/null"
    assert (tmp_path / "etc/hostname").read_text() == "hidbpfd-vm\n"
