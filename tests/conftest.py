"""Settings shared by every tier (host and VM).

Hypothesis: one profile, loaded here for every test run, holds under software emulation on a
loaded 2-vCPU machine: no per-example deadline, no "too slow" / "data too large" health checks
(a slow machine is not a bug), derandomized (the same examples every run, so a failure
reproduces and a pass is not luck), no example database on disk. Tests that need more or fewer
examples say ``@settings(max_examples=N)``; everything else comes from this profile. The VM
tier runs pytest with ``-p no:hypothesispytest``: the profile is loaded by this conftest, not
by that plugin, so it applies there too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hidbpfd",
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
    derandomize=True,
    database=None,
    max_examples=100,
    print_blob=True,
)
settings.load_profile("hidbpfd")
