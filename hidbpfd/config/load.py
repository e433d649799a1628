"""Loading policy files: TOML → validated :class:`PolicyFile` values, or every error at once.

A file with any error is rejected whole (nothing half-loaded); the other files still load, so
the daemon keeps serving every device whose files are good. ``check`` and reloads look at the
errors; the daemon logs them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hidbpfd.config.errors import ConfigError
from hidbpfd.config.locate import Locator
from hidbpfd.config.match import KEYS as DEVICE_KEYS
from hidbpfd.config.match import DeviceMatch
from hidbpfd.config.read import ReadError, read_toml
from hidbpfd.engine.dispatch import Binding
from hidbpfd.engine.filter import RuleTableError, check_table
from hidbpfd.model import BUS_NAMES, DeviceFacts, DeviceId, DeviceRule
from hidbpfd.policies import Policy, load_registry
from hidbpfd.policies.params import ParamError, convert

DEFAULT_DIR: Final = "/etc/hidbpfd/devices.d"
FILE_NAME: Final = re.compile(r"^\d\d-[a-z0-9]+__[a-z0-9]+-[a-z0-9][a-z0-9_-]*\.toml$")
TOP_KEYS: Final = ("device", "policy", "program", "engine")
ENGINES: Final = ("userspace", "kernel")
MAX_FILES: Final = 1000
"""Policy files read from one directory (each at most 256 KiB: a reload stays short)."""
MAX_POLICIES: Final = 64
"""[[policy]] tables in one file (a device's rule table holds 32 rules anyway)."""
MAX_PROGRAMS: Final = 8
"""[[program]] tables in one file (each is a BPF object loaded per device)."""
PROGRAM_KEYS: Final = ("object",)

InspectObject = Callable[[str], "str | None"]
"""Checks a BPF object file for ``[[program]]``: None if usable, else what is wrong (passed in
by ``check`` and the daemon, which may talk to libbpf; this layer may not)."""


@dataclass(frozen=True, slots=True)
class ProgramRef:
    """One ``[[program]]`` of a file: a HID-BPF object to load on the file's devices."""

    file: str
    index: int
    object: str
    """As written in the file."""
    path: str
    """Resolved: relative to the policy file's directory."""

    @property
    def label(self) -> str:
        """``50-pen.toml#program[0] pen.bpf.o``, for logs, status and traces."""
        return f"{Path(self.file).name}#program[{self.index}] {Path(self.path).name}"


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One valid policy file: which devices, which policies."""

    path: str
    match: DeviceMatch
    bindings: tuple[Binding, ...]
    engine: str = "userspace"
    programs: tuple[ProgramRef, ...] = ()
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Where each key is (from the text that was validated: nothing reads the file twice)."""


@dataclass(slots=True)
class Config:
    """The valid files, in load order (by file name), and the errors of the rejected ones."""

    files: list[PolicyFile] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)

    def files_for(self, dev: DeviceId, facts: DeviceFacts | None = None) -> list[PolicyFile]:
        """The files whose ``[device]`` table matches ``dev`` (``facts``: its descriptor and
        interface, for the keys that need them)."""
        return [f for f in self.files if f.match.matches(dev, facts)]

    def bindings_for(self, dev: DeviceId, facts: DeviceFacts | None = None) -> list[Binding]:
        """Every policy that applies to ``dev``, file by file, in file order."""
        return [b for f in self.files_for(dev, facts) for b in f.bindings]

    def programs_for(self, dev: DeviceId, facts: DeviceFacts | None = None) -> list[ProgramRef]:
        """Every ``[[program]]`` to load on ``dev``, file by file, in file order."""
        return [p for f in self.files_for(dev, facts) for p in f.programs]

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors


