"""Policy arguments declared as data.

Each policy lists its TOML keys as :class:`Param` values; :mod:`hidbpfd.config` validates a
``[[policy]]`` table against that list generically (collecting every error) and hands the
policy's ``from_params`` typed values. No I/O here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hidbpfd.model import HexError, Pattern, parse_hex

NS_PER_MS: Final = 1_000_000
MAX_DELAY_MS: Final = 3_600_000
INJECT_MAX: Final = 512
"""Bytes one injected report can have: what the in-kernel injector carries
(``HIDBPFD_IO_DATA_MAX``, ``kernel/filter_codec.py``'s ``IO_DATA_MAX``; the uhid mirror takes more,
but which injector a device gets depends on its kernel). ``check`` names it."""
SEND_MAX: Final = 4096
"""Bytes one output or feature report (and a verify read) can have: uhid's ``UHID_DATA_MAX``,
the most a uhid device takes through hidraw (hidraw itself takes up to 16384)."""


class Kind(enum.Enum):
    """How a TOML value is read."""

    PATTERN = "pattern"  # "02 00 ?? ??" -> Pattern
    REPORT = "report"  # "01 00 06 00" -> bytes to inject, no wildcards, at most INJECT_MAX
    DURATION_MS = "duration_ms"  # number of ms >= 0 -> int ns
    BOOL = "bool"
    INT = "int"
    CHOICE = "choice"  # one of Param.choices
    CHOICES = "choices"  # list of Param.choices
    INJECT_STEPS = "inject_steps"  # ["01 00", {wait_ms = 5}, ...]
    SEND_STEPS = "send_steps"  # [{output = "..."}, {feature = "..."}, {wait_ms = 10}]
    VERIFY = "verify"  # {report_id = 5, expect = "05 01 ??", length = 2}
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class Param:
    """One TOML key of a policy: name, kind, whether required, default, limits and help."""

    name: str
    kind: Kind
    help: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 1 << 31


@dataclass(frozen=True, slots=True)
class Wait:
    """A pause between steps of a sequence."""

    ns: int


@dataclass(frozen=True, slots=True)
class Output:
    """Send an output report (a step of ``send``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Feature:
    """Set a feature report (a step of ``send``)."""

    data: bytes


InjectStep = bytes | Wait
SendStep = Output | Feature | Wait


@dataclass(frozen=True, slots=True)
class Verify:
    """Get feature report ``report_id`` (``length`` bytes) and compare it with ``expect``."""

    report_id: int
    length: int
    expect: Pattern


class ParamError(ValueError):
    """A value is wrong; ``path`` names the element (``reports[2]``), ``hint`` says what to do."""

    def __init__(self, path: str, what: str, hint: str) -> None:
        super().__init__(what)
        self.path = path
        self.what = what
        self.hint = hint


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _duration(path: str, v: object) -> int:
    if not (_is_int(v) or isinstance(v, float)) or isinstance(v, bool):
        raise ParamError(
            path, f"expected a number of milliseconds, got {v!r}", "Write e.g. 20 or 2.5"
        )
    ms = float(v)  # type: ignore[arg-type]
    if not math.isfinite(ms):
        raise ParamError(path, f"{v} is not a number of milliseconds", "Write e.g. 20 or 2.5")
    if ms < 0:
        raise ParamError(path, f"negative delay {v}", "Use 0 or more milliseconds")
    if ms > MAX_DELAY_MS:
        raise ParamError(path, f"delay {v} ms is over an hour", f"Use at most {MAX_DELAY_MS}")
    return round(ms * NS_PER_MS)


def _report(path: str, v: object) -> bytes:
    if not isinstance(v, str):
        raise ParamError(path, f"expected a hex string, got {v!r}", 'Write bytes as "01 00 06 00"')
    try:
        data, _ = parse_hex(v, wildcards=False)
    except HexError as e:
        raise ParamError(
            path, str(e), 'Write bytes as two hex digits each, e.g. "01 00 06 00"'
        ) from e
    return data


def _sized(path: str, data: bytes, limit: int, what: str = "a report sent to the device") -> bytes:
    if len(data) > limit:
        raise ParamError(
            path,
            f"report of {len(data)} bytes; {what} can have at most {limit} bytes",
            f"Shorten it to {limit} bytes or fewer (docs/limits.md)",
        )
    return data


def _pattern(path: str, v: object) -> Pattern:
    if not isinstance(v, str):
        raise ParamError(path, f"expected a hex pattern, got {v!r}", 'Write e.g. "02 00 ?? ??"')
    try:
        return Pattern.parse(v)
    except HexError as e:
        raise ParamError(
            path, str(e), 'Write hex bytes, "??" for any byte, e.g. "02 00 ?? ??"'
        ) from e


def _table_keys(path: str, v: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(v) - set(allowed))
    if unknown:
        raise ParamError(path, f"unknown key {unknown[0]!r}", f"Use one of: {', '.join(allowed)}")


def _inject_steps(path: str, v: object) -> tuple[InjectStep, ...]:
    if not isinstance(v, list) or not v:
        raise ParamError(
            path, "expected a non-empty list", 'Write e.g. ["01 00 06", {wait_ms = 5}, "01 00 00"]'
        )
    out: list[InjectStep] = []
    for i, step in enumerate(v):
        p = f"{path}[{i}]"
        if isinstance(step, dict):
            _table_keys(p, step, ["wait_ms"])
            if "wait_ms" not in step:
                raise ParamError(p, "a table step needs wait_ms", "Write {wait_ms = 5}")
            out.append(Wait(_duration(f"{p}.wait_ms", step["wait_ms"])))
        else:
            out.append(_sized(p, _report(p, step), INJECT_MAX, "an injected report"))
    if not any(isinstance(s, bytes) for s in out):
        raise ParamError(path, "no report to inject, only waits", "Add at least one report")
    return tuple(out)


def _send_steps(path: str, v: object) -> tuple[SendStep, ...]:
    hint = 'Write e.g. [{output = "10 ff 80 11 01"}, {wait_ms = 10}, {feature = "05 01"}]'
    if not isinstance(v, list) or not v:
        raise ParamError(path, "expected a non-empty list of steps", hint)
    out: list[SendStep] = []
    for i, step in enumerate(v):
        p = f"{path}[{i}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise ParamError(p, f"expected a table with one key, got {step!r}", hint)
        _table_keys(p, step, ["output", "feature", "wait_ms"])
        ((k, val),) = step.items()
        if k == "wait_ms":
            out.append(Wait(_duration(f"{p}.wait_ms", val)))
        elif k == "output":
            out.append(Output(_sized(f"{p}.output", _report(f"{p}.output", val), SEND_MAX)))
        else:
            out.append(Feature(_sized(f"{p}.feature", _report(f"{p}.feature", val), SEND_MAX)))
    if all(isinstance(s, Wait) for s in out):
        raise ParamError(path, "no report to send, only waits", "Add an output or feature step")
    return tuple(out)


def _verify(path: str, v: object) -> Verify:
    hint = 'Write e.g. {report_id = 0x05, expect = "05 01 ??"}'
    if not isinstance(v, dict):
        raise ParamError(path, f"expected a table, got {v!r}", hint)
    _table_keys(path, v, ["report_id", "expect", "length"])
    if "report_id" not in v or "expect" not in v:
        raise ParamError(path, "verify needs report_id and expect", hint)
    rid = v["report_id"]
    if not _is_int(rid) or not 0 <= rid <= 255:
        raise ParamError(f"{path}.report_id", f"report_id {rid!r} is not a byte", "Use 0..255")
    expect = _pattern(f"{path}.expect", v["expect"])
    length = v.get("length", len(expect.data))
    if not _is_int(length) or not 1 <= length <= SEND_MAX:
        raise ParamError(f"{path}.length", f"length {length!r} out of range", f"Use 1..{SEND_MAX}")
    return Verify(rid, length, expect)


def convert(param: Param, v: object) -> Any:
    """Check and convert one TOML value; raises :class:`ParamError`."""
    path = param.name
    match param.kind:
        case Kind.PATTERN:
            return _pattern(path, v)
        case Kind.REPORT:  # a report to inject (release-guard's release)
            return _sized(path, _report(path, v), INJECT_MAX, "an injected report")
        case Kind.DURATION_MS:
            return _duration(path, v)
        case Kind.BOOL:
            if not isinstance(v, bool):
                raise ParamError(path, f"expected true or false, got {v!r}", "Write true or false")
            return v
        case Kind.INT:
            if not _is_int(v) or not param.minimum <= v <= param.maximum:  # type: ignore[operator]
                raise ParamError(
                    path,
                    f"expected an integer in {param.minimum}..{param.maximum}, got {v!r}",
                    f"Use a whole number from {param.minimum} to {param.maximum}",
                )
            return v
        case Kind.TEXT:
            if not isinstance(v, str):
                raise ParamError(path, f"expected a string, got {v!r}", 'Write e.g. "my policy"')
            return v
        case Kind.CHOICE:
            if v not in param.choices:
                raise ParamError(
                    path,
                    f"{v!r} is not one of {list(param.choices)}",
                    f"Use one of: {', '.join(param.choices)}",
                )
            return v
        case Kind.CHOICES:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ParamError(
                    path,
                    f"expected a list of strings, got {v!r}",
                    f"Write e.g. {list(param.choices[:2])}",
                )
            bad = [x for x in v if x not in param.choices]
            if bad:
                raise ParamError(
                    path,
                    f"{bad[0]!r} is not one of {list(param.choices)}",
                    f"Use any of: {', '.join(param.choices)}",
                )
            return tuple(dict.fromkeys(v))
        case Kind.INJECT_STEPS:
            return _inject_steps(path, v)
        case Kind.SEND_STEPS:
            return _send_steps(path, v)
        case Kind.VERIFY:
            return _verify(path, v)
    raise AssertionError(param.kind)
