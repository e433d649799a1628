"""Config errors: every one names the file, the line, the TOML key, what is wrong, what to do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in one policy file. ``str()`` gives ``FILE:LINE: key: what — hint``."""

    file: str
    line: int
    key: str
    what: str
    hint: str = ""
    warning: bool = False

    def __str__(self) -> str:
        tail = f" — {self.hint}" if self.hint else ""
        level = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {level}{self.key}: {self.what}{tail}"


class ConfigErrors(Exception):
    """Raised by strict loads (``check``, reload) when any file has errors."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(map(str, errors)))
        self.errors = errors
