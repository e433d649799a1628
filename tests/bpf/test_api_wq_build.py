"""``<hidbpfd/api.h>`` with ``-DHIDBPFD_ENGINE_KERNEL`` (``api_wq.h``) on the host.

It compiles (clang, -Wall -Werror, against this machine's vmlinux.h) for both calling
conventions of the bpf_wq callback kfunc, into an object with the engine's maps; misuse fails
at compile time with the header's message; and a kernel that lacks a kfunc the engine needs
refuses the object at load, naming it. Running it is the VM tier's job
(tests/device/test_api_wq.py). Skipped only where clang or bpftool is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf.build import BuildError
from hidbpfd.kernel.probe import HID_MODULE_BTF, VMLINUX_BTF
from tests.bpf.api_wq_build import DEMO, build, missing_tools, open_for
from tests.bpf.conftest import require_bpf

REASON = missing_tools()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

IMPL = "-DHIDBPFD_WQ_CALLBACK_IMPL"
KFUNCS = (
    "hid_bpf_get_data",
    "hid_bpf_allocate_context",
    "hid_bpf_release_context",
    "hid_bpf_hw_request",
    "hid_bpf_hw_output_report",
    "hid_bpf_input_report",
    "hid_bpf_try_input_report",
    "bpf_wq_init",
    "bpf_wq_start",
)
"""What api_wq.h declares without __weak, besides the bpf_wq callback kfunc."""
WQ_CALLBACK = {"": "bpf_wq_set_callback", IMPL: "bpf_wq_set_callback_impl"}


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo built for each bpf_wq callback convention ("" and IMPL)."""
    out = {}
    for define in WQ_CALLBACK:
        d = tmp_path_factory.mktemp("api_wq")
        out[define] = build(DEMO, d, *([define] if define else []))
    return out


@pytest.mark.parametrize("define", list(WQ_CALLBACK))
def test_the_demo_compiles_into_an_object_with_the_engine_maps(
    objects: dict[str, Path], define: str
) -> None:
    obj = lb.BpfObject.open_file(str(objects[define]))
    try:
        assert {"hidbpfd_devs", "hidbpfd_slots", "hidbpfd_zero", "demo_ops"} <= set(obj.maps)
        assert "demo_event" in obj.programs
        # no userspace-engine ring in a kernel-engine build: nothing for a daemon to serve
        assert not any("request" in m for m in obj.maps)
    finally:
        obj.close()


def test_including_api_wq_h_alone_fails_with_a_message(tmp_path: Path) -> None:
    src = tmp_path / "alone.bpf.c"
    src.write_text(
        '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include "hid_types.h"\n'
        "#include <hidbpfd/api_wq.h>\n"
    )
    with pytest.raises(BuildError, match=r"api_wq\.h:\d+:\d+: error: .*include <hidbpfd/api\.h>"):
        build(src, tmp_path)


def test_a_callback_that_does_not_exist_fails_at_compile_time(tmp_path: Path) -> None:
    src = tmp_path / "nocb.bpf.c"
    text = DEMO.read_text().replace("hidbpfd_call(hctx, readback,", "hidbpfd_call(hctx, readbak,")
    src.write_text(text)
    with pytest.raises(BuildError, match=r"nocb\.bpf\.c:\d+:\d+: error: .*hidbpfd__wq_readbak"):
        build(src, tmp_path)


def _kernel_funcs(names: list[str]) -> set[str]:
    btfs = [lb.Btf(str(VMLINUX_BTF))]
    if HID_MODULE_BTF.exists():
        btfs.append(lb.Btf(str(HID_MODULE_BTF), base=btfs[0]))
    try:
        return {n for n in names if any(b.find(n, lb.BTF_KIND_FUNC) for b in btfs)}
    finally:
        for b in reversed(btfs):
            b.free()


def test_a_kernel_lacking_a_kfunc_refuses_the_object_naming_it(objects: dict[str, Path]) -> None:
    """Whatever this kernel is, one build lacks something here: a kernel without HID-BPF or
    bpf_wq lacks kfuncs for both, one with everything has only one bpf_wq callback kfunc, or
    (7.x) has both names but _impl with another prototype."""
    require_bpf()
    refused = []
    for define, wq_cb in WQ_CALLBACK.items():
        needed = [*KFUNCS, wq_cb]
        have = _kernel_funcs(needed)
        missing = [n for n in needed if n not in have]
        bpf = open_for(objects[define], "demo_ops", 1)
        caught = _MaybeRefused()
        try:
            with lb.capture_log(quiet=True) as lines, caught:
                bpf.load()
        finally:
            bpf.close()
        log = "\n".join(lines)
        if missing:
            assert caught.value is not None, f"loaded without {missing}"
            # libbpf stops at the first it looks up (in its own order): one of the missing
            named = [n for n in missing if f"'{n}': not found in kernel or module BTFs" in log]
            assert named, log
            assert named[0] in str(caught.value)  # what the loader reports
            refused.append(named[0])
        elif caught.value is not None:
            assert f"'{wq_cb}'" in log and "incompatible" in log, log
            refused.append(wq_cb)
    assert refused, "this kernel accepted both builds: one of them should have been refused"


class _MaybeRefused:
    """Like pytest.raises(lb.BpfError) where the load may also succeed (a kernel with every
    kfunc under this build's names); ``value`` is the error or None."""

    def __init__(self) -> None:
        self.value: lb.BpfError | None = None

    def __enter__(self) -> _MaybeRefused:
        return self

    def __exit__(self, tp: object, value: object, tb: object) -> bool:
        if isinstance(value, lb.BpfError):
            self.value = value
            return True
        return False
