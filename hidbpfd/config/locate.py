"""Where a key is in a TOML file: tomllib gives values but no line numbers, so we scan.

The locator follows table headers (``[device]``, ``[[policy]]`` — counted, so the second one is
``policy[1]`` — and sub-tables such as ``[policy.verify]``) and ``key =`` lines, which is all
the shape of a policy file uses. It only has to be good enough to point a person at the line,
but it must never be fooled by a string (a ``[`` or ``#`` inside quotes, a multi-line string)
and it must stay linear in the size of the file: one pass of :func:`scan`, no backtracking
regular expression over a whole line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final, NamedTuple

_KEY_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# A bare (possibly dotted) key at the start of a line; applied only to the part before "=",
# which holds no quote, so it cannot backtrack over long runs.
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_\-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_\-]+)*")


class Line(NamedTuple):
    """One line as :func:`scan` sees it."""

    n: int
    """1-based, counting ``\\n`` only (as tomllib does)."""
    code: str
    """The line without its comment (strings kept)."""
    top: bool
    """The line starts outside any string and any array or inline table."""
    nesting: int
    """The deepest array/inline-table nesting reached on this line."""
    parts: int
    """The most parts of a dotted key (``a.b.c``: 3) on this line."""


def scan(text: str) -> Iterator[Line]:
    """Each line of ``text`` with strings, comments and brackets accounted for (one pass)."""
    quote = ""  # '"', "'", '"""' or "'''" while inside a string
    depth = 0
    for n, raw in enumerate(text.split("\n"), start=1):
        top = not quote and depth == 0
        nesting = depth
        parts = 1
        best_parts = 1
        end = len(raw)
        i = 0
        size = len(raw)
        while i < size:
            ch = raw[i]
            if quote:
                if ch == "\\" and quote in ('"', '"""'):
                    i += 2
                    continue
                if ch == quote[0] and raw.startswith(quote, i):
                    i += len(quote)
                    if len(quote) == 3:  # up to two more quotes belong to the string
                        k = 0
                        while k < 2 and i < size and raw[i] == quote[0]:
                            i += 1
                            k += 1
                    quote = ""
                    continue
                i += 1
                continue
            if ch == "#":
                end = i
                break
            if ch in "\"'":
                quote = ch * 3 if raw.startswith(ch * 3, i) else ch
                i += len(quote)
                continue
            if ch in "[{":
                depth += 1
                nesting = max(nesting, depth)
            elif ch in "]}":
                depth = max(depth - 1, 0)
            if ch == ".":
                parts += 1
                best_parts = max(best_parts, parts)
            elif ch not in _KEY_CHARS and ch not in " \t":
                parts = 1
            i += 1
        if quote in ('"', "'"):  # single-line strings end with their line
            quote = ""
        yield Line(n, raw[:end], top, nesting, best_parts)


class Locator:
    """Maps ``section.key`` paths (``policy[1].delay_ms``, ``device.vendor``) to line numbers."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        section = ""
        for ln in scan(text):
            if not ln.top:
                continue
            line = ln.code.strip()
            n = ln.n
            if line.startswith("["):
                array = line.startswith("[[") and line.endswith("]]")
                if not line.endswith("]"):
                    continue
                inner = line[2:-2] if array else line[1:-1]
                name = inner.replace('"', "").replace("'", "").replace(" ", "").replace("\t", "")
                if array:
                    idx = counts.get(name, 0)
                    counts[name] = idx + 1
                    section = f"{name}[{idx}]"
                    self.lines.setdefault(name, n)
                else:
                    head, _, rest = name.partition(".")
                    if head in counts and rest:  # [policy.verify] -> policy[last].verify
                        section = f"{head}[{counts[head] - 1}].{rest}"
                    else:
                        section = name
                self.lines.setdefault(section, n)
                continue
            before, eq, _ = line.partition("=")
            if not eq:
                continue
            k = _BARE_KEY.fullmatch(before.strip())
            if k is None:
                continue
            key = "".join(k.group(0).split())
            full = f"{section}.{key}" if section else key
            self.lines.setdefault(full, n)
            head = full
            while "." in head:  # dotted keys: also record their parents
                head = head.rsplit(".", 1)[0]
                self.lines.setdefault(head, n)

    def line(self, path: str) -> int:
        """The line of ``path``, else of its nearest enclosing key or table, else 1.

        ``policy[1].reports[2]`` falls back to ``policy[1].reports``, then ``policy[1]``."""
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            if p.endswith("]") and p.rfind("[") > p.rfind("."):
                p = p[: p.rfind("[")]
            elif "." in p:
                p = p.rsplit(".", 1)[0]
            else:
                break
        return 1
