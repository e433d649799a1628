"""Every hypothesis test runs with the shared profile of tests/conftest.py (issue 11: a
FailedHealthCheck under emulation in the VM tier failed a whole run)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parents[1]


def test_the_profile_is_loaded() -> None:
    s = settings.default
    assert s.deadline is None
    assert s.derandomize is True
    assert s.database is None
    assert HealthCheck.too_slow in s.suppress_health_check
    assert HealthCheck.function_scoped_fixture in s.suppress_health_check
    assert s.max_examples <= 200


def test_no_test_overrides_what_the_profile_guarantees() -> None:
    # a per-test @settings may only change max_examples (bounded); deadline, health checks and
    # seeding come from the profile so they cannot drift back to hypothesis' defaults
    bad = []
    for p in TESTS.rglob("*.py"):
        text = p.read_text()
        for m in re.finditer(r"^@settings\((.*?)\)[ \t]*(?:#.*)?$", text, re.S | re.M):
            args = m.group(1)
            if re.search(r"deadline|suppress_health_check|derandomize|database", args):
                bad.append(f"{p.relative_to(TESTS)}: @settings({args})")
            n = re.search(r"max_examples\s*=\s*(\d+)", args)
            if n and int(n.group(1)) > 500:
                bad.append(f"{p.relative_to(TESTS)}: max_examples {n.group(1)} is unbounded")
    assert not bad, bad
