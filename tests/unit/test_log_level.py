"""``--log-level`` and its default from ``$HIDBPFD_LOG_LEVEL`` (what a unit's drop-in sets,
docs/service.md "More in the journal")."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from hidbpfd.cli import LOG_LEVEL_ENV, main


@pytest.fixture(autouse=True)
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.parametrize(
    ("env", "argv", "want"),
    [
        (None, [], logging.WARNING),
        ("info", [], logging.INFO),
        (" DEBUG ", [], logging.DEBUG),
        ("", [], logging.WARNING),
        ("debug", ["--log-level", "error"], logging.ERROR),  # the option wins
    ],
)
def test_level_from_option_then_environment(
    monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str], want: int
) -> None:
    if env is None:
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    else:
        monkeypatch.setenv(LOG_LEVEL_ENV, env)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert main([*argv, "policies"]) == 0
    assert logging.getLogger().level == want


def test_a_bad_environment_value_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud")
    assert main(["policies"]) == 2
    err = capsys.readouterr().err
    assert "$HIDBPFD_LOG_LEVEL='loud': not a log level (one of debug, info, warning, error)" in err