def expand(paths: Iterable[str | Path]) -> tuple[list[Path], list[ConfigError]]:
    """Files to load: files as given, ``*.toml`` in directories, sorted by name.

    A directory that cannot be listed is an error (``check`` must not say "0 files" for it);
    entries that are not regular files are kept, so that reading them says what they are."""
    out: list[Path] = []
    errs: list[ConfigError] = []
    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
            if is_dir:
                with os.scandir(p) as it:
                    names = sorted(e.name for e in it if e.name.endswith(".toml"))
                if len(names) > MAX_FILES:
                    errs.append(
                        ConfigError(
                            str(p),
                            0,
                            "(path)",
                            f"{len(names)} policy files (limit {MAX_FILES}); "
                            f"only the first {MAX_FILES} by name are loaded",
                            "One file per device: remove the ones no device needs",
                        )
                    )
                out += [p / n for n in names[:MAX_FILES]]
            elif p.exists() or p.is_symlink():
                out.append(p)
            else:
                errs.append(
                    ConfigError(str(p), 0, "(path)", "no such file or directory", "Check the path")
                )
        except OSError as e:
            errs.append(
                ConfigError(
                    str(p),
                    0,
                    "(path)",
                    f"cannot list the directory: {e.strerror}",
                    "Check its permissions (the daemon runs as root, check as you)",
                )
            )
    return out, errs


def load(
    paths: Iterable[str | Path],
    registry: Mapping[str, type[Policy[Any]]] | None = None,
    *,
    inspect: InspectObject | None = None,
) -> Config:
    """Load and validate every file; valid files in ``files``, all problems in ``errors``.
    ``inspect`` checks each ``[[program]]`` object (without it, only that the file exists)."""
    reg = load_registry() if registry is None else registry
    files, errors = expand(paths)
    cfg = Config(errors=errors)
    seen: dict[DeviceMatch, str] = {}
    for path in files:
        pf, errs, warns = _load_guarded(path, reg, inspect)
        cfg.warnings += warns
        if pf is not None and pf.match in seen:
            errs.append(
                ConfigError(
                    str(path),
                    _device_line(pf),
                    "device",
                    f"the same [device] match ({pf.match}) is already used by {seen[pf.match]}",
                    "Put the policies for one device in one file, or make the matches differ",
                )
            )
        if errs:
            cfg.errors += errs
            continue
        assert pf is not None
        seen[pf.match] = str(path)
        cfg.files.append(pf)
    return cfg


def _device_line(pf: PolicyFile) -> int:
    return pf.lines.get("device", 1)


def _load_guarded(
    path: Path, registry: Mapping[str, type[Policy[Any]]], inspect: InspectObject | None = None
) -> tuple[PolicyFile | None, list[ConfigError], list[ConfigError]]:
    """:func:`load_file`, and a bug in a validator rejects that file, not the daemon's start
    or a reload (the fuzz tier checks that this never happens)."""
    try:
        return load_file(path, registry, inspect)
    except Exception as e:  # one file's bug must not stop the others
        what = f"internal error while validating: {type(e).__name__}: {e}"
        return None, [ConfigError(str(path), 1, "(file)", what, "Please report this bug")], []


