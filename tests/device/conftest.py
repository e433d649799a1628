"""Fixtures for the device tier: real uhid devices on a real kernel (the VM).

Run them with ``hidbpfd vm -- .venv/bin/python -m pytest tests/device``. Where ``/dev/uhid`` is
missing (our development kernel) the device tests skip with that reason; with
``HIDBPFD_REQUIRE_DEVICE=1`` they fail instead, so a broken VM never passes silently.

Tests are plain functions that run their body with :func:`run` (``asyncio.run`` with a
deadline): every device lives and dies inside one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from hidbpfd.bench.devices import DESCRIPTOR as BENCH_DESCRIPTOR
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.devices.uhid_protocol import BUS_USB
from tests.helpers import LIMIT_S

T = TypeVar("T")

VENDOR: int = 0x1234
PRODUCT: int = 0x5678
INPUT_ID = 0x01  # 4 bytes of data
OUTPUT_ID = 0x10  # 5 bytes
FEATURE_ID = 0x05  # 2 bytes

# A vendor-defined device with one report of each kind, each with its own report ID
# (input INPUT_ID: 4 bytes, output OUTPUT_ID: 5, feature FEATURE_ID: 2): the benchmark's device.
VENDOR_RDESC = BENCH_DESCRIPTOR

_serial = itertools.count(1)

DeviceFactory = Callable[..., contextlib.AbstractAsyncContextManager[tuple[UhidDevice, str]]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real uhid device with ``device``."""
    for item in items:
        if "uhid_available" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 4 * LIMIT_S) -> T:
    """Run a test body on a fresh loop, failing it after ``timeout_s`` (longer than the
    LIMIT_S of each wait inside, so those fail first and say what they waited for)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


def open_fds() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def uhid_available() -> None:
    """Skip (or fail under HIDBPFD_REQUIRE_DEVICE=1) unless /dev/uhid can be opened."""
    reason = ""
    if not os.path.exists("/dev/uhid"):
        reason = (
            "no /dev/uhid on this kernel; the device tier runs in the VM: "
            "hidbpfd vm -- .venv/bin/python -m pytest tests/device"
        )
    elif not os.access("/dev/uhid", os.R_OK | os.W_OK):
        reason = "/dev/uhid exists but is not readable and writable by this user"
    if reason:
        if os.environ.get("HIDBPFD_REQUIRE_DEVICE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def vendor_device(uhid_available: None) -> DeviceFactory:
    """``async with vendor_device(**UhidDevice kwargs) as (dev, hidraw_path)``.

    Creates the vendor-defined device (unique phys per call), waits for UHID_START and for its
    hidraw node (and udev's handling of it), and destroys it on exit.
    """

    @contextlib.asynccontextmanager
    async def make(
        *, wait_udev: bool = True, **kwargs: Any
    ) -> AsyncIterator[tuple[UhidDevice, str]]:
        dev = UhidDevice(**kwargs)
        serial = next(_serial)
        dev.create(
            f"hidbpfd test device {serial}",
            VENDOR_RDESC,
            BUS_USB,
            VENDOR,
            PRODUCT,
            phys=f"hidbpfd-test/{os.getpid()}/{serial}",
        )
        try:
            await dev.wait_started(LIMIT_S)
            node = await dev.wait_hidraw(LIMIT_S, udev=wait_udev)
            yield dev, node
        finally:
            dev.destroy()

    return make
