"""Every policy, table-driven: report bytes in (with times), the trace readers and the device
observe out. Runs the real config loader, dispatch, filter semantics and scheduler on virtual
time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import config_from, norm, run

DEFER = 'type = "defer"\nmatch = "02 00"\ndelay_ms = 20\n'

CASES: dict[str, tuple[str, list[tuple[float, str]], list[tuple[float, str, str]]]] = {
    "defer: nothing follows, re-injected after the delay": (
        "[[policy]]\n" + DEFER,
        [(0, "02 20"), (5, "02 00")],
        [(0, "pass", "02 20"), (25, "inject", "02 00")],
    ),
    "defer: any report cancels, held one dropped": (
        "[[policy]]\n" + DEFER,
        [(0, "02 00"), (3, "02 20"), (50, "02 21")],
        [(3, "pass", "02 20"), (50, "pass", "02 21")],
    ),
    "defer: report exactly at the deadline comes after the re-injection": (
        "[[policy]]\n" + DEFER,
        [(0, "02 00"), (20, "02 20")],
        [(20, "inject", "02 00"), (20, "pass", "02 20")],
    ),
    "defer: flush releases the held one just before the newcomer": (
        "[[policy]]\n" + DEFER + 'on_cancel = "flush"\n',
        [(0, "02 00"), (3, "02 20"), (4, "02 21")],
        [(3, "inject", "02 00"), (3, "inject", "02 20"), (4, "pass", "02 21")],
    ),
    "defer: cancel_on limits what cancels": (
        "[[policy]]\n" + DEFER + 'cancel_on = "02 21"\n',
        [(0, "02 00"), (3, "02 20"), (6, "02 21"), (10, "02 00"), (12, "02 20")],
        [
            (3, "pass", "02 20"),
            (6, "pass", "02 21"),
            (12, "pass", "02 20"),
            (30, "inject", "02 00"),
        ],
    ),
    "defer: a new match that does not cancel releases the older one": (
        "[[policy]]\n" + DEFER + 'cancel_on = "07"\n',
        [(0, "02 00 01"), (5, "02 00 02")],
        [(5, "inject", "02 00 01"), (25, "inject", "02 00 02")],
    ),
    "defer: a new match that cancels replaces the older one": (
        "[[policy]]\n" + DEFER,
        [(0, "02 00 01"), (5, "02 00 02")],
        [(25, "inject", "02 00 02")],
    ),
    "inject: sequence with waits, trigger passes": (
        '[[policy]]\ntype = "inject"\nmatch = "01 00 68"\nreports = ["01 01 06 00", {wait_ms = 5}, "01 00 00 00"]\n',
        [(0, "01 00 68 00"), (1, "01 00 00 00")],
        [
            (0, "pass", "01 00 68 00"),
            (0, "inject", "01 01 06 00"),
            (1, "pass", "01 00 00 00"),
            (5, "inject", "01 00 00 00"),
        ],
    ),
    "inject: pass_trigger = false swallows the trigger": (
        '[[policy]]\ntype = "inject"\nmatch = "01 00 68"\nreports = ["01 01 06 00", "01 00 00 00"]\npass_trigger = false\n',
        [(0, "01 00 68 00"), (1, "01 00 04 00")],
        [(0, "inject", "01 01 06 00"), (0, "inject", "01 00 00 00"), (1, "pass", "01 00 04 00")],
    ),
    "inject: a second trigger queues behind a running sequence": (
        '[[policy]]\ntype = "inject"\nmatch = "09"\nreports = ["aa", {wait_ms = 10}, "bb"]\npass_trigger = false\n',
        [(0, "09"), (2, "09")],
        [(0, "inject", "aa"), (10, "inject", "bb"), (10, "inject", "aa"), (20, "inject", "bb")],
    ),
    "release-guard: release in time, nothing injected": (
        '[[policy]]\ntype = "release-guard"\nmatch = "03 ?? ??"\nrelease = "03 00 00"\ntimeout_ms = 100\n',
        [(0, "03 e9 00"), (50, "03 00 00"), (500, "03 00 00")],
        [(0, "pass", "03 e9 00"), (50, "pass", "03 00 00"), (500, "pass", "03 00 00")],
    ),
    "release-guard: lost release injected once": (
        '[[policy]]\ntype = "release-guard"\nmatch = "03 ?? ??"\nrelease = "03 00 00"\ntimeout_ms = 100\n',
        [(0, "03 e9 00"), (300, "03 ea 00"), (350, "03 00 00")],
        [
            (0, "pass", "03 e9 00"),
            (100, "inject", "03 00 00"),
            (300, "pass", "03 ea 00"),
            (350, "pass", "03 00 00"),
        ],
    ),
    "release-guard: repeated press re-arms the timeout": (
        '[[policy]]\ntype = "release-guard"\nmatch = "03 e9"\nrelease = "03 00 00"\ntimeout_ms = 100\n',
        [(0, "03 e9 00"), (80, "03 e9 00")],
        [(0, "pass", "03 e9 00"), (80, "pass", "03 e9 00"), (180, "inject", "03 00 00")],
    ),
    "reinit: on a report, output, wait, feature": (
        '[[policy]]\ntype = "reinit"\nmatch = "10 ff 80 00"\nsend = [{output = "10 ff 80 11 01"}, {wait_ms = 10}, {feature = "05 01"}]\n',
        [(0, "10 00 00 00"), (100, "10 ff 80 00")],
        [
            (0, "pass", "10 00 00 00"),
            (100, "pass", "10 ff 80 00"),
            (100, "output", "10 ff 80 11 01"),
            (110, "feature", "05 01"),
        ],
    ),
    "reinit: on added, before the first report": (
        '[[policy]]\ntype = "reinit"\non = ["added"]\nsend = [{feature = "05 01"}]\n',
        [(0, "10 00 00 00")],
        [(0, "feature", "05 01"), (0, "pass", "10 00 00 00")],
    ),
    "reinit: verify fails, retries, gives up": (
        '[[policy]]\ntype = "reinit"\nmatch = "10 ff"\nsend = [{feature = "05 00"}, {wait_ms = 1}]\n'
        'verify = {report_id = 5, expect = "05 01"}\nretries = 2\n',
        [(0, "10 ff")],
        [
            (0, "pass", "10 ff"),
            (0, "feature", "05 00"),
            (1, "feature", "05 00"),
            (2, "feature", "05 00"),
        ],
    ),
    "reinit: verify succeeds, no retry": (
        '[[policy]]\ntype = "reinit"\nmatch = "10 ff"\nsend = [{feature = "05 01"}]\n'
        'verify = {report_id = 5, expect = "05 01"}\nretries = 2\n',
        [(0, "10 ff")],
        [(0, "pass", "10 ff"), (0, "feature", "05 01")],
    ),
    "two policies on one device": (
        "[[policy]]\n" + DEFER + '[[policy]]\ntype = "inject"\nmatch = "01"\nreports = ["0a"]\n',
        [(0, "02 00"), (1, "01"), (2, "02 20")],
        [(1, "pass", "01"), (1, "inject", "0a"), (2, "pass", "02 20")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_policy_table(name: str, tmp_path: Path) -> None:
    toml, events, expected = CASES[name]
    assert run(config_from(tmp_path, toml), events) == norm(expected)


def test_unmatched_device_passes_everything(tmp_path: Path) -> None:
    cfg = config_from(tmp_path, "[device]\nvendor = 0x9999\n[[policy]]\n" + DEFER)
    assert run(cfg, [(0, "02 00")]) == norm([(0, "pass", "02 00")])