def load_file(
    path: Path, registry: Mapping[str, type[Policy[Any]]], inspect: InspectObject | None = None
) -> tuple[PolicyFile | None, list[ConfigError], list[ConfigError]]:
    """Validate one file; returns the file (None if any error), its errors and its warnings."""
    f = str(path)
    warns: list[ConfigError] = []
    if not FILE_NAME.match(path.name):
        warns.append(
            ConfigError(
                f,
                1,
                "(file name)",
                f"{path.name!r} does not follow NN-vendor__product-purpose.toml",
                "Rename it, e.g. 50-28bd__0905-pen.toml (lower case, NN orders loading)",
                warning=True,
            )
        )
    try:
        text, doc = read_toml(path)
    except ReadError as e:
        return None, [e.error(f)], warns
    loc = Locator(text)
    errs: list[ConfigError] = []

    def err(key: str, what: str, hint: str) -> None:
        errs.append(ConfigError(f, loc.line(key), key, what, hint))

    for k in doc:
        if k not in TOP_KEYS:
            err(
                k,
                f"unknown top-level key {k!r}",
                "Use engine, [device], [[policy]] and [[program]] only"
                f"{_did_you_mean(k, TOP_KEYS)}",
            )
    engine = doc.get("engine", "userspace")
    if engine not in ENGINES:
        err(
            "engine",
            f"unknown engine {engine!r}",
            'Use engine = "userspace" (the daemon) or "kernel" (HID-BPF)',
        )
    match = _device(doc.get("device"), err)
    pols = doc.get("policy")
    if isinstance(pols, list) and len(pols) > MAX_POLICIES:
        err(
            "policy",
            f"{len(pols)} [[policy]] tables (limit {MAX_POLICIES})",
            "Split them over several files, one per device",
        )
        return None, errs, warns
    progs = doc.get("program")
    programs = _programs(progs, path, err, inspect)
    bindings = _policies(pols, f, registry, err, none_ok=progs is not None)
    if not errs and match is not None:
        table = [DeviceRule(r, g) for g, b in enumerate(bindings) for r in b.policy.rules()]
        try:
            check_table(table)
        except RuleTableError as e:
            err(
                "policy",
                str(e),
                "Split the policies over fewer rules, or fewer policies per device",
            )
    if errs or match is None:
        return None, errs, warns
    return (
        PolicyFile(f, match, tuple(bindings), str(engine), tuple(programs), loc.lines),
        [],
        warns,
    )


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _u16(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF


def _device(dev: object, err: Any) -> DeviceMatch | None:
    if dev is None:
        err(
            "device",
            "missing [device] table",
            f"Add [device] with at least one of: {', '.join(DEVICE_KEYS)}",
        )
        return None
    if not isinstance(dev, dict):
        err("device", "device must be a table", "Write it as a [device] section")
        return None
    ok = True
    for k in dev:
        if k not in DEVICE_KEYS:
            err(
                f"device.{k}",
                f"unknown key {k!r}",
                f"Use one of: {', '.join(DEVICE_KEYS)}{_did_you_mean(k, DEVICE_KEYS)}",
            )
            ok = False
    if not dev:
        err(
            "device",
            "empty [device] table matches nothing specific",
            f"Add at least one of: {', '.join(DEVICE_KEYS)}",
        )
        return None
    vals: dict[str, Any] = {}
    bus = dev.get("bus")
    if bus is not None:
        if isinstance(bus, str) and bus.lower() in BUS_NAMES:
            vals["bus"] = BUS_NAMES[bus.lower()]
        elif _u16(bus):
            vals["bus"] = bus
        else:
            err(
                "device.bus",
                f"unknown bus {bus!r}",
                "Use usb, bluetooth, i2c, virtual, or a number",
            )
            ok = False
    for k in ("vendor", "product"):
        v = dev.get(k)
        if v is not None:
            if _u16(v):
                vals[k] = v
            else:
                err(
                    f"device.{k}",
                    f"{k} {v!r} is not a 16-bit number",
                    f"Write it as a number, e.g. {k} = 0x28bd",
                )
                ok = False
    for k in ("name", "uniq", "phys"):
        v = dev.get(k)
        if v is not None:
            if isinstance(v, str):
                vals[k] = v
            else:
                err(
                    f"device.{k}",
                    f"{k} must be a string (a glob), got {v!r}",
                    f'Write e.g. {k} = "XP-Pen*"',
                )
                ok = False
    ok = _interface_keys(dev, vals, err) and ok
    return DeviceMatch(**vals) if ok else None


_NUMBER_KEYS: Final = {  # key: (lowest, highest, what it is, an example)
    "usage_page": (0, 0xFFFF, "a usage page", "0x0d (digitizer)"),
    "usage": (0, 0xFFFF, "a usage", "0x02 (pen)"),
    "report_id": (1, 0xFF, "a report ID", "0x02"),
    "interface": (0, 0xFF, "a USB interface number", "0"),
}


def _interface_keys(dev: Mapping[str, object], vals: dict[str, Any], err: Any) -> bool:
    """``usage_page``, ``usage``, ``report_id``, ``interface``: numbers in range; ``usage``
    only with ``usage_page``."""
    ok = True
    for k, (low, top, what, example) in _NUMBER_KEYS.items():
        v = dev.get(k)
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool) and low <= v <= top:
            vals[k] = v
        else:
            err(
                f"device.{k}",
                f"{k} {v!r} is not {what} ({low}..{top:#x})",
                f"Write it as a number, e.g. {k} = {example}",
            )
            ok = False
    if "usage" in dev and "usage_page" not in dev:
        err(
            "device.usage",
            "usage without usage_page",
            "Add usage_page = the page of that usage, e.g. usage_page = 0x0d for a digitizer",
        )
        ok = False
    return ok


