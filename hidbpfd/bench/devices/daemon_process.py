"""The daemon under test: ``hidbpfd run`` in its own process, asked for ``status`` over its
control socket."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hidbpfd.bench.devices.plan import BenchUnavailable

# ----------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """``hidbpfd run`` in its own process (so its CPU and wake-ups are its own)."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.socket = str(workdir / "control.sock")
        self.log_path = workdir / "daemon.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hidbpfd",
                "--log-level",
                "info",
                "run",
                "--config",
                str(config),
                "--socket",
                self.socket,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        """The last lines of its log (for errors)."""
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    async def status(self) -> dict[str, Any]:
        """The daemon's ``status`` (off the loop: a blocking socket)."""
        from hidbpfd.service.control import request

        if self.proc.poll() is not None:
            raise BenchUnavailable(
                f"the daemon exited ({self.proc.returncode}):\n{self.log_tail()}"
            )
        return await asyncio.to_thread(request, self.socket, "status", timeout=10.0)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until its control socket answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.status()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchUnavailable(
                        f"the daemon did not come up within {timeout_s:g} s:\n{self.log_tail()}"
                    ) from None
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
