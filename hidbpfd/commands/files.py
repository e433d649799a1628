"""The commands on files: ``check`` (policy files), ``compile`` (BPF programs), ``replay``
(captures through the policies) and ``policies`` (the types a file can use). Each takes the
parsed arguments of :func:`hidbpfd.cli.build_parser` and returns the exit status; what they
need is imported when they run, so that ``hidbpfd`` starts light."""

from __future__ import annotations

import argparse
import sys


def cmd_check(args: argparse.Namespace) -> int:
    from hidbpfd.config import load
    from hidbpfd.kernel.programs import check_object

    cfg = load(args.paths, inspect=check_object)
    errors = list(cfg.errors)
    kernel_files = [f for f in cfg.files if f.engine == "kernel"]
    if kernel_files:
        # what the in-kernel engine would refuse, from the parameters alone (any kernel)
        from hidbpfd.config.errors import ConfigError
        from hidbpfd.kernel.engine_codec import params_reason

        for f in kernel_files:
            if why := params_reason(f.bindings):
                line = f.lines.get("engine", 1)
                errors.append(ConfigError(f.path, line, "engine", f"the kernel cannot run: {why}"))
    for w in cfg.warnings:
        print(w, file=sys.stderr)
    for e in errors:
        print(e, file=sys.stderr)
    bad = {e.file for e in errors}
    valid = [f for f in cfg.files if f.path not in bad]
    if errors:
        nbad = len({e.file for e in errors})
        print(
            f"{len(errors)} error(s) in {nbad} file(s); {len(valid)} file(s) valid",
            file=sys.stderr,
        )
        return 1
    if not args.quiet:
        for f in cfg.files:
            print(f"{f.path}: [device] {f.match}")
            for b in f.bindings:
                print(f"  #{b.index} {b.policy.describe()}")
            for p in f.programs:
                print(f"  program[{p.index}] {p.object}: {_describe_object(p.path)}")
    return 0


def _describe_object(path: str) -> str:
    from hidbpfd.kernel.programs import ObjectError, inspect_object

    try:
        info = inspect_object(path)
    except ObjectError as e:  # changed since load: say so
        return str(e)
    calls = ", ".join(sorted(info.callbacks)) or "none"
    return f"struct_ops {info.ops_map}, {info.engine} engine, callbacks: {calls}"


def cmd_compile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hidbpfd.kernel.compile import CompileError, compile_program

    try:
        out = compile_program(Path(args.src), Path(args.o) if args.o else None, engine=args.engine)
    except CompileError as e:
        print(f"hidbpfd compile: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(out)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from hidbpfd.config import load
    from hidbpfd.replay.recording import RecordingError
    from hidbpfd.replay.recording import load as load_rec

    cfg = load([args.config])
    for e in cfg.errors:
        print(e, file=sys.stderr)
    if cfg.errors:
        return 1
    try:
        rec = load_rec(args.recording)
    except RecordingError as e:
        print(f"hidbpfd replay: {e}", file=sys.stderr)
        return 1
    if args.device == "uhid":
        import importlib

        try:
            mod = importlib.import_module("hidbpfd.replay.via_uhid")
        except ImportError:
            print("hidbpfd replay --device uhid: not available in this build yet", file=sys.stderr)
            return 2
        rc: int = mod.replay_uhid(rec, cfg, args)
        return rc
    backend = None
    BpfUnavailableError: type[Exception] = RecordingError  # never raised by the pure replay
    if args.via_bpf:
        from hidbpfd.replay.via_bpf import BpfFilterBackend, BpfUnavailable

        try:
            backend = BpfFilterBackend.open()
        except BpfUnavailable as e:
            print(f"hidbpfd replay --via-bpf: {e}", file=sys.stderr)
            return 1
        BpfUnavailableError = BpfUnavailable
    from hidbpfd.replay.virtual import replay

    try:
        for line in replay(rec, cfg, backend=backend):
            print(line.json(), flush=False)
    except BpfUnavailableError as e:
        sys.stdout.flush()
        print(f"hidbpfd replay --via-bpf: {rec.path}: {e}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
    sys.stdout.flush()
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from hidbpfd.policies import load_registry

    for name, cls in sorted(load_registry().items()):
        print(f"{name}: {cls.SUMMARY}")
        for p in cls.PARAMS:
            req = (
                "required"
                if p.required
                else f"default {p.default!r}"
                if p.default not in (None, "")
                else "optional"
            )
            print(f"    {p.name} ({p.kind.value}, {req}): {p.help}")
    return 0
