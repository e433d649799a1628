"""The daemon's settings file: defaults, every key, every error naming file/line/key, flags
overriding the file, and the real-time knobs' own errors naming the knob."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidbpfd.cli import main
from hidbpfd.config.errors import ConfigErrors
from hidbpfd.config.settings import Settings, load_settings
from hidbpfd.service.realtime import apply_realtime

FULL = """\
[daemon]
ring_kib = 4096
timer_spin_us = 300
busy_poll = false

[realtime]
sched_fifo = 10
cpu = 0
mlockall = true
"""


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "none.toml", missing_ok=True) == Settings()
    with pytest.raises(ConfigErrors, match=r"none\.toml:0: \(file\): not found"):
        load_settings(tmp_path / "none.toml")


def test_every_key(tmp_path: Path) -> None:
    f = tmp_path / "hidbpfd.toml"
    f.write_text(FULL)
    s = load_settings(f)
    assert s == Settings(4096, 300, False, 10, 0, True)
    assert s.knobs() == ["timer_spin_us=300", "sched_fifo=10", "cpu=0", "mlockall"]
    assert Settings().knobs() == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[daemon]\nring_kib = 1000\n", ":2: daemon.ring_kib: 1000 must be a power of 2"),
        ("[daemon]\nring_kib = 2\n", ":2: daemon.ring_kib: 2 must be a power of 2, at least 4"),
        ("[daemon]\nbusy_poll = 1\n", ":2: daemon.busy_poll: 1 must be true or false"),
        ("[daemon]\ntimer_spin_us = -1\n", ":2: daemon.timer_spin_us: -1 must be 0-10000"),
        ("\n[realtime]\nsched_fifo = 100\n", ":3: realtime.sched_fifo: 100 must be 0 (off)"),
        ("[realtime]\ncpu = 4096\n", ":2: realtime.cpu: 4096 must be a CPU of this machine"),
        ("[realtime]\ncpu = true\n", ":2: realtime.cpu: True must be an integer"),
        ("[realtime]\nmlock = true\n", ":2: realtime.mlock: unknown key 'mlock'"),
        ("[policy]\nx = 1\n", ":1: policy: unknown table 'policy'"),
        ("daemon = 3\n", ":1: daemon: must be a table"),
        ("[daemon\n", ":1: (syntax): invalid TOML"),
        (
            "[daemon]\nbusy_poll = true\n[realtime]\nsched_fifo = 5\n",
            ":2: daemon.busy_poll: a busy-polling SCHED_FIFO task is throttled",
        ),
    ],
)
def test_errors_name_file_line_key(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "hidbpfd.toml"
    f.write_text(text)
    with pytest.raises(ConfigErrors) as e:
        load_settings(f)
    assert f"{f}{where}" in str(e.value)


def test_all_errors_at_once(tmp_path: Path) -> None:
    f = tmp_path / "hidbpfd.toml"
    f.write_text("[daemon]\nring_kib = 3\nbusy_poll = 2\n")
    with pytest.raises(ConfigErrors) as e:
        load_settings(f)
    assert [x.key for x in e.value.errors] == ["daemon.ring_kib", "daemon.busy_poll"]


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "hidbpfd.toml"
    f.write_text(FULL)
    s = load_settings(f).override(ring_kib=None, timer_spin_us=0, sched_fifo=0, busy_poll=True)
    assert (s.ring_kib, s.timer_spin_us, s.busy_poll, s.sched_fifo) == (4096, 0, True, 0)
    with pytest.raises(ValueError, match="busy_poll with sched_fifo"):
        load_settings(f).override(busy_poll=True)
    with pytest.raises(ValueError, match="--sched-fifo 200: must be 0"):
        Settings().override(sched_fifo=200)


def test_run_refuses_a_bad_settings_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "hidbpfd.toml"
    f.write_text("[daemon]\nring_kib = 3\n")
    assert main(["run", "--settings", str(f), "--config", str(tmp_path), "--no-socket"]) == 1
    assert f"{f}:2: daemon.ring_kib: 3 must be a power of 2" in capsys.readouterr().err


def test_realtime_refusals_name_the_knob() -> None:
    if os.geteuid() == 0:
        # root may set SCHED_FIFO: check the affinity path with a CPU that cannot exist
        with pytest.raises(OSError, match="cpu = 4095: sched_setaffinity"):
            apply_realtime(Settings(cpu=4095))
    else:
        with pytest.raises(OSError, match="sched_fifo = 10: sched_setscheduler"):
            apply_realtime(Settings(sched_fifo=10))


def test_a_refused_knob_says_which_and_under_systemd_the_drop_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message ``run`` prints: the knob, the call, the reason, no "[Errno N]"; run by
    systemd ($INVOCATION_ID), the drop-in that allows it."""
    import errno as errno_mod
    import os

    def refuse(pid: int, cpus: object) -> None:
        raise OSError(errno_mod.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    with pytest.raises(OSError) as e:
        apply_realtime(Settings(cpu=1))
    assert str(e.value) == "cpu = 1: sched_setaffinity: Operation not permitted"
    assert e.value.errno == errno_mod.EPERM
    monkeypatch.setenv("INVOCATION_ID", "x")
    with pytest.raises(OSError) as e:
        apply_realtime(Settings(cpu=1))
    assert str(e.value).endswith(
        "(hidbpfd.service refuses the real-time knobs unless its "
        "real-time drop-in is installed: see docs/service.md, "
        "'Real-time knobs under the unit')"
    )
