"""``hidbpfd bench --plot`` in the VM tier: matplotlib's font cache and fonts off 9p."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path


def _root_on_9p() -> bool:
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mnt, fstype = line.split()[:3]
            if mnt == "/":
                return fstype == "9p"
    except (OSError, ValueError):
        pass
    return False


def prepare_plotting() -> str | None:
    """Make matplotlib usable in the VM tier; returns why it cannot be, or None.

    The guest's root is the host's, read-only over 9p: matplotlib cannot keep a font cache in
    the home directory (so it would rebuild it on every import) and FreeType stalls for minutes
    reading font files over 9p. So: a private config dir seeded with the host's font cache, and
    the fonts it uses read from copies in /dev/shm. Elsewhere this does nothing.
    """
    if not _root_on_9p():
        return None
    import shutil

    host_cache = Path.home() / ".cache" / "matplotlib"
    if "MPLCONFIGDIR" not in os.environ:
        if not any(host_cache.glob("fontlist-*.json")):
            return (
                f"no matplotlib font cache in {host_cache} on the host, and building one over "
                "9p takes too long under emulation. Try once on the host: "
                ".venv/bin/python -c 'import matplotlib.pyplot'"
            )
        tmp = tempfile.mkdtemp(prefix="hidbpfd-mpl-")
        shutil.copytree(host_cache, tmp, dirs_exist_ok=True)
        os.environ["MPLCONFIGDIR"] = tmp
    import matplotlib
    from matplotlib import font_manager

    matplotlib.use("Agg")
    fonts = Path(tempfile.mkdtemp(prefix="hidbpfd-fonts-", dir="/dev/shm"))
    moved = []
    for entry in font_manager.fontManager.ttflist:
        src = Path(entry.fname)
        if "DejaVu" in src.name and src.exists():
            copy = fonts / src.name
            if not copy.exists():
                shutil.copyfile(src, copy)
            moved.append(dataclasses.replace(entry, fname=str(copy)))
        else:
            moved.append(entry)
    font_manager.fontManager.ttflist = moved
    return None
