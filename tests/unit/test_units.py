"""The systemd unit as ``hidbpfd install-service --root`` installs it: ``systemd-analyze
verify`` is clean and the exposure score of ``systemd-analyze security --offline=yes`` is 2.0
or lower (docs/service.md states the score)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def unit_for_test(tmp_path: Path) -> Path:
    """The unit installed by this checkout's hidbpfd under ``tmp_path`` (its ExecStart names
    that hidbpfd, which verify checks is there)."""
    exe = Path(sys.executable).with_name("hidbpfd")
    subprocess.run(
        [str(exe), "install-service", "--root", str(tmp_path)], check=True, capture_output=True
    )
    return tmp_path / "etc/systemd/system/hidbpfd.service"


def test_verify_is_clean(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_test(tmp_path))],
        capture_output=True,
        check=False,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and "hidbpfd.service" not in out.stderr, out.stderr


def test_security_exposure(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_for_test(tmp_path))],
        capture_output=True,
        check=False,
        text=True,
        cwd=tmp_path,
    )
    m = re.search(r"Overall exposure level for hidbpfd\.service: ([\d.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    score = float(m.group(1))
    assert score <= 2.0, out.stdout
    page = (ROOT / "docs" / "service.md").read_text()
    assert f"exposure level {score}" in page, f"docs/service.md must state the score ({score})"
