"""The systemd tier (issue 14): hidbpfd installed as users install it, run by a real systemd.

These tests run inside ``hidbpfd vm --systemd`` (a Debian 12 guest with systemd as PID 1, see
``hidbpfd/vm/rootfs.py``) as root, after ``tools/wheel`` built ``dist/hidbpfd-*.whl``::

    tools/wheel
    hidbpfd vm --systemd -- python3 -m pytest -p no:cacheprovider -p no:hypothesispytest tests/service

Anywhere else they skip (with ``HIDBPFD_REQUIRE_DEVICE=1`` they fail instead). The session
fixture :func:`service` types the README's install commands (:data:`INSTALL`); the daemon the
tests talk to is the unit's, from the installed wheel, not this checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hidbpfd.devices.hidraw import HidrawReader
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import UhidEvent
from hidbpfd.replay.recording import load as load_rec
from tests.helpers import LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IN_GUEST = os.environ.get("HIDBPFD_VM_SYSTEMD") == "1"
POLICIES = ("50-1209__a001-macro-key.toml", "50-1209__a002-wakeup-reinit.toml")
POLICY_DIR = Path("/etc/hidbpfd/devices.d")


def wheel() -> Path:
    found = sorted((ROOT / "dist").glob("hidbpfd-*-py3-none-any.whl"))
    if not found:
        pytest.fail("no dist/hidbpfd-*-py3-none-any.whl: run tools/wheel first")
    return found[-1]


def install_commands(whl: Path) -> list[list[str]]:
    """What the README tells a user to type, in order (the policy files are copied between
    install-service and enable, as a user puts theirs in /etc/hidbpfd/devices.d)."""
    return [
        ["pip", "install", "--break-system-packages", str(whl)],
        ["hidbpfd", "install-service"],
        ["systemctl", "enable", "--now", "hidbpfd"],
    ]


REASON = (
    "runs in the systemd tier: tools/wheel && hidbpfd vm --systemd -- "
    "python3 -m pytest -p no:cacheprovider -p no:hypothesispytest tests/service"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Outside the systemd guest, skip every test of this directory (with
    HIDBPFD_REQUIRE_DEVICE=1 they fail instead, in :func:`service`, before it does anything).
    Tests marked ``suspends_guest`` run last: after a resume the guest's 9p shares of the host
    (its kernel modules, virtme-ng's unit directory that ``systemctl daemon-reload`` reads) block
    whoever touches them, so nothing may come after (docs/vm.md)."""
    items.sort(key=lambda item: item.get_closest_marker("suspends_guest") is not None)
    if IN_GUEST or os.environ.get("HIDBPFD_REQUIRE_DEVICE") == "1":
        return
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.skip(reason=REASON))


