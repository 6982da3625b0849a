"""Two commands at once on one sysroot, through the CLI as an administrator types them.

An update is slowed down by a proxy that paces blob bodies (a slow link); while it
runs, a second ``chunkah update`` fails at once with exit code 5 naming the running
one, ``chunkah update --wait`` waits for it and then finds the image deployed,
``chunkah status`` answers (and shows the update running), and ``chunkah rollback``
is refused with exit code 5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.faultproxy import proxy_thread
from support.hostile import EPOCH, chunkah, small_tree, update_cmd
from support.registry import RunningRegistry
from support.treediff import assert_trees_equal

from chunkah.host.sysroot import Sysroot, status


@pytest.fixture(scope="module")
def images(
    docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("concurrency")
    out = {}
    for v in (1, 2):
        src = small_tree(tmp / f"src{v}", v)
        ref = docker_registry.ref("concurrency/small", f"v{v}")
        chunkah("build", str(src), "-o", ref, "--plain-http", "-q")
        out[v] = (ref, src)
    return out


def test_update_status_rollback_while_an_update_runs(
    images: dict[int, tuple[str, Path]], docker_registry: RunningRegistry, tmp_path: Path
) -> None:
    (ref1, src1), (ref2, src2) = images[1], images[2]
    sysroot = tmp_path / "sys"
    chunkah(*update_cmd(ref1, sysroot))
    chunkah(*update_cmd(ref2, sysroot))  # so that rollback has a previous deployment...
    chunkah("rollback", "--sysroot", str(sysroot))  # ...and v1 is current again
    chunkah(*update_cmd(ref1, sysroot))  # gc: v2 is only "previous" now
    # A slow link: the v2 update's ~1.9 MB take about 15 s.
    with proxy_thread(docker_registry.url, rate=120_000) as proxy:
        slow_ref = ref2.replace(docker_registry.host, proxy.host)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        first = subprocess.Popen(
            [sys.executable, "-m", "chunkah", *update_cmd(slow_ref, sysroot)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while status(Sysroot.open(sysroot), disk=False)["update_running"] is None:
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the update never took the lock"
                time.sleep(0.05)

            busy = chunkah(*update_cmd(ref2, sysroot), check=False)
            assert busy.returncode == 5, busy.stderr
            assert f"another update (pid {first.pid})" in busy.stderr
            assert "Traceback" not in busy.stderr

            shown = chunkah("status", "--sysroot", str(sysroot), "--json")
            report = json.loads(shown.stdout)
            assert report["update_running"]["pid"] == first.pid
            assert report["current"]["image_ref"] == ref1
            human = chunkah("status", "--sysroot", str(sysroot)).stdout
            assert "update running" in human

            refused = chunkah("rollback", "--sysroot", str(sysroot), check=False)
            assert refused.returncode == 5, refused.stderr
            assert "another update" in refused.stderr
            assert first.poll() is None, "the slow update should still be running"

            # --wait: blocks until the running update is done, then finds v2 deployed.
            waited = chunkah(*update_cmd(ref2, sysroot, "--wait", "120"))
            assert first.wait(120) == 0, first.communicate()
            assert json.loads(waited.stdout)["unchanged"] is True
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(30)
    assert_trees_equal(src2, os.path.realpath(sysroot / "current"), mtime_clamp=None)
    assert_trees_equal(src1, os.path.realpath(sysroot / "previous"), mtime_clamp=None)
    assert status(Sysroot.open(sysroot))["update_running"] is None
    # and with nothing running, rollback works again
    chunkah("rollback", "--sysroot", str(sysroot))
    assert_trees_equal(src1, os.path.realpath(sysroot / "current"), mtime_clamp=None)
