"""A full disk during staging, cache writes and commit: StateError, staging cleaned, current intact.

The sysroot lives on a 16 MiB tmpfs (mounted by the test, as root).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.treediff import assert_trees_equal
from test_sysroot_support import deploy, metadata, stage_tree

from chunkah.errors import StateError
from chunkah.host.deploy import collect_garbage, commit_deployment, rollback
from chunkah.host.sysroot import Sysroot

pytestmark = pytest.mark.needs_root
MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def make_image(root: Path, version: int) -> Path:
    """A small OS-like tree; v2 adds a 1 MiB config file and changes a small binary."""
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    (root / "etc/os-release").write_bytes(b"VERSION_ID=%d\n" % version)
    (root / "usr/bin/tool").write_bytes(b"\x7f" * (2 * MiB))  # the same in both
    (root / "usr/bin/other").write_bytes(bytes([version]) * (64 << 10))
    (root / "var/lib/seed").write_bytes(b"seed")
    if version == 2:
        (root / "etc/big.conf").write_bytes(b"#" * MiB)
    for p in [root, *root.rglob("*")]:
        os.utime(p, (1_700_000_000, 1_700_000_000))  # unchanged files are shared
    return root


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(fs: Path, leave: int) -> Path:
    ballast = fs / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(fs) - leave))
    return ballast


def assert_untouched(sysroot: Sysroot, v1: Path, dep_id: str) -> None:
    assert_trees_equal(v1, (sysroot.path / "current").resolve())
    assert sysroot.deployment_ids() == [dep_id]
    assert os.listdir(sysroot.state_dir / "etc") == [dep_id]
    assert list(sysroot.staging_dir.iterdir()) == []
    assert list((sysroot.cache_dir / "tmp").iterdir()) == []
    assert not os.path.lexists(sysroot.journal_path)
    assert sysroot.previous() is None


def test_disk_full_during_commit(small_fs: Path, tmp_path: Path) -> None:
    v1, v2 = make_image(tmp_path / "v1", 1), make_image(tmp_path / "v2", 2)
    sysroot = Sysroot.init(small_fs / "sysroot")
    d1 = deploy(sysroot, v1, "v1")
    # Room for staging v2 (1 MiB new; the rest hardlinked) but not for its merged /etc.
    ballast = fill(small_fs, int(1.5 * MiB))
    with sysroot.lock():
        staged = stage_tree(sysroot, v2)
        with pytest.raises(StateError) as err:
            commit_deployment(sysroot, staged, metadata("v2"))
    assert err.value.exit_code == 5
    msg = str(err.value)
    assert "disk full while merging /etc" in msg and "current deployment is unchanged" in msg
    assert_untouched(sysroot, v1, d1.id)
    assert not staged.exists()

    ballast.unlink()  # space again: the same update now goes through
    d2 = deploy(sysroot, v2, "v2")
    assert_trees_equal(v2, (sysroot.path / "current").resolve())
    assert (sysroot.etc_dir(d2.id) / "big.conf").stat().st_size == MiB
    rollback(sysroot)
    assert_trees_equal(v1, (sysroot.path / "current").resolve())


def test_disk_full_while_staging(small_fs: Path, tmp_path: Path) -> None:
    v1 = make_image(tmp_path / "v1", 1)
    sysroot = Sysroot.init(small_fs / "sysroot")
    d1 = deploy(sysroot, v1, "v1")
    fill(small_fs, MiB // 2)
    with sysroot.lock():
        full = pytest.raises(StateError, match="disk full while staging the new tree")
        with full, sysroot.stage() as staged:
            (staged / "big").write_bytes(b"x" * MiB)  # what an assembler would hit
        assert not staged.exists()
        data = os.urandom(MiB)
        with pytest.raises(StateError, match="disk full while storing chunk"):
            sysroot.cache_put(hashlib.sha256(data).digest(), data)
        assert not sysroot.cache_has(hashlib.sha256(data).digest())
    assert_untouched(sysroot, v1, d1.id)


def test_disk_full_at_every_size(small_fs: Path, tmp_path: Path) -> None:
    """Leave less and less room: every commit either completes or changes nothing."""
    v1, v2 = make_image(tmp_path / "v1", 1), make_image(tmp_path / "v2", 2)
    sysroot = Sysroot.init(small_fs / "sysroot")
    d1 = deploy(sysroot, v1, "v1")
    outcomes = []
    # Fine steps where the last small writes (deployment.json, the journal) fail too.
    for leave_kib in [3000, *range(2300, 1900, -4), 1600, 1100, 1050, 1030]:
        ballast = fill(small_fs, leave_kib * 1024)
        try:
            with sysroot.lock():
                staged = stage_tree(sysroot, v2)
                commit_deployment(sysroot, staged, metadata("v2"))
                outcomes.append("ok")
                rollback(sysroot)
                collect_garbage(sysroot)
        except StateError as exc:
            assert "disk full" in str(exc)
            outcomes.append(str(exc).split(" in ")[0])
        assert_trees_equal(v1, (sysroot.path / "current").resolve())
        assert list(sysroot.staging_dir.iterdir()) == []
        assert not os.path.lexists(sysroot.journal_path)
        assert d1.id in sysroot.deployment_ids()
        ballast.unlink()
    phases = set(outcomes)
    assert {"ok", "disk full while merging /etc", "disk full while staging the new tree"} <= phases
    assert len(phases) >= 4, phases  # and some of the later steps (recording, switching)