def sh(*argv: str, check: bool = True, timeout: float = LIMIT_S) -> str:
    """Run a command, return its stdout; fail the test with its output if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def documented_blocks(section: str) -> list[str]:
    """The ``sh`` blocks of a section of docs/service.md (its ``## `` heading), in order: the
    commands a user types, which the tests type too (:func:`run_block`)."""
    text = (ROOT / "docs" / "service.md").read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S)


def run_block(block: str) -> None:
    """Type a documented block into a root shell, as a user would (``sh -e``)."""
    done = subprocess.run(
        ["sh", "-e"], input=block, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"{block}\nexited {done.returncode}:\n{done.stdout}{done.stderr}"


def prop(name: str) -> str:
    """A property of hidbpfd.service (systemctl show)."""
    return sh("systemctl", "show", "-p", name, "--value", "hidbpfd").strip()


def until(cond: Callable[[], Any], what: str, timeout_s: float = LIMIT_S) -> Any:
    """Poll ``cond`` until it returns something true; fail naming ``what`` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def status() -> dict[str, Any] | None:
    """``hidbpfd status --json`` of the running service, or None if it does not answer."""
    done = subprocess.run(
        ["hidbpfd", "status", "--json"], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def device_status(hid_id: str) -> dict[str, Any] | None:
    st = status()
    for d in (st or {}).get("devices", []):
        if d["hid_id"] == hid_id:
            return dict(d)
    return None


def journal(*args: str) -> list[dict[str, Any]]:
    """``journalctl -u hidbpfd -o json`` entries (systemd's own lines about the unit too)."""
    out = sh("journalctl", "-u", "hidbpfd", "-o", "json", "--no-pager", *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cursor() -> str:
    """The journal's current end, to read only what comes after."""
    out = sh("journalctl", "-n", "1", "-o", "json", "--no-pager")
    return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out.strip() else ""


def messages_since(cur: str) -> list[str]:
    """Messages about hidbpfd.service after ``cur``, in order."""
    args = ["--after-cursor", cur] if cur else []
    return [str(e.get("MESSAGE", "")) for e in journal(*args)]


@dataclass
class Device:
    """A uhid device made from a capture's device, seen from both sides."""

    uhid: UhidDevice
    hidraw: str
    hid_id: str
    events: list[UhidEvent]
    """Everything the kernel sent the device (UHID_OUTPUT, UHID_SET_REPORT, ...)."""
    read: list[bytes] = field(default_factory=list)
    """Every report read on its hidraw node: what applications see."""

    def received(self, kind: int) -> list[bytes]:
        """What the device was sent, of uhid event type ``kind``."""
        return [bytes(ev.data) for ev in self.events if ev.type == kind]


@contextlib.asynccontextmanager
async def capture_device(capture: str, **uhid_kwargs: Any) -> AsyncIterator[Device]:
    """Create the device of ``tests/captures/CAPTURE`` as a uhid device, read its hidraw node
    and wait until the service manages it."""
    rec = load_rec(ROOT / "tests" / "captures" / capture).devices[0]
    events: list[UhidEvent] = []
    dev = UhidDevice(on_event=events.append, **uhid_kwargs)
    dev.create(rec.name, rec.descriptor, rec.bus, rec.vendor, rec.product, phys=rec.phys)
    reader: HidrawReader | None = None
    task: asyncio.Task[None] | None = None
    try:
        await dev.wait_started(LIMIT_S)
        node = await dev.wait_hidraw(LIMIT_S)
        hid_id = dev.hid_name() or ""
        reader = HidrawReader(node)
        device = Device(dev, node, hid_id, events)

        async def read(r: HidrawReader) -> None:
            with contextlib.suppress(Exception):
                async for _, report in r:
                    device.read.append(report)

        task = asyncio.get_running_loop().create_task(read(reader), name=f"read-{hid_id}")
        deadline = time.monotonic() + LIMIT_S
        while not ((await asyncio.to_thread(device_status, hid_id)) or {}).get("managed"):
            if time.monotonic() > deadline:
                pytest.fail(f"the service never managed {hid_id} ({node}): {status()}")
            await asyncio.sleep(0.2)
        yield device
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if reader is not None:
            reader.close()
        dev.destroy()


async def wait_for(cond: Callable[[], Any], what: str, timeout_s: float = LIMIT_S) -> Any:
    """:func:`until` for async tests: polls without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def debug_log() -> Iterator[None]:
    """systemd's own log at debug level meanwhile: its lines about the notify messages it
    gets and the unit's state changes are the evidence. Only around what needs it (at debug,
    PID 1 logs every D-Bus call of the tests' polling)."""
    sh("systemd-analyze", "log-level", "debug")
    try:
        yield
    finally:
        sh("systemd-analyze", "log-level", "info", check=False)


@pytest.fixture(scope="session")
def service() -> None:
    """hidbpfd installed from the wheel with the README's commands, and running. Never
    outside the systemd guest: these commands change the machine they run on."""
    if not IN_GUEST:
        pytest.fail(f"not the systemd guest ($HIDBPFD_VM_SYSTEMD is not 1): {REASON}")
    install()


def install() -> None:
    """Type the README's install commands (:func:`install_commands`) and put the policy files
    in place. Also for a test that comes after ``test_systemd_service.py`` took it all away."""
    pip, install_service, enable = install_commands(wheel())
    sh(*pip, timeout=300)
    sh(*install_service)
    for name in POLICIES:
        shutil.copy(ROOT / "config" / name, POLICY_DIR / name)
    sh(*enable, timeout=300)
