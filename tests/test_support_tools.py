"""Smoke test of the real tools and fixtures end to end, without chunkah code.

umoci builds an image, skopeo pushes it into the real docker-registry and pulls
it back, skopeo inspect agrees on both sides, umoci unpacks the copy, and the
tree diff finds it equal to what went in.  If this fails, the fixtures are
broken, not chunkah.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from support.handmade import make_handmade_tree
from support.registry import RunningRegistry
from support.tools import (
    ToolError,
    run,
    skopeo_copy,
    skopeo_inspect,
    umoci_init_new,
    umoci_insert,
    umoci_repack,
    umoci_unpack,
)
from support.treediff import assert_trees_equal, diff_trees


def _small_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "hello.txt").write_bytes(b"hello\n")
    (path / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    os.symlink("hello.txt", path / "link")
    os.chmod(path / "sub", 0o750)
    for p in (path / "hello.txt", path / "sub/data.bin", path / "link", path / "sub", path):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return path


def test_run_failure_message_carries_output() -> None:
    with pytest.raises(ToolError) as exc:
        run(["sh", "-c", "echo to-out; echo to-err >&2; exit 3"])
    text = str(exc.value)
    assert "exit status 3" in text and "to-out" in text and "to-err" in text
    with pytest.raises(ToolError, match=r"timed out after 0\.2s"):
        run(["sleep", "5"], timeout=0.2)
    with pytest.raises(ToolError, match="not installed"):
        run(["chunkah-no-such-tool"])


def test_umoci_insert_skopeo_registry_round_trip(
    tmp_path: Path, docker_registry: RunningRegistry
) -> None:
    src = _small_dir(tmp_path / "src")
    layout = tmp_path / "layout"
    umoci_init_new(layout, "t")
    umoci_insert(layout, "t", src, "/data")

    mark = docker_registry.access_offset()
    ref = docker_registry.ref("smoke/insert", "t")
    skopeo_copy(f"oci:{layout}:t", ref, preserve_digests=True)
    pushed = docker_registry.access_entries(since=mark)
    assert any(e.method == "PUT" and e.is_manifest and e.status == 201 for e in pushed), pushed

    copy = tmp_path / "copy"
    skopeo_copy(ref, f"oci:{copy}:t", preserve_digests=True)

    local = skopeo_inspect(f"oci:{layout}:t", raw=True, parse=False)
    remote = skopeo_inspect(ref, raw=True, parse=False)
    back = skopeo_inspect(f"oci:{copy}:t", raw=True, parse=False)
    assert isinstance(local, bytes)
    assert local == remote == back
    digest = "sha256:" + hashlib.sha256(local).hexdigest()
    info = skopeo_inspect(ref)
    assert isinstance(info, dict)
    assert info["Digest"] == digest
    manifest = json.loads(local)
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    config = skopeo_inspect(ref, config=True)
    assert isinstance(config, dict)
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])

    rootfs = umoci_unpack(copy, "t", tmp_path / "bundle")
    assert_trees_equal(src, rootfs / "data")


def test_handmade_tree_through_registry(tmp_path: Path, docker_registry: RunningRegistry) -> None:
    """Every entry type survives umoci repack → registry → umoci unpack (as root)."""
    src = make_handmade_tree(tmp_path / "src")
    layout = tmp_path / "layout"
    umoci_init_new(layout, "t")
    bundle = tmp_path / "bundle"
    rootfs = umoci_unpack(layout, "t", bundle)
    shutil.rmtree(rootfs)
    run(["cp", "-a", "--", src.root, rootfs])
    umoci_repack(layout, "t", bundle)

    ref = docker_registry.ref("smoke/handmade", "t")
    mark = docker_registry.access_offset()
    skopeo_copy(f"oci:{layout}:t", ref)
    copy = tmp_path / "copy"
    skopeo_copy(ref, f"oci:{copy}:t")
    entries = docker_registry.access_entries(since=mark)

    manifest = json.loads(skopeo_inspect(ref, raw=True, parse=False))
    (layer,) = manifest["layers"]
    blob_gets = [
        e
        for e in entries
        if e.method == "GET" and e.status == 200 and e.path.endswith("/blobs/" + layer["digest"])
    ]
    assert [e.bytes for e in blob_gets] == [layer["size"]], entries

    out = umoci_unpack(copy, "t", tmp_path / "unpacked")
    diffs = diff_trees(src.root, out)
    if os.geteuid() == 0:
        assert diffs == []
    else:  # rootless umoci cannot make devices or foreign owners
        assert diffs, "expected rootless differences"
