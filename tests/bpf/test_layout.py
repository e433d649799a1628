"""hidbpfd.h is the one layout: the Python constants and struct formats match it.

Compiles the header's layout part with the host C compiler and compares every size and
offset with the Python side; parses its #defines for the constants.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hidbpfd.engine.filter import RECORD_DATA_MAX
from hidbpfd.kernel import filter_codec as B
from hidbpfd.kernel.bpf import HEADER
from hidbpfd.model import PATTERN_MAX, RULES_MAX, RuleFlag


def defines() -> dict[str, int]:
    """The numeric #defines of hidbpfd.h: ``N``, ``(1 << N)`` or another define."""
    out: dict[str, int] = {}
    for m in re.finditer(
        r"^#define\s+(HIDBPFD_\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER.read_text(), re.MULTILINE
    ):
        expr = m.group(2)
        if expr in out:  # #define A B
            out[m.group(1)] = out[expr]
        elif v := re.fullmatch(r"\(?(\d+)(?:\s*<<\s*(\d+))?\)?", expr):
            out[m.group(1)] = int(v.group(1)) << int(v.group(2) or 0)
    return out


def test_constants_match_header() -> None:
    d = defines()
    assert d["HIDBPFD_PATTERN_MAX"] == PATTERN_MAX
    assert d["HIDBPFD_RULES_MAX"] == RULES_MAX
    assert d["HIDBPFD_RECORD_DATA_MAX"] == RECORD_DATA_MAX
    assert d["HIDBPFD_IO_DATA_MAX"] == B.IO_DATA_MAX
    assert d["HIDBPFD_RULE_HOLD"] == RuleFlag.HOLD
    assert d["HIDBPFD_RULE_ARM"] == RuleFlag.ARM
    assert d["HIDBPFD_RULE_WHEN_ARMED"] == RuleFlag.WHEN_ARMED
    assert d["HIDBPFD_REC_HELD"] == B.REC_HELD
    assert d["HIDBPFD_REC_TRUNCATED"] == B.REC_TRUNCATED
    assert [d[f"HIDBPFD_VERDICT_{v}"] for v in ("QUIET", "NOTIFY", "HOLD", "DROPPED")] == [
        B.VERDICT_QUIET,
        B.VERDICT_NOTIFY,
        B.VERDICT_HOLD,
        B.VERDICT_DROPPED,
    ]


PROBE_C = r"""
#include <linux/types.h>
#include <stddef.h>
#include <stdio.h>
#include "hidbpfd.h"
#define F(s, f) printf("\"%s.%s\": %zu,", #s, #f, offsetof(struct s, f))
#define S(s) printf("\"%s\": %zu,", #s, sizeof(struct s))
int main(void) {
    printf("{");
    S(hidbpfd_rule); F(hidbpfd_rule, mask); F(hidbpfd_rule, len); F(hidbpfd_rule, flags);
    F(hidbpfd_rule, group); F(hidbpfd_rule, arm_us);
    S(hidbpfd_armed); F(hidbpfd_armed, until);
    S(hidbpfd_device_rules); F(hidbpfd_device_rules, rules);
    S(hidbpfd_record); F(hidbpfd_record, matched); F(hidbpfd_record, hid_id);
    F(hidbpfd_record, flags); F(hidbpfd_record, len); F(hidbpfd_record, data);
    S(hidbpfd_feed); F(hidbpfd_feed, len); F(hidbpfd_feed, can_hold); F(hidbpfd_feed, data);
    F(hidbpfd_feed, now_ns);
    S(hidbpfd_io); F(hidbpfd_io, len); F(hidbpfd_io, data);
    printf("\"end\": 0}");
    return 0;
}
"""


def offsets(fmt: str) -> list[int]:
    """Byte offset of each field of a struct format (pad bytes ``x`` are not fields)."""
    out, pos = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("<")):
        size = struct.calcsize("<" + (count or "1") + code)
        if code != "x":
            out.append(pos)
        pos += size
    return out


def c_layout(tmp_path: Path, probe_c: str) -> dict[str, int]:
    """Compile and run a layout probe (sizes and offsets printed as JSON by the S()/F()
    macros) against the BPF headers; skips without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to check the header layout with")
    src = tmp_path / "layout.c"
    src.write_text(probe_c)
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(HEADER.parent), str(src), "-o", str(exe)], check=True)
    out: dict[str, int] = json.loads(
        subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    )
    return out


def test_struct_layouts_match_header(tmp_path: Path) -> None:
    c = c_layout(tmp_path, PROBE_C)

    assert c["hidbpfd_rule"] == B.RULE_SIZE
    assert offsets(B.RULE_FORMAT)[1:] == [
        c[f"hidbpfd_rule.{f}"] for f in ("mask", "len", "flags", "group", "arm_us")
    ]
    assert c["hidbpfd_armed"] == B.ARMED_SIZE
    assert offsets(B.ARMED_FORMAT)[1:] == [c["hidbpfd_armed.until"]]
    assert c["hidbpfd_device_rules"] == B.DEVICE_RULES_SIZE
    assert c["hidbpfd_device_rules.rules"] == struct.calcsize(B.DEVICE_RULES_HEADER)
    assert c["hidbpfd_record"] == B.RECORD_SIZE
    assert offsets(B.RECORD_FORMAT)[1:] == [
        c[f"hidbpfd_record.{f}"] for f in ("matched", "hid_id", "flags", "len", "data")
    ]
    assert c["hidbpfd_feed"] == B.FEED_SIZE
    assert offsets(B.FEED_FORMAT)[1:] == [
        c[f"hidbpfd_feed.{f}"] for f in ("len", "can_hold", "data", "now_ns")
    ]
    assert c["hidbpfd_io"] == B.IO_SIZE
    assert offsets(B.IO_FORMAT)[1:] == [c[f"hidbpfd_io.{f}"] for f in ("len", "data")]
