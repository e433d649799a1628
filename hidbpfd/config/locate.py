"""Where a key is in a TOML file: tomllib gives values but no line numbers, so we scan.

The locator follows table headers (``[device]``, ``[[policy]]`` — counted, so the second one is
``policy[1]`` — and sub-tables such as ``[policy.verify]``) and ``key =`` lines, which is all
the shape of a policy file uses. It only has to be good enough to point a person at the line.
"""

from __future__ import annotations

import re
from typing import Final

_HEADER: Final = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_KEY: Final = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


class Locator:
    """Maps ``section.key`` paths (``policy[1].delay_ms``, ``device.vendor``) to line numbers."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        section = ""
        depth = 0  # bracket depth of a multi-line array / inline table value
        for n, raw in enumerate(text.splitlines(), start=1):
            line = _strip_comment(raw)
            if depth == 0:
                m = _HEADER.match(line)
                if m:
                    name = m.group(2).replace('"', "").replace(" ", "")
                    if m.group(1) == "[[":
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
                k = _KEY.match(line)
                if k:
                    key = re.sub(r"\s+", "", k.group(1))
                    full = f"{section}.{key}" if section else key
                    self.lines.setdefault(full, n)
                    head = full
                    while "." in head:  # dotted keys: also record their parents
                        head = head.rsplit(".", 1)[0]
                        self.lines.setdefault(head, n)
            depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
            depth = max(depth, 0)

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


def _strip_comment(line: str) -> str:
    out = []
    quote = ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)
