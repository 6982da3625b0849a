"""A registry mirror's job: convert an upstream image (plain gzip layers, pushed by
skopeo) into chunked form and push it to another repository, through real
docker-registry; podman-free judge: skopeo + umoci + the tree diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.clamps import expected_clamps
from support.tools import skopeo_copy, skopeo_inspect, umoci_unpack
from support.treediff import assert_trees_equal

EPOCH = 1_700_000_000


def chunkah(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.needs_root
def test_docker_to_docker_conversion(debian_tiny_rootfs, docker_registry, tmp_path):
    src = debian_tiny_rootfs.path
    # "Upstream": a single-layer gzip image, as a registry would hold for any image.
    chunkah(
        "build",
        str(src),
        "-o",
        f"oci:{tmp_path}/up:v1",
        "--max-layers",
        "1",
        "--compression",
        "gzip",
    )
    upstream = docker_registry.ref("upstream/tiny", "v1")
    skopeo_copy(f"oci:{tmp_path}/up:v1", upstream, preserve_digests=True)

    mirror = docker_registry.ref("mirror/tiny", "v1")
    out = json.loads(chunkah("build", upstream, "-o", mirror, "--plain-http", "--json").stdout)
    assert out["destination"] == mirror
    assert len(out["layers"]) > 10  # re-packed by package ownership
    info = skopeo_inspect(mirror, raw=True)
    assert all(layer["mediaType"].endswith("tar+zstd") for layer in info["layers"])
    assert all("org.chunkah.toc.v1.digest" in layer["annotations"] for layer in info["layers"])
    assert skopeo_inspect(mirror)["Digest"] == out["manifest"]["digest"]

    skopeo_copy(mirror, f"oci:{tmp_path}/back:v1", "--dest-compress-format", "gzip")
    rootfs = umoci_unpack(tmp_path / "back", "v1", tmp_path / "bundle")
    assert_trees_equal(src, rootfs, mtime_clamp=expected_clamps(src, EPOCH), ignore=(".",))