def _programs(
    progs: object, path: Path, err: Any, inspect: InspectObject | None
) -> list[ProgramRef]:
    if progs is None:
        return []
    if not isinstance(progs, list) or not all(isinstance(p, dict) for p in progs):
        err("program", "program must be an array of tables", "Write each one as [[program]]")
        return []
    if len(progs) > MAX_PROGRAMS:
        err(
            "program",
            f"{len(progs)} [[program]] tables (limit {MAX_PROGRAMS})",
            "Put the work of one device in fewer objects",
        )
        return []
    out: list[ProgramRef] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(progs):
        base = f"program[{i}]"
        bad = False
        for k in table:
            if k not in PROGRAM_KEYS:
                err(
                    f"{base}.{k}",
                    f"unknown key {k!r} for a [[program]]",
                    f'Use object = "PATH.bpf.o"{_did_you_mean(k, PROGRAM_KEYS)}',
                )
                bad = True
        obj = table.get("object")
        if obj is None:
            err(base, "missing 'object' (the BPF object file)", 'Add object = "NAME.bpf.o"')
            continue
        if not isinstance(obj, str) or not obj.strip():
            err(
                f"{base}.object",
                f"object must be a path, not {obj!r}",
                'Write object = "NAME.bpf.o"',
            )
            continue
        resolved = Path(obj) if Path(obj).is_absolute() else path.parent / obj
        where = str(resolved)
        if where in seen:
            err(
                f"{base}.object",
                f"{obj} is already program[{seen[where]}]",
                "Load an object once per file",
            )
            continue
        seen[where] = i
        if not resolved.exists():
            err(
                f"{base}.object",
                f"{obj}: no such file ({where})",
                "Paths are relative to the policy file; build it with: hidbpfd compile SRC.bpf.c",
            )
            continue
        problem = inspect(where) if inspect is not None else None
        if problem:
            err(f"{base}.object", problem, "Build it with: hidbpfd compile SRC.bpf.c")
            continue
        if not bad:
            out.append(ProgramRef(str(path), i, obj, where))
    return out


def _policies(
    pols: object,
    f: str,
    registry: Mapping[str, type[Policy[Any]]],
    err: Any,
    *,
    none_ok: bool = False,
) -> list[Binding]:
    if pols is None:
        if not none_ok:
            err(
                "policy",
                "no [[policy]] tables",
                "Add at least one [[policy]] with a type, or a [[program]]",
            )
        return []
    if not isinstance(pols, list) or not all(isinstance(p, dict) for p in pols):
        err("policy", "policy must be an array of tables", "Write each one as [[policy]]")
        return []
    out: list[Binding] = []
    for i, table in enumerate(pols):
        base = f"policy[{i}]"
        t = table.get("type")
        if t is None:
            err(base, "missing type", f"Add type = one of: {', '.join(sorted(registry))}")
            continue
        cls = registry.get(t) if isinstance(t, str) else None
        if cls is None:
            err(
                f"{base}.type",
                f"unknown policy type {t!r}",
                f"Use one of: {', '.join(sorted(registry))}{_did_you_mean(str(t), list(registry))}",
            )
            continue
        declared = {p.name: p for p in cls.PARAMS}
        params: dict[str, Any] = {}
        bad = False
        for k in table:
            if k != "type" and k not in declared:
                err(
                    f"{base}.{k}",
                    f"unknown key {k!r} for a {t} policy",
                    f"Use one of: {', '.join(declared)}{_did_you_mean(k, list(declared))}",
                )
                bad = True
        for name, p in declared.items():
            if name not in table:
                if p.required:
                    err(base, f"missing {name!r} ({p.help})", f"Add {name} = ...")
                    bad = True
                params[name] = p.default
                continue
            try:
                params[name] = convert(p, table[name])
            except ParamError as e:
                path = e.path if e.path.startswith(name) else f"{name}.{e.path}"
                err(f"{base}.{path}", e.what, e.hint)
                bad = True
        if bad:
            continue
        try:
            pol = cls.from_params(params)
        except ParamError as e:
            err(f"{base}.{e.path}", e.what, e.hint)
            continue
        out.append(Binding(pol, f, i))
    return out
