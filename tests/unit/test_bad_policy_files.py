"""Hostile policy files (issue 11 §1): each one a located error, never a traceback or a hang.

Table-driven: ``name -> (file text, line, key, fragment of the message)``. Timings are never
asserted; a case that used to hang runs under a generous time-out instead.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hidbpfd.cli import main
from hidbpfd.config import load
from hidbpfd.config.load import MAX_FILES, MAX_POLICIES
from hidbpfd.config.locate import Locator
from hidbpfd.config.read import MAX_FILE_BYTES, MAX_KEY_PARTS, MAX_NESTING

DEV = "[device]\nvendor = 0x1234\n"
POL = '[[policy]]\ntype = "defer"\nmatch = "02"\n'
INJ = '[[policy]]\ntype = "inject"\nmatch = "01"\n'
REINIT = '[[policy]]\ntype = "reinit"\nmatch = "01"\n'
HANG_LIMIT_S = 60  # what used to take minutes; generous for a loaded, emulated machine

CASES: dict[str, tuple[str, int, str, str]] = {
    "delay nan": (DEV + POL + "delay_ms = nan\n", 6, "policy[0].delay_ms", "not a number"),
    "delay +nan": (DEV + POL + "delay_ms = +nan\n", 6, "policy[0].delay_ms", "not a number"),
    "delay -nan": (DEV + POL + "delay_ms = -nan\n", 6, "policy[0].delay_ms", "not a number"),
    "delay inf": (DEV + POL + "delay_ms = inf\n", 6, "policy[0].delay_ms", "not a number"),
    "delay -inf": (DEV + POL + "delay_ms = -inf\n", 6, "policy[0].delay_ms", "not a number"),
    "inject wait nan": (
        DEV + INJ + "reports = ['01', {wait_ms = nan}]\n",
        6,
        "policy[0].reports[1].wait_ms",
        "not a number",
    ),
    "send wait nan": (
        DEV + REINIT + "send = [{feature = '05 01'}, {wait_ms = nan}]\n",
        6,
        "policy[0].send[1].wait_ms",
        "not a number",
    ),
    "vendor nan": (
        "[device]\nvendor = nan\n" + POL + "delay_ms = 1\n",
        2,
        "device.vendor",
        "16-bit",
    ),
    "retries inf": (
        DEV
        + REINIT
        + "send = [{feature = '05'}]\nverify = {report_id = 5, expect = '05'}\nretries = inf\n",
        8,
        "policy[0].retries",
        "integer",
    ),
    "deep arrays": ("x = " + "[" * 5000 + "]" * 5000 + "\n", 1, "(nesting)", "nested 5000 deep"),
    "deep inline tables": (
        DEV + "y = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
        3,
        "(nesting)",
        "nested 3000 deep",
    ),
    "just over the nesting limit": (
        "x = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "\n",
        1,
        "(nesting)",
        f"limit {MAX_NESTING}",
    ),
    "dotted header 100k": (
        DEV + "[" + ".".join(["a"] * 100_000) + "]\n",
        3,
        "(nesting)",
        "100000 parts",
    ),
    "dotted key": (
        DEV + ".".join(["k"] * (MAX_KEY_PARTS + 1)) + " = 1\n",
        3,
        "(nesting)",
        f"{MAX_KEY_PARTS + 1} parts",
    ),
    "[ and spaces in a multi-line string": (
        'x = """\n[' + " " * 50_000 + '\n"""\n' + DEV + "vendr = 2\n",
        6,
        "device.vendr",
        "unknown key",
    ),
    "a [ in a string keeps later lines": (
        'name = "a [ b"\n' + DEV + "vendr = 1\n" + POL + "delay_ms = 1\n",
        4,
        "device.vendr",
        "unknown key",
    ),
    "a { and # in strings": (
        DEV + 'name = "{ # [ \'"\nvendr = 1\n' + POL + "delay_ms = 1\n",
        4,
        "device.vendr",
        "unknown key",
    ),
    "a header in a multi-line string is not a header": (
        DEV + "name = '''\n[[policy]]\n'''\n" + POL + "delay_ms = -1\n",
        9,
        "policy[0].delay_ms",
        "negative",
    ),
    "a line separator inside a string is not a new line": (
        DEV + 'name = "a\u2028b\x85c\u2029"\n' + POL + "delay_ms = -1\n",
        7,
        "policy[0].delay_ms",
        "negative",
    ),
    "too many policies": (
        DEV + (POL + "delay_ms = 1\n") * (MAX_POLICIES + 1),
        3,
        "policy",
        f"limit {MAX_POLICIES}",
    ),
    "too many values": (
        "x = [" + "1," * 30_000 + "]\n",
        1,
        "(size)",
        "keys and array items",
    ),
    "syntax error at the end": (DEV + 'x = "unterminated', 3, "(syntax)", "invalid TOML"),
}


def _load_one(tmp_path: Path, text: str | bytes) -> list[tuple[int, str, str]]:
    p = tmp_path / "50-1234__5678-test.toml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        cfg = ex.submit(load, [p]).result(timeout=HANG_LIMIT_S)
    assert cfg.files == []
    return [(e.line, e.key, str(e)) for e in cfg.errors]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_policy_file(name: str, tmp_path: Path) -> None:
    text, line, key, frag = CASES[name]
    got = _load_one(tmp_path, text)
    assert any((gl, gk) == (line, key) and frag in s for gl, gk, s in got), got
    for gl, _, s in got:
        assert gl >= 1, f"a content error must name its line: {s}"
        assert " — " in s, f"no hint: {s}"
        assert "internal error" not in s, s


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"[device]\nvendor = 1\n# \xff\xfe\n", 3),
        (b"\xc3(", 1),
        (DEV.encode() + b"\n" * 40 + b'name = "\xe9t\xe9"\n', 43),
    ],
)
def test_utf8_errors_name_their_line(tmp_path: Path, data: bytes, line: int) -> None:
    ((gl, key, s),) = _load_one(tmp_path, data)
    assert (gl, key) == (line, "(encoding)") and "not UTF-8" in s, s


def _special(kind: str, d: Path) -> Path:
    p = d / "50-1234__5678-special.toml"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "dangling":
        p.symlink_to(d / "nowhere")
    elif kind == "loop":
        p.symlink_to(p)
    elif kind == "big":
        p.write_text("\n" * (MAX_FILE_BYTES + 1))
    else:
        p.symlink_to(kind)  # a device
    return p


SPECIAL = {
    "fifo": "FIFO",
    "dir": "directory",
    "socket": "socket",
    "/dev/zero": "character device",
    "/dev/urandom": "character device",
    "/dev/null": "character device",
    "dangling": "cannot read",
    "loop": "cannot read",
    "big": "too big",
}


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_files_are_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    (tmp_path / "10-1234__0001-good.toml").write_text(DEV + POL + "delay_ms = 1\n")
    p = _special(kind, tmp_path)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        cfg = ex.submit(load, [tmp_path]).result(timeout=HANG_LIMIT_S)
    assert len(cfg.files) == 1, "the good file still loads"
    (e,) = cfg.errors
    assert e.file == str(p) and SPECIAL[kind] in e.what and e.hint, str(e)


def test_check_on_a_fifo_given_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _special("fifo", tmp_path)
    assert main(["check", str(p)]) == 1
    assert "not a regular file: it is a FIFO" in capsys.readouterr().err


def test_unreadable_config_dir_fails_check(tmp_path: Path) -> None:
    d = tmp_path / "devices.d"
    d.mkdir()
    (d / "10-1234__0001-good.toml").write_text(DEV + POL + "delay_ms = 1\n")
    d.chmod(0)
    try:
        cmd = [sys.executable, "-m", "hidbpfd", "check", str(d)]
        if os.geteuid() == 0:  # root reads anything: check as nobody, like a user would
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv to drop root")
            tmp_path.chmod(0o755)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    finally:
        d.chmod(0o755)
    assert out.returncode == 1, out
    assert "cannot list the directory: Permission denied" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_locator_is_linear_on_a_header_of_spaces() -> None:
    # the old header regex backtracked: 5,000 spaces took over a minute
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        loc = ex.submit(Locator, 'x = """\n[' + " " * 200_000 + '\n"""\ny = 1\n').result(
            timeout=HANG_LIMIT_S
        )
    assert (loc.line("x"), loc.line("y")) == (1, 4)


def test_too_many_files_in_a_directory(tmp_path: Path) -> None:
    for i in range(MAX_FILES + 1):
        (tmp_path / f"{i:04d}.toml").write_text(
            f"[device]\nvendor = {i}\n" + POL + "delay_ms = 1\n"
        )
    cfg = load([tmp_path])
    assert len(cfg.files) == MAX_FILES
    (e,) = cfg.errors
    assert e.file == str(tmp_path) and f"limit {MAX_FILES}" in e.what
