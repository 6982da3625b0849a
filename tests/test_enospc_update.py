"""``chunkah update`` on a small, size-limited filesystem that fills up.

The sysroot lives on its own 12 MiB tmpfs (mounted by the test; we are root) with
v1 of the small image deployed; ballast leaves only so much room that the update
to v2 runs out while fetching chunks or while assembling.  Each
time: exit code 5 and a message saying the disk is full, no partial deployment
(``current`` is exactly v1, no new deployment directory, staging empty), the cache
consistent (every chunk hashes to its name).  After the ballast is removed the same
command deploys v2, fetching only what the failed run had not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hostile import chunkah, small_tree, update_cmd
from support.registry import RunningRegistry
from support.treediff import assert_trees_equal

pytestmark = pytest.mark.needs_root
KiB = 1024


@pytest.fixture(scope="module")
def images(
    docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("enospc")
    out = {}
    for v in (1, 2):
        src = small_tree(tmp / f"src{v}", v)
        ref = docker_registry.ref("enospc/small", f"v{v}")
        chunkah("build", str(src), "-o", ref, "--plain-http", "-q")
        out[v] = (ref, src)
    return out


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave: int) -> Path:
    st = os.statvfs(fs)
    ballast = fs / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def cache_consistent(sysroot: Path) -> int:
    chunks = list((sysroot / "cache/chunks/sha256").glob("*/*"))
    for path in chunks:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    assert list((sysroot / "cache/tmp").iterdir()) == []
    return len(chunks)


@pytest.mark.parametrize(
    ("leave_kib", "where"),
    [(600, "while storing chunk"), (2600, "while writing the new deployment")],
    ids=["fetching", "assembling"],
)
def test_update_on_a_full_disk(
    images: dict[int, tuple[str, Path]], small_fs: Path, leave_kib: int, where: str
) -> None:
    """(A disk that fills during the commit itself: tests/test_sysroot_enospc.py.)"""
    (ref1, src1), (ref2, src2) = images[1], images[2]
    sysroot = small_fs / "sys"
    first = json.loads(chunkah(*update_cmd(ref1, sysroot)).stdout)
    ballast = fill(small_fs, leave_kib * KiB)

    r = chunkah(*update_cmd(ref2, sysroot), check=False)
    assert r.returncode == 5, (leave_kib, r.returncode, r.stderr[-2000:])
    assert "disk full" in r.stderr or "no space left" in r.stderr, r.stderr
    assert where in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # No partial deployment: current is v1, nothing new in deployments/, staging empty.
    assert_trees_equal(src1, os.path.realpath(sysroot / "current"), mtime_clamp=None)
    assert os.listdir(sysroot / "deployments") == [first["deployment"]]
    assert not os.path.lexists(sysroot / "switch.json")
    assert list((sysroot / "staging").iterdir()) == []
    kept = cache_consistent(sysroot)
    status = json.loads(chunkah("status", "--sysroot", str(sysroot), "--json").stdout)
    assert status["current"]["id"] == first["deployment"] and status["previous"] is None

    ballast.unlink()  # space again: the same command now goes through
    second = json.loads(chunkah(*update_cmd(ref2, sysroot)).stdout)
    assert_trees_equal(src2, os.path.realpath(sysroot / "current"), mtime_clamp=None)
    assert_trees_equal(src1, os.path.realpath(sysroot / "previous"), mtime_clamp=None)
    if kept:  # chunks the failed run kept were not fetched again
        assert second["plan"]["chunks"].get("cache", 0) >= 1
