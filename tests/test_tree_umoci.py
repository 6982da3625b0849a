"""umoci (Go's archive/tar, OCI unpack rules) judges our canonical tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

import pytest
from support.handmade import CLAMP, HandmadeTree
from support.tools import umoci_unpack
from support.treediff import assert_trees_equal

from chunkah.tree import read_dir, write_tar


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _layout_with_layer(layout: Path, tar: bytes, diff_id: str) -> None:
    """A minimal OCI layout by hand, so this test depends on nothing but chunkah.tree."""
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _blob(layout, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _blob(layout, layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _blob(layout, manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.needs_root
def test_umoci_unpacks_our_tar_identically(handmade_tree: HandmadeTree, tmp_path: Path) -> None:
    tree = read_dir(handmade_tree.root, include_special_files=True)
    buf = io.BytesIO()
    written = write_tar(tree, buf, mtime_clamp=CLAMP)
    _layout_with_layer(tmp_path / "layout", buf.getvalue(), written.digest)
    rootfs = umoci_unpack(tmp_path / "layout", "t", tmp_path / "bundle")
    assert_trees_equal(handmade_tree.root, rootfs, mtime_clamp=CLAMP)
