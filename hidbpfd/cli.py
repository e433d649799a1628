"""The command line: a thin layer over the package. Forms fixed by the issues:

- ``hidbpfd check PATH...``
- ``hidbpfd compile SRC.bpf.c [-o OBJ] [--engine userspace|kernel]``
- ``hidbpfd replay --config PATH [--via-bpf | --device uhid] RECORDING``
- ``hidbpfd probe``, ``hidbpfd vm [--] CMD...``, ``hidbpfd policies``
- ``hidbpfd devices [--json]``, ``hidbpfd record [DEVICE...] [-o FILE] [--duration S]``
- ``hidbpfd install-service [--root DIR] [--dry-run]``,
  ``hidbpfd uninstall-service [--root DIR] [--dry-run]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hidbpfd import __version__


def _cmd_check(args: argparse.Namespace) -> int:
    from hidbpfd.config import load
    from hidbpfd.kernel.programs import check_object

    cfg = load(args.paths, inspect=check_object)
    errors = list(cfg.errors)
    kernel_files = [f for f in cfg.files if f.engine == "kernel"]
    if kernel_files:
        # what the in-kernel engine would refuse, from the parameters alone (any kernel)
        from hidbpfd.config.errors import ConfigError
        from hidbpfd.kernel.engine import params_reason

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


def _cmd_compile(args: argparse.Namespace) -> int:
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


def _cmd_replay(args: argparse.Namespace) -> int:
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


def _cmd_policies(args: argparse.Namespace) -> int:
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


def _cmd_probe(args: argparse.Namespace) -> int:
    from hidbpfd.kernel.probe import main as probe_main

    return probe_main([])


def _cmd_vm(args: argparse.Namespace) -> int:
    import importlib

    try:
        vm = importlib.import_module("hidbpfd.vm")
    except ImportError:
        print("hidbpfd vm: not available in this build yet", file=sys.stderr)
        return 2
    rc: int = vm.main(args.cmd)
    return rc


def _cmd_demo(args: argparse.Namespace) -> int:
    from hidbpfd.demo import main as demo_main

    return demo_main(["--replay"] if args.replay else ["--live"] if args.live else [])


def _without_tls() -> None:
    """Keep ``ssl`` out of the daemon: asyncio imports it when it can (and does without it, as
    on a Python built without OpenSSL); the daemon has no network and no TLS, and OpenSSL costs
    ~4.3 MB of RSS (measured). Only while nothing has imported it yet."""
    if "ssl" not in sys.modules and "asyncio" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def _cmd_run(args: argparse.Namespace) -> int:
    _without_tls()
    import asyncio

    from hidbpfd.config.errors import ConfigErrors
    from hidbpfd.config.settings import DEFAULT_FILE, load_settings
    from hidbpfd.kernel.libbpf import BpfError
    from hidbpfd.kernel.source import BpfUnavailable
    from hidbpfd.runtime import build_daemon
    from hidbpfd.service.realtime import apply_realtime

    try:
        settings = load_settings(args.settings or DEFAULT_FILE, missing_ok=not args.settings)
    except ConfigErrors as e:
        print(f"hidbpfd run: bad settings file:\n{e}", file=sys.stderr)
        return 1
    try:
        settings = settings.override(
            ring_kib=args.ring_kib,
            timer_spin_us=args.timer_spin_us,
            busy_poll=args.busy_poll,
            sched_fifo=args.sched_fifo,
            cpu=args.cpu,
            mlockall=args.mlockall,
            pin_roots=args.pin_root,
        )
    except ValueError as e:
        print(f"hidbpfd run: {e}", file=sys.stderr)
        return 1
    from hidbpfd.service.control import ControlSocketError, check_socket_path

    try:
        if not args.no_socket:
            check_socket_path(args.socket)  # before loading anything; start() checks again
    except ControlSocketError as e:
        print(f"hidbpfd run: control socket: {e}", file=sys.stderr)
        return 1
    d = build_daemon(
        args.config,
        socket_path=None if args.no_socket else args.socket,
        settings=settings,
    )
    try:
        apply_realtime(settings)
    except OSError as e:
        print(f"hidbpfd run: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(d.run())
    except ControlSocketError as e:
        print(f"hidbpfd run: control socket: {e}", file=sys.stderr)
        return 1
    except (BpfUnavailable, BpfError) as e:
        print(
            f"hidbpfd run: cannot load the BPF programs: {e}. Try: hidbpfd probe", file=sys.stderr
        )
        return 1


def _control(args: argparse.Namespace, cmd: str) -> dict[str, object] | None:
    from hidbpfd.service.control import request

    try:
        return request(args.socket, cmd)
    except OSError as e:
        print(
            f"hidbpfd {cmd}: cannot reach the daemon at {args.socket}: {e.strerror or e}",
            file=sys.stderr,
        )
        return None


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    st = _control(args, "status")
    if st is None:
        return 1
    if args.json or "error" in st:
        print(json.dumps(st, indent=2))
        return 1 if "error" in st else 0
    from hidbpfd.service.status_text import render_status

    print(render_status(st))
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    res = _control(args, "reload")
    if res is None:
        return 1
    print(res.get("summary", res))
    errors = res.get("errors")
    for e in errors if isinstance(errors, list) else []:
        print(e, file=sys.stderr)
    return 0 if res.get("ok") else 1


def _cmd_monitor(args: argparse.Namespace) -> int:
    import json

    from hidbpfd.service.control import stream
    from hidbpfd.service.status_text import render_event

    try:
        for item in stream(args.socket):
            print(json.dumps(item) if args.json else render_event(item), flush=True)
    except OSError as e:
        print(
            f"hidbpfd monitor: cannot reach the daemon at {args.socket}: {e.strerror or e}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from hidbpfd.config import DEFAULT_DIR
    from hidbpfd.inventory import main as devices_main

    return devices_main(args.config or [DEFAULT_DIR], args.socket, args.json)


def _cmd_record(args: argparse.Namespace) -> int:
    from hidbpfd.devices.recorder import main as record_main

    return record_main(args.devices, args.output, args.duration)


def _cmd_bench(args: argparse.Namespace) -> int:
    import asyncio

    from hidbpfd.bench import report
    from hidbpfd.kernel.libbpf import BpfError
    from hidbpfd.kernel.source import BpfUnavailable

    def progress(m: str) -> None:
        print(m, file=sys.stderr)

    if args.mechanics:
        from hidbpfd.bench.mechanics import run
        from hidbpfd.config.settings import Settings
        from hidbpfd.service.realtime import apply_realtime

        try:
            knobs = Settings().override(
                sched_fifo=args.sched_fifo, cpu=args.cpu, mlockall=args.mlockall
            )
            apply_realtime(knobs)
        except (ValueError, OSError) as e:
            print(f"hidbpfd bench: {e}", file=sys.stderr)
            return 1
        if knobs.knobs():
            print(f"real-time knobs: {', '.join(knobs.knobs())}", file=sys.stderr)
        try:
            results = asyncio.run(run(quick=args.quick, progress=progress))
        except (BpfUnavailable, BpfError, FileNotFoundError) as e:
            print(f"hidbpfd bench: cannot load the BPF programs: {e}", file=sys.stderr)
            return 1
    else:
        from hidbpfd.bench import devices

        if args.plot:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                print(
                    "hidbpfd bench --plot: matplotlib is not installed. "
                    "Try: .venv/bin/pip install -e '.[bench]'",
                    file=sys.stderr,
                )
                return 1
        try:
            results = asyncio.run(devices.run(quick=args.quick, progress=progress))
        except devices.BenchUnavailable as e:
            print(f"hidbpfd bench: {e}", file=sys.stderr)
            return 1
        except (BpfUnavailable, BpfError) as e:
            print(f"hidbpfd bench: BPF failed: {e}. Try: hidbpfd probe", file=sys.stderr)
            return 1
    desc, emulated = report.machine()
    print(f"{desc}{' (software emulation: timings not representative)' if emulated else ''}")
    print(report.table(results), flush=True)
    if args.json:
        report.write_json(args.json, results)
    if args.plot:
        from hidbpfd.bench.devices import prepare_plotting

        why = prepare_plotting()
        if why:
            print(f"hidbpfd bench --plot: {why}", file=sys.stderr)
            return 1
        report.plot(args.plot, results)
    return 0


def _cmd_install_service(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hidbpfd.service.install import InstallError, install, uninstall

    root = Path(args.root).absolute() if args.root else None
    try:
        if args.command == "install-service":
            install(root, dry_run=args.dry_run)
        else:
            uninstall(root, dry_run=args.dry_run)
    except InstallError as e:
        print(f"hidbpfd {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs test)."""
    p = argparse.ArgumentParser(
        prog="hidbpfd",
        description="Deferred HID device IO on behalf of BPF events.",
        epilog="'hidbpfd COMMAND --help' gives a command's options. The reference is docs/ in "
        "the source tree: docs/commands.md (every command), docs/policies.md (policy files), "
        "docs/daemon.md (the daemon and its settings).",
    )
    p.add_argument("--version", action="version", version=f"hidbpfd {__version__}")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level (default warning); before COMMAND",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate policy files or directories")
    c.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    c.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    c.set_defaults(func=_cmd_check)

    cp = sub.add_parser(
        "compile", help="compile a HID-BPF program using <hidbpfd/api.h> for this kernel"
    )
    cp.add_argument("src", metavar="SRC.bpf.c", help="the program's source")
    cp.add_argument("-o", metavar="OBJ", help="the object to write (default: SRC.bpf.o)")
    cp.add_argument(
        "--engine",
        choices=("userspace", "kernel"),
        default="userspace",
        help="where the deferred work runs: the daemon (default) or the kernel's bpf_wq",
    )
    cp.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    cp.set_defaults(func=_cmd_compile)

    r = sub.add_parser("replay", help="run a hid-recorder capture through the policies; JSON lines")
    r.add_argument("--config", required=True, metavar="PATH", help="policy file or directory")
    how = r.add_mutually_exclusive_group()
    how.add_argument(
        "--via-bpf", action="store_true", help="filter every report with the real BPF filter"
    )
    how.add_argument(
        "--device", choices=["uhid"], help="play it on a real uhid device in real time"
    )
    r.add_argument("recording", metavar="RECORDING", help="a hid-recorder capture (.hid)")
    r.set_defaults(func=_cmd_replay)

    from hidbpfd.config import DEFAULT_DIR

    # resolved when used (hidbpfd.service.control pulls in asyncio, which run keeps light)
    sock = "$RUNTIME_DIRECTORY/control.sock, else /run/hidbpfd/control.sock"
    rn = sub.add_parser("run", help="run the daemon")
    rn.add_argument(
        "--config",
        action="append",
        metavar="DIR",
        help=f"policy directory or file (default {DEFAULT_DIR}); repeatable",
    )
    rn.add_argument("--socket", help=f"control socket (default {sock})")
    rn.add_argument("--no-socket", action="store_true", help="no control socket")
    rn.add_argument(
        "--settings",
        metavar="FILE",
        help="the daemon's settings (default /etc/hidbpfd/hidbpfd.toml if it exists); "
        "the flags below override it",
    )
    rn.add_argument(
        "--ring-kib",
        type=int,
        metavar="KIB",
        help="BPF ring buffer size in KiB (power of 2; default: sized from the devices)",
    )
    rn.add_argument(
        "--timer-spin-us",
        type=int,
        metavar="US",
        help="wake US early for each timer and spin to the deadline (CPU for precision)",
    )
    rn.add_argument(
        "--busy-poll",
        action="store_true",
        default=None,
        help="poll the ring instead of sleeping (one CPU for the idle wake-up)",
    )
    rn.add_argument("--sched-fifo", type=int, metavar="PRIO", help="SCHED_FIFO priority (1-99)")
    rn.add_argument("--cpu", type=int, help="pin the daemon to this CPU")
    rn.add_argument(
        "--mlockall",
        action="store_true",
        default=None,
        help="lock the daemon's memory (no page faults)",
    )
    rn.add_argument(
        "--pin-root",
        action="append",
        metavar="DIR",
        help="serve programs other loaders pinned under DIR/<device>/<object>/ "
        "(repeatable; replaces pin_roots, default /sys/fs/bpf/hid)",
    )
    rn.set_defaults(func=_cmd_run)

    for name, fn, text in (
        ("status", _cmd_status, "devices, policies, counters and latency of the running daemon"),
        ("monitor", _cmd_monitor, "live trace: report -> policy decision -> action"),
        (
            "reload",
            _cmd_reload,
            "reload the policy files (like SIGHUP); prints what changed or the errors",
        ),
    ):
        c2 = sub.add_parser(name, help=text)
        c2.add_argument("--socket", help=f"control socket (default {sock})")
        if name != "reload":
            c2.add_argument("--json", action="store_true", help="JSON instead of text")
        c2.set_defaults(func=fn)

    b = sub.add_parser("bench", help="measure the userspace path against the in-kernel one")
    b.add_argument(
        "--mechanics", action="store_true", help="deferred-work mechanics only (any BPF kernel)"
    )
    b.add_argument("--quick", action="store_true", help="fewer samples (under two minutes)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="plot the latency distributions")
    b.add_argument(
        "--sched-fifo",
        type=int,
        metavar="PRIO",
        help="run the benchmark process as SCHED_FIFO (measures that knob; --mechanics)",
    )
    b.add_argument("--cpu", type=int, help="pin the benchmark process to this CPU (--mechanics)")
    b.add_argument(
        "--mlockall", action="store_true", default=None, help="lock its memory (--mechanics)"
    )
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("demo", help="show the three needs end to end on virtual devices")
    how_d = d.add_mutually_exclusive_group()
    how_d.add_argument("--replay", action="store_true", help="virtual time only (no devices)")
    how_d.add_argument("--live", action="store_true", help="real uhid devices here, or fail")
    d.set_defaults(func=_cmd_demo)

    dv = sub.add_parser("devices", help="every HID device present and what hidbpfd would do")
    dv.add_argument(
        "--config",
        action="append",
        metavar="DIR",
        help=f"policy directory or file to match against (default {DEFAULT_DIR}); repeatable",
    )
    dv.add_argument("--socket", help=f"the daemon's control socket (default {sock})")
    dv.add_argument("--json", action="store_true", help="JSON instead of text")
    dv.set_defaults(func=_cmd_devices)

    rc = sub.add_parser("record", help="record HID devices' reports as a hid-recorder capture")
    rc.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE",
        help="/dev/hidrawN, a hid id (0003:28BD:0905.0001) or key=value[,key=value] with "
        "[device] keys (vendor=0x28bd,product=0x0905); default: every hidraw device",
    )
    rc.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    rc.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    rc.set_defaults(func=_cmd_record)

    pl = sub.add_parser("policies", help="list the policy types and their keys")
    pl.set_defaults(func=_cmd_policies)

    pr = sub.add_parser("probe", help="print, as JSON, what this kernel supports")
    pr.set_defaults(func=_cmd_probe)

    for name, text in (
        (
            "install-service",
            "install the systemd unit, sysusers file and udev rule for this hidbpfd",
        ),
        ("uninstall-service", "stop the service and remove what install-service installed"),
    ):
        svc = sub.add_parser(name, help=text)
        svc.add_argument(
            "--root",
            metavar="DIR",
            help="a packager's DESTDIR: the files land under DIR, nothing else changes",
        )
        svc.add_argument(
            "--dry-run", action="store_true", help="print what would be done, change nothing"
        )
        svc.set_defaults(func=_cmd_install_service)

    v = sub.add_parser("vm", help="run a command in a VM with a HID-capable kernel", add_help=False)
    v.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="[--] CMD", help="see hidbpfd vm --help"
    )
    v.set_defaults(func=_cmd_vm)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hidbpfd`` console script."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if "vm" in raw and all(a.startswith("-") for a in raw[: raw.index("vm")]):
        # everything after "vm" belongs to hidbpfd.vm (its own options, "--", the command)
        args = build_parser().parse_args([*raw[: raw.index("vm")], "vm"])
        args.cmd = raw[raw.index("vm") + 1 :]
    else:
        args = build_parser().parse_args(raw)
    if getattr(args, "func", None) is _cmd_run:
        _without_tls()  # before anything pulls in asyncio
    if hasattr(args, "socket") and not args.socket:
        from hidbpfd.service.control import default_socket_path

        args.socket = default_socket_path()
    if getattr(args, "func", None) is _cmd_run and not args.config:
        from hidbpfd.config import DEFAULT_DIR

        args.config = [DEFAULT_DIR]
    from hidbpfd.service.logs import setup

    setup(args.log_level)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return rc
