"""Reading a TOML file safely: regular files only, bounded, every step linear in its size.

Called by :func:`hidbpfd.config.load.load_file` (policy files, at start-up, ``check`` and on
every reload — on the daemon's loop, so nothing here may block or take long), by the settings
loader and by ``replay`` for captures (:func:`read_regular`).

- Only regular files are read. The path is ``stat``-ed first (a FIFO, a device such as
  ``/dev/zero``, a socket or a directory is refused without being opened), then opened with
  ``O_NONBLOCK`` and ``fstat``-ed again (it may have been swapped in between); reads never
  wait for a writer.
- At most :data:`MAX_FILE_BYTES` are read.
- The text must be UTF-8; a bad byte is reported at its line.
- Before ``tomllib`` sees the text, one linear scan (:func:`hidbpfd.config.locate.scan`)
  refuses nesting deeper than :data:`MAX_NESTING` arrays/inline tables or dotted keys of more
  than :data:`MAX_KEY_PARTS` parts (tomllib recurses on the first and slows down on the second).
- After parsing, a document of more than :data:`MAX_VALUES` keys and array items is refused.

Every refusal is a :class:`ReadError` with the line it concerns (0 only when the problem is the
file as a whole: it cannot be opened, is not a regular file or is too big).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from typing import Any, Final

from hidbpfd.config.errors import ConfigError
from hidbpfd.config.locate import scan

MAX_FILE_BYTES: Final = 256 * 1024
"""A policy file or the settings file (the shipped examples are under 2 KiB)."""
MAX_NESTING: Final = 16
"""Arrays and inline tables inside each other (a policy uses 2)."""
MAX_KEY_PARTS: Final = 16
"""Parts of one dotted key or table header (``[policy.verify]`` has 2)."""
MAX_VALUES: Final = 20_000
"""Keys and array items in one document, all levels together."""

_KINDS: Final = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
_TOML_AT: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)")
_TOML_END: Final = re.compile(r"\s*\(at end of document\)")


class ReadError(Exception):
    """The file cannot be used; ``line`` 0 means the file as a whole."""

    def __init__(self, line: int, key: str, what: str, hint: str) -> None:
        super().__init__(what)
        self.line = line
        self.key = key
        self.what = what
        self.hint = hint

    def error(self, file: str) -> ConfigError:
        """As a :class:`ConfigError` of ``file``."""
        return ConfigError(file, self.line, self.key, self.what, self.hint)


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`ReadError` otherwise.
    Never blocks: special files are refused before they are opened."""
    hint_file = "Point it at a regular file (not a pipe, device, socket or directory)"
    try:
        st = os.stat(path)
    except OSError as e:
        raise ReadError(0, "(file)", f"cannot read: {e.strerror}", _hint_for(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(0, "(file)", f"not a regular file: it is {_kind(st.st_mode)}", hint_file)
    if st.st_size > limit:
        raise ReadError(0, "(file)", f"too big: {st.st_size} bytes (limit {limit})", _big(limit))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ReadError(0, "(file)", f"cannot read: {e.strerror}", _hint_for(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat
            raise ReadError(
                0, "(file)", f"not a regular file: it is {_kind(st.st_mode)}", hint_file
            )
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(65536, limit + 1 - total))
            except BlockingIOError:
                raise ReadError(
                    0, "(file)", "cannot read: it would block (a special file?)", hint_file
                ) from None
            except OSError as e:
                raise ReadError(0, "(file)", f"cannot read: {e.strerror}", _hint_for(e)) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # grew, or a /proc-like file whose size stat does not tell
            raise ReadError(0, "(file)", f"too big: over {limit} bytes", _big(limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _big(limit: int) -> str:
    return f"Keep it under {limit // 1024} KiB: split it, or point at the right file"


def _hint_for(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "Check the file's permissions (the daemon runs as root, check as you)"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return "Check the path (a dangling symlink?)"
    if e.errno == errno.ELOOP:
        return "A symlink loop: fix the link"
    return "Check the path and permissions"


def decode_utf8(data: bytes) -> str:
    """``data`` as text; a bad byte is a :class:`ReadError` at its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ReadError(
            line,
            "(encoding)",
            f"not UTF-8: byte {data[e.start]:#04x} at column {col} ({e.reason})",
            "Save the file as UTF-8",
        ) from None


def check_shape(text: str) -> None:
    """Refuse (at its line) nesting and dotted keys deeper than the limits, in one pass."""
    for n, _, _, nesting, parts in scan(text):
        if nesting > MAX_NESTING:
            raise ReadError(
                n,
                "(nesting)",
                f"arrays or inline tables nested {nesting} deep (limit {MAX_NESTING})",
                "Flatten the value: a policy needs 2 levels",
            )
        if parts > MAX_KEY_PARTS:
            raise ReadError(
                n,
                "(nesting)",
                f"a dotted key or table name of {parts} parts (limit {MAX_KEY_PARTS})",
                "Use short keys such as [policy.verify]",
            )


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads`` after :func:`check_shape`, with errors as :class:`ReadError`."""
    check_shape(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_AT.search(msg)
        if m:
            line = int(m.group(1))
        elif _TOML_END.search(msg):
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        else:
            line = 1
        what = _TOML_END.sub("", _TOML_AT.sub("", msg))
        raise ReadError(
            max(line, 1), "(syntax)", f"invalid TOML: {what}", "Fix the TOML syntax at that line"
        ) from None
    except RecursionError:  # check_shape should have caught it; never a traceback
        raise ReadError(
            1, "(nesting)", "nested too deeply", "Flatten the arrays and tables"
        ) from None
    count = _count_values(doc)
    if count > MAX_VALUES:
        raise ReadError(
            1,
            "(size)",
            f"{count} keys and array items (limit {MAX_VALUES})",
            "Split the file: one file per device",
        )
    return doc


def _count_values(doc: dict[str, Any]) -> int:
    n = 0
    stack: list[Any] = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            n += len(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            n += len(v)
            stack.extend(v)
        if n > MAX_VALUES:
            break
    return n


def read_toml(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read, decode and parse one TOML file; every refusal a :class:`ReadError`."""
    text = decode_utf8(read_regular(path))
    return text, parse_toml(text)
