"""What the pins rule (``units/82-hidbpfd-pins.rules`` -> :mod:`hidbpfd.service.pin_access`)
grants, on a real bpffs of this kernel (mounted for the test, ``0700`` as systemd mounts
``/sys/fs/bpf``): root-made pins ``0600``, as a root loader leaves them. A process of another
uid in the granted group, holding CAP_BPF as the service does (``setpriv``), gets EACCES
before and opens exactly the API map pins after; ``--revoke`` takes it back."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.kernel import libbpf as lb
from hidbpfd.service import pin_access

pytestmark = pytest.mark.bpf
GROUP = "nogroup"  # stands for hidbpfd: a group the test process is not in
UID = 65534
SYSNAME = "0003:28BD:0905.0001"
OBJ_MAPS = (*pin_access.API_MAPS, "other_map")


@pytest.fixture
def bpffs() -> Iterator[Path]:
    # not under tmp_path: its parent is 0700, and the other uid must reach the mount
    root = Path(tempfile.mkdtemp(prefix="hidbpfd-bpffs-", dir="/tmp"))
    root.chmod(0o755)
    mount = ["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(root)]
    if os.geteuid() != 0 or subprocess.run(mount, check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a bpffs here")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()


def pin_like_a_root_loader(bpffs: Path) -> tuple[Path, Path]:
    """``hid/<device>/pen/`` with the API maps, another map, and ``hid/<device>/plain/`` (an
    object without the API) — all pinned by root (0600)."""
    dev = bpffs / "hid" / pin_access.pin_name(SYSNAME)
    pen, plain = dev / "pen", dev / "plain"
    for d in (pen, plain):
        d.mkdir(parents=True)
    for path in [*(pen / m for m in OBJ_MAPS), plain / "plain_map"]:
        fd = lb.map_create(2, 4, 8, 1)  # BPF_MAP_TYPE_ARRAY
        lb.obj_pin(fd, str(path))
        os.close(fd)
    return pen, plain


OPENS = (
    "import errno, sys\n"
    "from hidbpfd.kernel import libbpf as lb\n"
    "try:\n    lb.obj_get(sys.argv[1]); print('ok')\n"
    "except lb.BpfError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n"
)
DENIED = "import sys\nfrom hidbpfd.kernel import pins\nprint(pins.denied(sys.argv[1]))\n"


def opens(path: Path, code: str = OPENS) -> str:
    """Try ``bpf_obj_get(path)`` (or ``code``) as uid 65534, group nogroup only, with CAP_BPF
    (the service's situation); returns "ok" or the errno's name (what ``code`` prints)."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    argv = [
        "setpriv",
        f"--reuid={UID}",
        f"--regid={grp.getgrnam(GROUP).gr_gid}",
        "--clear-groups",
        "--inh-caps=+bpf",
        "--ambient-caps=+bpf",
        sys.executable,
        "-c",
        code,
        str(path),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/", env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_grant_gives_the_group_the_api_pins_only(bpffs: Path) -> None:
    pen, plain = pin_like_a_root_loader(bpffs)
    assert stat.S_IMODE(bpffs.stat().st_mode) & 0o777 == 0o700
    assert opens(pen / "hidbpfd_requests") == "EACCES"  # as the service finds them today
    # what the daemon reports: the first directory it may not search, its owner and mode
    why = opens(pen / "hidbpfd_requests", DENIED)
    assert why == f"no search (x) permission on {bpffs} (uid 0 gid 0 mode 0700) for uid {UID}"
    assert pin_access.main([SYSNAME, "--root", str(bpffs / "hid"), "--group", GROUP]) == 0
    gid = grp.getgrnam(GROUP).gr_gid
    for m in pin_access.API_MAPS:
        st = (pen / m).stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, 0o660), m
        assert opens(pen / m) == "ok", m
    # nothing else: the other map, the object without the API, and nothing to others
    assert opens(pen / "other_map") == "EACCES"
    assert opens(pen / "hidbpfd_requests", DENIED) == ""
    assert opens(pen / "other_map", DENIED) == (
        f"no read-write permission on {pen / 'other_map'} (uid 0 gid 0 mode 0600) for uid "
        f"{UID} gid {gid}"
    )
    assert opens(plain / "plain_map") == "EACCES"
    assert stat.S_IMODE((pen / "other_map").stat().st_mode) == 0o600
    assert (plain.stat().st_gid, stat.S_IMODE(plain.stat().st_mode) & 0o077) != (gid, 0o010)
    top = bpffs.stat()
    assert (top.st_gid, stat.S_IMODE(top.st_mode) & 0o777) == (gid, 0o710)  # traverse, no listing
    # idempotent: a second run (udev change) changes nothing
    assert pin_access.plan(str(bpffs / "hid"), SYSNAME, gid) == []
    # uninstall takes it back
    assert pin_access.main(["--revoke", "--root", str(bpffs / "hid"), "--group", GROUP]) == 0
    assert opens(pen / "hidbpfd_requests") == "EACCES"
    assert (bpffs.stat().st_gid, stat.S_IMODE(bpffs.stat().st_mode) & 0o777) == (0, 0o700)
    assert stat.S_IMODE((pen / "hidbpfd_requests").stat().st_mode) == 0o600


def test_a_path_another_group_has_rights_on_is_left_alone(bpffs: Path, capsys: object) -> None:
    pen, _ = pin_like_a_root_loader(bpffs)
    os.chown(pen / "hidbpfd_state", -1, grp.getgrnam("adm").gr_gid)
    os.chmod(pen / "hidbpfd_state", 0o640)
    assert pin_access.main([SYSNAME, "--root", str(bpffs / "hid"), "--group", GROUP]) == 1
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert f"{pen / 'hidbpfd_state'}: its group" in err and "not changed" in err, err
    assert stat.S_IMODE((pen / "hidbpfd_state").stat().st_mode) == 0o640
    assert opens(pen / "hidbpfd_requests") == "ok"  # the others were granted


def test_nothing_is_granted_for_a_device_without_api_objects(bpffs: Path) -> None:
    _pen, plain = pin_like_a_root_loader(bpffs)
    shutil.rmtree(_pen)  # only an object without the API is left
    assert pin_access.main([SYSNAME, "--root", str(bpffs / "hid"), "--group", GROUP]) == 0
    for p in (bpffs, bpffs / "hid", plain.parent, plain, plain / "plain_map"):
        assert p.stat().st_gid == 0, p
    assert stat.S_IMODE(bpffs.stat().st_mode) & 0o777 == 0o700


def test_a_missing_group_is_said() -> None:
    assert pin_access.grant("/nonexistent", SYSNAME, "no-such-group-hidbpfd") == [
        "group 'no-such-group-hidbpfd' does not exist (hidbpfd install-service makes it)"
    ]
