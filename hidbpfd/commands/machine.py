"""The commands about this machine: ``probe`` (its kernel), ``devices`` and ``record`` (its HID
devices), ``demo``, ``bench`` and ``vm``. Each takes the parsed arguments of
:func:`hidbpfd.cli.build_parser` and returns the exit status; what they need is imported when
they run."""

from __future__ import annotations

import argparse
import sys


def cmd_probe(args: argparse.Namespace) -> int:
    from hidbpfd.kernel.probe import main as probe_main

    return probe_main([])


def cmd_vm(args: argparse.Namespace) -> int:
    import importlib

    try:
        vm = importlib.import_module("hidbpfd.vm")
    except ImportError:
        print("hidbpfd vm: not available in this build yet", file=sys.stderr)
        return 2
    rc: int = vm.main(args.cmd)
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from hidbpfd.demo import main as demo_main

    return demo_main(["--replay"] if args.replay else ["--live"] if args.live else [])


def cmd_devices(args: argparse.Namespace) -> int:
    from hidbpfd.config import DEFAULT_DIR
    from hidbpfd.inventory import main as devices_main

    return devices_main(args.config or [DEFAULT_DIR], args.socket, args.json)


def cmd_record(args: argparse.Namespace) -> int:
    from hidbpfd.devices.recorder import main as record_main

    return record_main(args.devices, args.output, args.duration)


def cmd_bench(args: argparse.Namespace) -> int:
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
