"""``hidbpfd compile`` and ``hidbpfd check`` on ``[[program]]``, through the command line as a
user runs them: a good program builds, one with an error names its file and line (exit 1); a
policy file's objects are checked for a ``hid_bpf_ops`` struct_ops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "programs"

pytestmark = pytest.mark.skipif(
    not (
        shutil.which("clang")
        and shutil.which("bpftool")
        and Path("/sys/kernel/btf/vmlinux").exists()
    ),
    reason="needs clang, bpftool and kernel BTF",
)


def hidbpfd(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "hidbpfd", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.mark.parametrize("engine", ["userspace"])
@pytest.mark.parametrize("name", ["pen-proximity", "macro-key", "wakeup-reinit"])
def test_examples_compile(name: str, engine: str, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / f"{name}.bpf.o"
    res = hidbpfd(
        "compile", str(EXAMPLES / f"{name}.bpf.c"), "-o", str(out), "--engine", engine, cache=cache
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_bytes()[:4] == b"\x7fELF"
    # vmlinux.h was generated once, into the cache
    assert list(cache.glob("hidbpfd/vmlinux-*/vmlinux.h"))


def test_default_output_is_next_to_the_source(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "mine.bpf.c"
    shutil.copy(EXAMPLES / "macro-key.bpf.c", src)
    res = hidbpfd("compile", "-q", str(src), cache=cache)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert (tmp_path / "mine.bpf.o").exists()


def test_an_error_names_file_and_line(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "broken.bpf.c"
    text = (EXAMPLES / "macro-key.bpf.c").read_text()
    line = text.splitlines().index("\tif (!data || source || type != HID_INPUT_REPORT)") + 1
    src.write_text(text.replace("if (!data || source", "if (!dat || source"))
    res = hidbpfd("compile", str(src), cache=cache)
    assert res.returncode == 1
    assert f"{src}:{line}:" in res.stderr and "error:" in res.stderr
    assert "undeclared identifier 'dat'" in res.stderr
    assert "hidbpfd compile: clang failed" in res.stderr
    assert not (tmp_path / "broken.bpf.o").exists()


def test_api_misuse_is_a_compile_error(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "nocb.bpf.c"
    text = (EXAMPLES / "wakeup-reinit.bpf.c").read_text()
    src.write_text(
        text.replace("hidbpfd_call(hctx, verify_enabled,", "hidbpfd_call(hctx, verify_enabeld,")
    )
    res = hidbpfd("compile", str(src), cache=cache)
    assert res.returncode == 1
    assert "verify_enabeld" in res.stderr and f"{src}:" in res.stderr


def test_missing_source(tmp_path: Path, cache: Path) -> None:
    res = hidbpfd("compile", str(tmp_path / "nope.bpf.c"), cache=cache)
    assert res.returncode == 1
    assert "no such file" in res.stderr


def _policy(d: Path, obj: str) -> Path:
    p = d / "50-1209__a001-macro.toml"
    p.write_text(
        f'[device]\nbus = "usb"\nvendor = 0x1209\nproduct = 0xa001\n\n[[program]]\nobject = "{obj}"\n'
    )
    return p


def test_check_accepts_a_program_and_describes_it(tmp_path: Path, cache: Path) -> None:
    assert (
        hidbpfd(
            "compile",
            "-q",
            str(EXAMPLES / "wakeup-reinit.bpf.c"),
            "-o",
            str(tmp_path / "w.bpf.o"),
            cache=cache,
        ).returncode
        == 0
    )
    pol = _policy(tmp_path, "w.bpf.o")
    res = hidbpfd("check", str(pol), cache=cache)
    assert res.returncode == 0, res.stderr
    assert (
        "program[0] w.bpf.o: struct_ops wakeup_reinit, userspace engine, callbacks: verify_enabled"
        in res.stdout
    )


def test_check_lists_the_callbacks_of_a_kernel_engine_object(tmp_path: Path, cache: Path) -> None:
    """A kernel-engine build's callbacks are bpf_wq functions (hidbpfd__wq_NAME in its BTF),
    not programs: check names them all the same."""
    src = EXAMPLES / "wakeup-reinit.bpf.c"
    out = tmp_path / "wk.bpf.o"
    res = hidbpfd("compile", "-q", str(src), "--engine", "kernel", "-o", str(out), cache=cache)
    assert res.returncode == 0, res.stderr
    res = hidbpfd("check", str(_policy(tmp_path, "wk.bpf.o")), cache=cache)
    assert res.returncode == 0, res.stderr
    assert (
        "program[0] wk.bpf.o: struct_ops wakeup_reinit, kernel engine, callbacks: verify_enabled"
        in res.stdout
    ), res.stdout
    # and one without HIDBPFD_CALLBACK has none
    out = tmp_path / "pk.bpf.o"
    pen = EXAMPLES / "pen-proximity.bpf.c"
    res = hidbpfd("compile", "-q", str(pen), "--engine", "kernel", "-o", str(out), cache=cache)
    assert res.returncode == 0, res.stderr
    res = hidbpfd("check", str(_policy(tmp_path, "pk.bpf.o")), cache=cache)
    assert "pk.bpf.o: struct_ops pen_proximity, kernel engine, callbacks: none" in res.stdout


def test_check_refuses_an_object_without_hid_bpf_ops(tmp_path: Path, cache: Path) -> None:
    src = ROOT / "tests" / "bpf" / "programs" / "requests_test.bpf.c"
    assert (
        hidbpfd("compile", "-q", str(src), "-o", str(tmp_path / "t.bpf.o"), cache=cache).returncode
        == 0
    )
    pol = _policy(tmp_path, "t.bpf.o")
    res = hidbpfd("check", str(pol), cache=cache)
    assert res.returncode == 1
    assert f"{pol}:7: program[0].object: " in res.stderr
    assert "no struct_ops of type struct hid_bpf_ops" in res.stderr


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"not an object", "is not a BPF object"),
        (b"\x7fELF\x02\x01\x01" + bytes(57), "libbpf cannot open"),
    ],
)
def test_check_refuses_what_is_no_bpf_object(
    tmp_path: Path, cache: Path, content: bytes, what: str
) -> None:
    (tmp_path / "x.bpf.o").write_bytes(content)
    pol = _policy(tmp_path, "x.bpf.o")
    res = hidbpfd("check", str(pol), cache=cache)
    assert res.returncode == 1
    assert f"{pol}:7: program[0].object: " in res.stderr and what in res.stderr


@pytest.mark.skipif(
    not (ROOT / "hidbpfd/kernel/bpf/include/hidbpfd/api_wq.h").exists(),
    reason="the kernel engine of the API (include/hidbpfd/api_wq.h) is not in this tree",
)
@pytest.mark.parametrize("name", ["pen-proximity", "macro-key", "wakeup-reinit"])
def test_examples_build_for_the_kernel_engine(name: str, tmp_path: Path, cache: Path) -> None:
    from hidbpfd.kernel.programs import inspect_object

    out = tmp_path / f"{name}.bpf.o"
    res = hidbpfd(
        "compile",
        str(EXAMPLES / f"{name}.bpf.c"),
        "-o",
        str(out),
        "--engine",
        "kernel",
        cache=cache,
    )
    assert res.returncode == 0, res.stderr
    info = inspect_object(out)
    assert info.engine == "kernel"  # no request ring: the daemon only attaches it


def test_check_refuses_a_ring_without_the_apis_maps(tmp_path: Path, cache: Path) -> None:
    """An object with a `hidbpfd_requests` ring but not built with this <hidbpfd/api.h>."""
    src = tmp_path / "half.bpf.c"
    src.write_text(
        '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf/bpf_tracing.h>\n'
        '#include <hidbpfd/hid_compat.h>\nchar LICENSE[] SEC("license") = "GPL";\n'
        "struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); }"
        ' hidbpfd_requests SEC(".maps");\n'
        'SEC("struct_ops/hid_device_event")\n'
        "int BPF_PROG(ev, struct hid_bpf_ctx *hctx) { bpf_ringbuf_output(&hidbpfd_requests, hctx, 0, 0); return 0; }\n"
        'SEC(".struct_ops") struct hid_bpf_ops half = { .hid_device_event = (void *)ev };\n'
    )
    assert hidbpfd("compile", "-q", str(src), cache=cache).returncode == 0
    pol = _policy(tmp_path, "half.bpf.o")
    res = hidbpfd("check", str(pol), cache=cache)
    assert res.returncode == 1
    assert "not the maps hidbpfd_keys, hidbpfd_passing, hidbpfd_state" in res.stderr
