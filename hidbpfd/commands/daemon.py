"""The commands of the daemon and its service: ``run``, ``status``, ``reload``, ``monitor``,
``install-service`` and ``uninstall-service``. Each takes the parsed arguments of
:func:`hidbpfd.cli.build_parser` and returns the exit status; what they need is imported when
they run (``run`` keeps ``ssl`` out: :func:`without_tls`)."""

from __future__ import annotations

import argparse
import sys


def without_tls() -> None:
    """Keep ``ssl`` out of the daemon: asyncio imports it when it can (and does without it, as
    on a Python built without OpenSSL); the daemon has no network and no TLS, and OpenSSL costs
    ~4.3 MB of RSS (measured). Only while nothing has imported it yet."""
    if "ssl" not in sys.modules and "asyncio" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def cmd_run(args: argparse.Namespace) -> int:
    without_tls()
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


def cmd_status(args: argparse.Namespace) -> int:
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


def cmd_reload(args: argparse.Namespace) -> int:
    res = _control(args, "reload")
    if res is None:
        return 1
    print(res.get("summary", res))
    errors = res.get("errors")
    for e in errors if isinstance(errors, list) else []:
        print(e, file=sys.stderr)
    return 0 if res.get("ok") else 1


def cmd_monitor(args: argparse.Namespace) -> int:
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


def cmd_install_service(args: argparse.Namespace) -> int:
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
