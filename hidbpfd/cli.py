"""The command line: a thin layer over the package. Forms fixed by the issues:

- ``hidbpfd check PATH...``
- ``hidbpfd compile SRC.bpf.c [-o OBJ] [--engine userspace|kernel]``
- ``hidbpfd replay --config PATH [--via-bpf | --device uhid] RECORDING``
- ``hidbpfd probe``, ``hidbpfd vm [--] CMD...``, ``hidbpfd policies``
- ``hidbpfd devices [--json]``, ``hidbpfd record [DEVICE...] [-o FILE] [--duration S]``
- ``hidbpfd install-service [--root DIR] [--dry-run]``,
  ``hidbpfd uninstall-service [--root DIR] [--dry-run]``

This module builds the parser and dispatches; the commands themselves are in
:mod:`hidbpfd.commands` (by family: files, daemon, machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final

from hidbpfd import __version__
from hidbpfd.commands.daemon import (
    cmd_install_service,
    cmd_monitor,
    cmd_reload,
    cmd_run,
    cmd_status,
    without_tls,
)
from hidbpfd.commands.files import cmd_check, cmd_compile, cmd_policies, cmd_replay
from hidbpfd.commands.machine import (
    cmd_bench,
    cmd_demo,
    cmd_devices,
    cmd_probe,
    cmd_record,
    cmd_vm,
)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# --log-level's default when it is not given: a unit's drop-in can set it (docs/service.md)
LOG_LEVEL_ENV: Final = "HIDBPFD_LOG_LEVEL"


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
        default=None,
        choices=LOG_LEVELS,
        help=f"log level (default ${LOG_LEVEL_ENV}, else warning); before COMMAND",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate policy files or directories")
    c.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    c.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    c.set_defaults(func=cmd_check)

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
    cp.set_defaults(func=cmd_compile)

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
    r.set_defaults(func=cmd_replay)

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
    rn.set_defaults(func=cmd_run)

    for name, fn, text in (
        ("status", cmd_status, "devices, policies, counters and latency of the running daemon"),
        ("monitor", cmd_monitor, "live trace: report -> policy decision -> action"),
        (
            "reload",
            cmd_reload,
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
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="show the three needs end to end on virtual devices")
    how_d = d.add_mutually_exclusive_group()
    how_d.add_argument("--replay", action="store_true", help="virtual time only (no devices)")
    how_d.add_argument("--live", action="store_true", help="real uhid devices here, or fail")
    d.set_defaults(func=cmd_demo)

    dv = sub.add_parser("devices", help="every HID device present and what hidbpfd would do")
    dv.add_argument(
        "--config",
        action="append",
        metavar="DIR",
        help=f"policy directory or file to match against (default {DEFAULT_DIR}); repeatable",
    )
    dv.add_argument("--socket", help=f"the daemon's control socket (default {sock})")
    dv.add_argument("--json", action="store_true", help="JSON instead of text")
    dv.set_defaults(func=cmd_devices)

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
    rc.set_defaults(func=cmd_record)

    pl = sub.add_parser("policies", help="list the policy types and their keys")
    pl.set_defaults(func=cmd_policies)

    pr = sub.add_parser("probe", help="print, as JSON, what this kernel supports")
    pr.set_defaults(func=cmd_probe)

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
        svc.set_defaults(func=cmd_install_service)

    v = sub.add_parser("vm", help="run a command in a VM with a HID-capable kernel", add_help=False)
    v.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="[--] CMD", help="see hidbpfd vm --help"
    )
    v.set_defaults(func=cmd_vm)
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
    if getattr(args, "func", None) is cmd_run:
        without_tls()  # before anything pulls in asyncio
    if hasattr(args, "socket") and not args.socket:
        from hidbpfd.service.control import default_socket_path

        args.socket = default_socket_path()
    if getattr(args, "func", None) is cmd_run and not args.config:
        from hidbpfd.config import DEFAULT_DIR

        args.config = [DEFAULT_DIR]
    from hidbpfd.service.logs import setup

    level = args.log_level or os.environ.get(LOG_LEVEL_ENV, "").strip().lower() or "warning"
    if level not in LOG_LEVELS:
        print(
            f"hidbpfd: error: ${LOG_LEVEL_ENV}={level!r}: not a log level "
            f"(one of {', '.join(LOG_LEVELS)})",
            file=sys.stderr,
        )
        return 2
    setup(level)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return rc
