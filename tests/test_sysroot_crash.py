"""kill -9 during a deployment or a rollback: ``current`` stays one whole image; a re-run completes.

A child process deploys with ``CHUNKAH_TEST_CRASH_AT=<checkpoint>``, which makes it
``os._exit`` there (no cleanup, no flush: what SIGKILL does), at every checkpoint of
``commit_deployment``; then more children are SIGKILLed after a range of delays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.treediff import diff_trees
from test_sysroot_support import deploy, example_tree

from chunkah.host.deploy import CHECKPOINTS, CRASH_ENV, CRASH_EXIT
from chunkah.host.sysroot import Sysroot, status

SUPPORT = Path(__file__).with_name("test_sysroot_support.py")
BEFORE_COMMIT_POINT = CHECKPOINTS[: CHECKPOINTS.index("switched")]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("images")
    return example_tree(base / "v1", 1), example_tree(base / "v2", 2)


def child(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, str(SUPPORT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def which_image(sysroot: Sysroot, images: tuple[Path, Path]) -> int:
    """1 or 2: the image ``current`` holds exactly (fails if it is neither, or missing)."""
    link = sysroot.path / "current"
    assert link.is_symlink(), "current is gone"
    tree = link.resolve()
    for version, image in enumerate(images, 1):
        if diff_trees(image, tree) == []:
            return version
    raise AssertionError(f"current ({tree}) is neither image: {diff_trees(images[1], tree)[:5]}")


def setup_v1(tmp_path: Path, images: tuple[Path, Path]) -> Sysroot:
    sysroot = Sysroot.init(tmp_path / "sysroot")
    d1 = deploy(sysroot, images[0], "v1")
    (sysroot.etc_dir(d1.id) / "example.conf").write_bytes(b"admin's edit\n")
    return sysroot


def check_consistent(sysroot: Sysroot, images: tuple[Path, Path]) -> int:
    version = which_image(sysroot, images)
    report = status(sysroot)  # read-only, no lock, works on whatever the crash left
    json.dumps(report)
    assert report["update_running"] is None  # the dead child's flock is gone
    cur = sysroot.current()
    assert cur is not None and cur.image_ref == f"v{version}"
    assert (sysroot.etc_dir(cur.id) / "example.conf").read_bytes() == b"admin's edit\n"
    if version == 2:
        prev = sysroot.previous()
        assert prev is not None and prev.image_ref == "v1"
    return version


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_kill_at_each_checkpoint_then_rerun(
    tmp_path: Path, images: tuple[Path, Path], checkpoint: str
) -> None:
    sysroot = setup_v1(tmp_path, images)
    r = child("deploy", str(sysroot.path), str(images[1]), "v2", crash_at=checkpoint)
    assert r.returncode == CRASH_EXIT, r.stderr
    version = check_consistent(sysroot, images)
    assert version == (1 if checkpoint in BEFORE_COMMIT_POINT else 2), checkpoint

    if version == 1:  # the update did not happen: run it again
        r = child("deploy", str(sysroot.path), str(images[1]), "v2")
        assert r.returncode == 0, r.stderr
    with sysroot.lock():  # what any next run does first: finish the journal, clean staging
        pass
    assert check_consistent(sysroot, images) == 2
    assert sysroot.previous() is not None and sysroot.previous().image_ref == "v1"  # type: ignore[union-attr]
    assert list(sysroot.staging_dir.iterdir()) == []
    assert not os.path.lexists(sysroot.journal_path)
    assert status(sysroot)["pending_switch"] is False

    r = child("deploy", str(sysroot.path), str(images[0]), "v1")  # and life goes on
    assert r.returncode == 0, r.stderr
    assert which_image(sysroot, images) == 1
    assert len(sysroot.deployment_ids()) == 2  # gc removed orphans of the crashed run


@pytest.mark.parametrize("checkpoint", ["journaled", "switched"])
def test_kill_during_rollback(tmp_path: Path, images: tuple[Path, Path], checkpoint: str) -> None:
    sysroot = setup_v1(tmp_path, images)
    assert child("deploy", str(sysroot.path), str(images[1]), "v2").returncode == 0
    r = child("rollback", str(sysroot.path), crash_at=checkpoint)
    assert r.returncode == CRASH_EXIT, r.stderr
    version = which_image(sysroot, images)
    assert version == (2 if checkpoint == "journaled" else 1)
    cur, prev = sysroot.current(), sysroot.previous()
    assert cur is not None and prev is not None and {cur.image_ref, prev.image_ref} == {"v1", "v2"}
    assert child("rollback", str(sysroot.path)).returncode == 0
    assert which_image(sysroot, images) == 3 - version


def test_sigkill_at_random_moments(tmp_path: Path, images: tuple[Path, Path]) -> None:
    sysroot = setup_v1(tmp_path, images)
    # How long a whole deployment takes here, to spread the kills over it.
    t0 = time.monotonic()
    assert child("deploy", str(sysroot.path), str(images[1]), "v2").returncode == 0
    assert child("deploy", str(sysroot.path), str(images[0]), "v1").returncode == 0
    duration = (time.monotonic() - t0) / 2
    seen = set()
    for i in range(12):
        target = images[i % 2]
        ref = f"v{i % 2 + 1}"
        proc = subprocess.Popen(
            [sys.executable, str(SUPPORT), "deploy", str(sysroot.path), str(target), ref],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        time.sleep(duration * (i + 0.5) / 12)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        seen.add(proc.returncode)
        version = which_image(sysroot, images)
        json.dumps(status(sysroot))
        with sysroot.lock():  # recovery of the next run
            pass
        assert which_image(sysroot, images) == version
        assert list(sysroot.staging_dir.iterdir()) == []
    r = child("deploy", str(sysroot.path), str(images[1]), "v2")
    assert r.returncode == 0, r.stderr
    assert which_image(sysroot, images) == 2
    assert len(sysroot.deployment_ids()) == 2
    assert -signal.SIGKILL in seen  # at least some of the kills landed mid-run
