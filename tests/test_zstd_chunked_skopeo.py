"""zstd:chunked layers made by the real skopeo, read by our reader and judged by the tar.

chunkah builds an image with gzip layers; ``skopeo copy --dest-compress-format
zstd:chunked`` recompresses it (skopeo 1.9: old annotation keys, no tar-split).
For every layer: the blob decompresses to the tar whose sha256 is the diff_id; the
converted TOC agrees with that tar (paths, types, sizes, modes, owners, mtimes,
links, devices, xattrs, hardlink sets, file sha256); every chunk decompresses from
its byte range alone to its sha256; and the exact tar comes back from a tar-split
(made here from the tar, since skopeo 1.9 writes none) plus the chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from support.tools import skopeo_copy
from test_zstd_chunked import encode_tar_split, tar_split_records

from chunkah.format.toc import decode_toc_frame
from chunkah.format.zstd_chunked import (
    BlobSpan,
    ZstdChunkedLayer,
    decode_tar_split,
    is_zstd_chunked,
    normalize_name,
    read_chunk,
    read_zstd_chunked_toc,
    regenerate_tar,
)

EPOCH = 1_700_000_000
BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")


def chunkah_build(src: Path, dest: str, *args: str) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", "build", str(src), "-o", dest, "-q", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr


def to_zstd_chunked(src: str, dest: str) -> None:
    """``skopeo copy --dest-compress-format zstd:chunked``, recompressing every layer.

    skopeo's blob-info cache would otherwise let it reuse a blob it compressed before.
    """
    BLOB_INFO_CACHE.unlink(missing_ok=True)
    skopeo_copy(src, dest, "--dest-compress-format", "zstd:chunked")


class Layout:
    """An OCI layout read as plain JSON (no chunkah code: this is the judge's side)."""

    def __init__(self, root: Path, tag: str) -> None:
        self.root = root
        index = json.loads((root / "index.json").read_text())
        desc = next(
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        )
        self.manifest = json.loads(self.blob_path(desc["digest"]).read_bytes())
        self.config = json.loads(self.blob_path(self.manifest["config"]["digest"]).read_bytes())

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def layers(self) -> Iterator[tuple[dict[str, Any], str]]:
        yield from zip(self.manifest["layers"], self.config["rootfs"]["diff_ids"], strict=True)


def file_reader(path: Path) -> Any:
    f = path.open("rb")

    def read_range(offset: int, length: int) -> bytes:
        f.seek(offset)
        return f.read(length)

    return read_range


def decompress_all(data: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


def lossy(raw: bytes) -> bytes:
    """What Go's encoding/json makes of a non-UTF-8 name: U+FFFD for bad bytes."""
    return raw.decode("utf-8", "replace").encode("utf-8")


_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def expected_from_tar(tar: bytes) -> tuple[dict[bytes, dict[str, Any]], list[frozenset[bytes]]]:
    """Per path what the TOC must say, and the hardlink sets, from the tar itself."""
    out: dict[bytes, dict[str, Any]] = {}
    groups: dict[bytes, set[bytes]] = defaultdict(set)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf.getmembers():
            path = lossy(normalize_name(_raw(m.name) + (b"/" if m.isdir() else b""), "tar"))
            kind = _TYPES[m.type]
            sha = b""
            if m.isreg():
                fobj = tf.extractfile(m)
                assert fobj is not None
                sha = hashlib.sha256(fobj.read()).digest()
            xattrs = tuple(
                sorted(
                    (k[len("SCHILY.xattr.") :], _raw(v))
                    for k, v in m.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                )
            )
            out[path] = {
                "kind": kind,
                "mode": m.mode & 0o7777,
                "uid": m.uid,
                "gid": m.gid,
                "mtime": int(m.mtime),
                "size": m.size if m.isreg() else 0,
                "link": lossy(_raw(m.linkname)) if m.issym() else b"",
                "rdev": (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
                "xattrs": xattrs,
                "sha256": sha,
            }
            if m.islnk():
                target = lossy(normalize_name(_raw(m.linkname), "tar"))
                groups[target].add(target)
                groups[target].add(path)
    for members in groups.values():
        source = next(p for p in members if out[p]["kind"] == "file")
        for p in members:
            out[p].update(size=out[source]["size"], sha256=out[source]["sha256"])
    return out, [frozenset(g) for g in groups.values()]


def assert_toc_matches_tar(layer: ZstdChunkedLayer, tar: bytes) -> None:
    want, groups = expected_from_tar(tar)
    toc = layer.toc
    got = {e.path: e for e in toc}
    assert sorted(got) == sorted(want)
    toc_groups: dict[bytes, set[bytes]] = defaultdict(set)
    for path, e in got.items():
        w = want[path]
        kind = "file" if w["kind"] == "hardlink" else w["kind"]
        assert (e.type if e.type != "hardlink" else "file") == kind, path
        assert (e.mode, e.uid, e.gid, e.mtime) == (w["mode"], w["uid"], w["gid"], w["mtime"]), path
        assert (e.size, e.rdev, e.xattrs) == (w["size"], w["rdev"], w["xattrs"]), path
        if e.type == "symlink":
            assert e.link == w["link"], path
        if e.type == "file":
            assert e.sha256 == (w["sha256"] or hashlib.sha256(b"").digest()), path
        if e.type == "hardlink":
            toc_groups[e.link].update((e.link, path))
    assert sorted(map(sorted, toc_groups.values())) == sorted(map(sorted, groups))


def assert_chunks_verify(layer: ZstdChunkedLayer, read_range: Any) -> dict[bytes, bytes]:
    """Read every chunk from its range alone; returns each file's content digest."""
    toc = layer.toc
    digests = {}
    for e in toc:
        if e.type != "file":
            continue
        h = hashlib.sha256()
        for c in range(e.first_chunk, e.first_chunk + e.n_chunks):
            h.update(read_chunk(layer, c, read_range))
        assert h.digest() == e.sha256, e.path
        digests[e.path] = h.digest()
    return digests


def assert_tar_regenerates(
    layer: ZstdChunkedLayer, tar: bytes, read_range: Any, diff_id: str
) -> None:
    raw = encode_tar_split(tar_split_records(tar))
    compressed = zstandard.ZstdCompressor(level=3).compress(raw)
    records = decode_tar_split(
        compressed,
        BlobSpan(0, len(compressed), len(raw)),
        expected_digest="sha256:" + hashlib.sha256(compressed).hexdigest(),
    )
    toc = layer.toc
    index = {toc.path(i): i for i in range(len(toc))}

    def content(path: bytes) -> Iterator[bytes]:
        e = toc.entry(index[lossy(path)])
        if e.type == "hardlink":
            e = toc.entry(index[e.link])
        for c in range(e.first_chunk, e.first_chunk + e.n_chunks):
            yield read_chunk(layer, c, read_range)

    digest, size = regenerate_tar(records, content, expected_diff_id=diff_id)
    assert (digest, size) == (diff_id, len(tar))


def check_converted_image(out: Path, tag: str) -> list[ZstdChunkedLayer]:
    layout = Layout(out, tag)
    layers = []
    for desc, diff_id in layout.layers():
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert is_zstd_chunked(desc["annotations"])
        path = layout.blob_path(desc["digest"])
        data = path.read_bytes()
        tar = decompress_all(data)
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
        read_range = file_reader(path)
        layer = read_zstd_chunked_toc(
            desc["annotations"], read_range, blob_size=desc["size"], diff_id=diff_id
        )
        assert layer.toc.diff_id_digest == diff_id
        assert_toc_matches_tar(layer, tar)
        assert_chunks_verify(layer, read_range)
        if not layer.lossy_paths:
            assert_tar_regenerates(layer, tar, read_range, diff_id)
        layers.append(layer)
    return layers


def our_tocs(out: Path, tag: str) -> list[Any]:
    layout = Layout(out, tag)
    tocs = []
    for desc, _ in layout.layers():
        ann = desc["annotations"]
        off, length, body = map(int, ann["org.chunkah.toc.v1.position"].split(":"))
        with layout.blob_path(desc["digest"]).open("rb") as f:
            f.seek(off)
            frame = f.read(length)
        tocs.append(
            decode_toc_frame(
                frame, expected_digest=ann["org.chunkah.toc.v1.digest"], body_size=body
            )
        )
    return tocs


def assert_same_entries(ours: Any, theirs: ZstdChunkedLayer) -> None:
    """Our chunked TOC and the converted one describe the same entries."""
    a = [e for e in ours]
    b = list(theirs.toc)
    assert [lossy(e.path) for e in a] == [e.path for e in b]
    for x, y in zip(a, b, strict=True):
        fields = ("type", "mode", "uid", "gid", "mtime", "size", "xattrs", "rdev", "sha256")
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields], x.path
        assert lossy(x.link) == y.link, x.path


@pytest.mark.needs_root
def test_handmade_tree_through_skopeo_zstd_chunked(handmade_tree, tmp_path):
    src = handmade_tree.root
    gz, zc, ours = tmp_path / "gz", tmp_path / "zc", tmp_path / "ours"
    common = ("--max-layers", "1", "--include-special-files")
    chunkah_build(src, f"oci:{gz}:t", "--compression", "gzip", *common)
    chunkah_build(src, f"oci:{ours}:t", *common)
    to_zstd_chunked(f"oci:{gz}:t", f"oci:{zc}:t")
    [layer] = check_converted_image(zc, "t")
    # Non-UTF-8 names come out of Go's JSON as U+FFFD, and are reported.
    assert {layer.toc.path(i) for i in layer.lossy_paths} == {
        lossy(p) for p in handmade_tree.non_utf8
    }
    # The same tree in our own format: the planner sees the same entries.
    [toc] = our_tocs(ours, "t")
    assert_same_entries(toc, layer)


@pytest.mark.needs_root
def test_debian_image_through_skopeo_zstd_chunked(debian_tiny_rootfs, tmp_path):
    gz, zc = tmp_path / "gz", tmp_path / "zc"
    chunkah_build(debian_tiny_rootfs.path, f"oci:{gz}:t", "--compression", "gzip")
    to_zstd_chunked(f"oci:{gz}:t", f"oci:{zc}:t")
    layers = check_converted_image(zc, "t")
    assert len(layers) > 1
    chunks = sum(len(x.toc.chunks) for x in layers)
    files = sum(int((x.toc.entries["type"] == 0).sum()) for x in layers)
    assert chunks >= files // 2  # a chunk for every non-empty file, more for big ones
