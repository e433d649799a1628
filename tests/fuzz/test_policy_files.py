"""Fuzz: mutated policy files through ``hidbpfd check`` (the loader, the validators, the
kernel engine's parameter check). 0 tracebacks, 0 hangs, every error located.

Seeded (``corpus.SEED``): the same inputs every run. Seeds are the shipped examples and the
regression table of tests/unit/test_bad_policy_files.py.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hidbpfd.cli import main
from hidbpfd.commands.files import cmd_check
from hidbpfd.config import load
from tests.fuzz.corpus import TOML_TOKENS, bounded, corpus
from tests.unit.test_bad_policy_files import CASES

ROOT = Path(__file__).resolve().parents[2]
N_MUTANTS = 3000
CASE_LIMIT_S = 20.0  # per input; the slowest legal input takes well under a second
_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?:warning: )?(?P<key>\S+): .+ — .+$")
_SUMMARY = re.compile(r"^\d+ error\(s\) in \d+ file\(s\); \d+ file\(s\) valid$")


def _seeds() -> list[bytes]:
    files = [p.read_bytes() for p in sorted((ROOT / "config").glob("*.toml"))]
    return files + [text.encode() for text, *_ in CASES.values() if len(text) < 20_000]


def check_output(path: Path, rc: int, err: str) -> int:
    """Assert every stderr line of ``check`` is a located error or the summary; returns the
    number of errors."""
    assert rc in (0, 1), (rc, err)
    n = 0
    for line in err.splitlines():
        if _SUMMARY.match(line):
            continue
        m = _LINE.match(line)
        assert m, f"not FILE:LINE: key: what — hint: {line!r}"
        assert m["file"] == str(path), line
        assert "internal error" not in line, line
        if m["key"] not in ("(file)", "(path)"):
            assert int(m["line"]) >= 1, f"a content error without its line: {line}"
        n += "warning:" not in line
    assert (rc == 1) == (n > 0), err
    return n


def test_mutated_policy_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "50-1234__5678-fuzz.toml"
    rejected = 0
    t0 = time.monotonic()
    for i, data in corpus(_seeds(), TOML_TOKENS, N_MUTANTS):
        p.write_bytes(data)
        with bounded(CASE_LIMIT_S, f"case {i}"):
            # check's own code (load, validators, the kernel engine's parameter check);
            # every 50th through the whole command line
            if i % 50:
                rc = cmd_check(argparse.Namespace(paths=[str(p)], quiet=True))
            else:
                rc = main(["check", "--quiet", str(p)])
        err = capsys.readouterr().err
        try:
            rejected += check_output(p, rc, err) > 0
        except AssertionError as e:
            raise AssertionError(f"case {i} (input {data[:300]!r}...): {e}") from None
    with capsys.disabled():
        print(
            f"\nfuzz policy files: {N_MUTANTS} inputs, {rejected} rejected, "
            f"{time.monotonic() - t0:.1f} s"
        )


# structured documents: random tables and values where a policy expects numbers and strings
_scalar = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=20),
    st.just(float("nan")),
)
_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "type",
        "match",
        "delay_ms",
        "reports",
        "send",
        "verify",
        "retries",
        "on",
        "on_cancel",
        "cancel_on",
        "pass_trigger",
        "name",
        "wait_ms",
        "x",
    ]
)
_types = st.sampled_from(["defer", "inject", "reinit", "release-guard", "nope"])


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return (
            '"'
            + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v)
            + '"'
        )
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_toml(k)} = {_toml(x)}" for k, x in v.items()) + "}"


@settings(max_examples=200)
@given(
    engine=st.sampled_from(["", 'engine = "kernel"\n', 'engine = "x"\n']),
    device=st.dictionaries(
        st.sampled_from(["bus", "vendor", "product", "name", "uniq", "phys", "vendr"]),
        _scalar,
        max_size=4,
    ),
    policies=st.lists(st.tuples(_types, st.dictionaries(_keys, _value, max_size=6)), max_size=5),
)
def test_structured_policy_files(
    tmp_path: Path,
    engine: str,
    device: dict[str, object],
    policies: list[tuple[str, dict[str, object]]],
) -> None:
    text = engine + "[device]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in device.items())
    for t, keys in policies:
        text += f'[[policy]]\ntype = "{t}"\n' + "".join(
            f"{k} = {_toml(v)}\n" for k, v in keys.items() if k != "type"
        )
    p = tmp_path / "50-1234__5678-fuzz.toml"  # one file, rewritten by each example
    p.write_text(text)
    with bounded(CASE_LIMIT_S, "structured case"):
        cfg = load([p])
    for e in cfg.errors:
        assert "internal error" not in e.what, (text, str(e))
        assert e.line >= 1 or e.key in ("(file)", "(path)"), (text, str(e))
