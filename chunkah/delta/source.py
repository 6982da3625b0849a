"""The files of a chunkah image in an OCI layout, read through its TOCs.

Delta generation needs every file's digest and chunks (from the TOCs, without
decompressing a layer) and the content of the files it pairs (decompressed from
their frames only).  Layers without a chunkah TOC are refused: deltas are made
for images ``chunkah build`` wrote.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from chunkah import oci
from chunkah.compression import CompressionError, decompress_frame
from chunkah.delta.pairing import FileInfo
from chunkah.errors import InputError, VerificationError
from chunkah.format.toc import decode_toc_frame
from chunkah.format.writer import ANNOTATION_TOC_DIGEST, ANNOTATION_TOC_POSITION
from chunkah.host.index import IndexEntry, LayerIndex, index_from_toc
from chunkah.host.plan import flatten
from chunkah.owners.errors import DatabaseError
from chunkah.owners.python_dist import canonical_project_name, parse_record

__all__ = ["ImageFiles", "open_image_files"]

_FRAME_CACHE = 16
_DPKG_INFO = b"var/lib/dpkg/info/"


@dataclass
class ImageFiles:
    """One image: its layer indexes, its flattened regular files, their content."""

    image: oci.ResolvedImage
    layout: oci.OciLayout
    indexes: list[LayerIndex]
    files: dict[bytes, tuple[int, IndexEntry]]
    _blobs: dict[int, BinaryIO] = field(default_factory=dict)
    _frames: OrderedDict[tuple[int, int], bytes] = field(default_factory=OrderedDict)

    @property
    def digest(self) -> str:
        return self.image.digest

    def _frame(self, layer: int, frame: int) -> bytes:
        key = (layer, frame)
        got = self._frames.get(key)
        if got is not None:
            self._frames.move_to_end(key)
            return got
        blob = self._blobs.get(layer)
        if blob is None:
            blob = self._blobs[layer] = self.layout.blob_path(self.indexes[layer].digest).open("rb")
        ref = self.indexes[layer].frames[frame]
        blob.seek(ref.offset)
        try:
            raw = decompress_frame(blob.read(ref.size), ref.usize)
        except CompressionError as exc:
            raise VerificationError(
                f"layer {self.indexes[layer].digest}: frame {frame}: {exc}"
            ) from None
        self._frames[key] = raw
        if len(self._frames) > _FRAME_CACHE:
            self._frames.popitem(last=False)
        return raw

    def read(self, path: bytes) -> bytes:
        """The content of a regular file (checked against its sha256 by the caller's use)."""
        layer, entry = self.files[path]
        out = bytearray()
        for c in entry.chunks:
            raw = self._frame(layer, c.frame)
            out += raw[c.offset_in_frame : c.offset_in_frame + c.size]
        if len(out) != entry.size:
            raise VerificationError(f"{path!r}: chunks give {len(out)} of {entry.size} bytes")
        return bytes(out)

    def chunk_digests(self) -> set[bytes]:
        return {c.sha256 for _li, e in self.files.values() for c in e.chunks}

    def chunk_cost(self, path: bytes, have: set[bytes]) -> float:
        """Compressed bytes a host fetches for this file's chunks that are not in ``have``
        (each chunk's share of its frame)."""
        layer, entry = self.files[path]
        frames = self.indexes[layer].frames
        cost = 0.0
        for c in entry.chunks:
            if c.sha256 in have or c.frame < 0:
                continue
            f = frames[c.frame]
            cost += f.size * c.size / max(1, f.usize)
        return cost

    def owners(self) -> dict[bytes, str]:
        """path -> package, from dpkg's file lists and Python RECORD files."""
        owner: dict[bytes, str] = {}
        for path in self.files:
            if path.startswith(_DPKG_INFO) and path.endswith(b".list"):
                pkg = path[len(_DPKG_INFO) : -5].split(b":")[0].decode("utf-8", "replace")
                for line in self.read(path).splitlines():
                    p = line.strip().lstrip(b"/")
                    if not p:
                        continue
                    if p not in self.files and b"usr/" + p in self.files:
                        p = b"usr/" + p  # merged /usr: the list names /lib, the file is /usr/lib
                    owner.setdefault(p, pkg)
            elif path.endswith(b".dist-info/RECORD"):
                dist_info = path[: -len(b"/RECORD")]
                site, _, name = dist_info.rpartition(b"/")
                project = canonical_project_name(name.split(b"-")[0].decode("utf-8", "replace"))
                try:
                    rows = parse_record(self.read(path), path)
                except DatabaseError:
                    continue  # a RECORD we cannot read only means no owner for its files
                for rel, _digest, _size in rows:
                    owner.setdefault((site + b"/" if site else b"") + rel.encode(), project)
        return owner

    def file_infos(self) -> list[FileInfo]:
        owner = self.owners()
        return [
            FileInfo(path, e.sha256, e.size, owner.get(path))
            for path, (_li, e) in self.files.items()
            if e.type == "file"
        ]

    def close(self) -> None:
        for f in self._blobs.values():
            f.close()
        self._blobs.clear()
        self._frames.clear()


def _layer_index(layout: oci.OciLayout, desc: oci.Descriptor, diff_id: str) -> LayerIndex:
    pos = desc.annotations.get(ANNOTATION_TOC_POSITION)
    toc_digest = desc.annotations.get(ANNOTATION_TOC_DIGEST)
    if pos is None or toc_digest is None:
        raise InputError(
            f"layer {desc.digest} has no chunkah TOC: deltas are made between images "
            "built by chunkah build"
        )
    offset, length, body = (int(x) for x in pos.split(":"))
    with layout.blob_path(desc.digest).open("rb") as f:
        f.seek(offset)
        frame = f.read(length)
    toc = decode_toc_frame(frame, expected_digest=toc_digest, body_size=body, toc_offset=offset)
    if toc.diff_id_digest != diff_id:
        raise VerificationError(f"layer {desc.digest}: TOC does not describe diff_id {diff_id}")
    return index_from_toc(
        toc, digest=desc.digest, diff_id=diff_id, blob_size=desc.size, media_type=desc.media_type
    )


def open_image_files(layout_dir: Path, tag: str | None) -> ImageFiles:
    """Read ``oci:layout_dir[:tag]``: manifest, config, TOCs, the flattened file table."""
    layout = oci.OciLayout.open(layout_dir)
    image = oci.resolve_image(layout, tag)
    indexes = [
        _layer_index(layout, desc, image.config.diff_ids[i])
        for i, desc in enumerate(image.manifest.layers)
    ]
    files = {p: v for p, v in flatten(indexes).items() if v[1].type == "file"}
    return ImageFiles(image, layout, indexes, files)
