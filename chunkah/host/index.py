"""What a host knows about one layer of a target image, whatever its format.

A chunkah TOC, a zstd:chunked TOC (converted to a chunkah ``Toc``), or the listing of
a plain layer made after downloading it whole: the planner sees them all as a
``LayerIndex`` of entries whose content is a list of chunks (sha256 + size + the
frame that holds it, when the layer can be fetched by ranges).

Entries, chunks and frames are named tuples: a 100 000-entry layer is converted in
well under a second, where frozen dataclasses cost several.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from chunkah.format.toc import TYPE_NAMES, Toc

__all__ = ["ChunkRef", "FrameRef", "IndexEntry", "LayerIndex", "index_from_toc"]


class ChunkRef(NamedTuple):
    sha256: bytes
    size: int
    frame: int  # index into LayerIndex.frames; -1: not fetchable by range; -2: all zeros (a hole)
    offset_in_frame: int = 0


class FrameRef(NamedTuple):
    offset: int  # in the blob
    size: int  # compressed bytes
    usize: int  # decompressed bytes


class IndexEntry(NamedTuple):
    path: bytes
    type: str  # file, dir, symlink, char, block, fifo, hardlink
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: bytes = b""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    rdev: tuple[int, int] = (0, 0)
    sha256: bytes = b""
    chunks: tuple[ChunkRef, ...] = ()

    def same_metadata(self, other: IndexEntry) -> bool:
        """Equal in everything a hardlink would share (inode metadata and content)."""
        return (
            self.type == other.type
            and self.mode == other.mode
            and self.uid == other.uid
            and self.gid == other.gid
            and self.mtime == other.mtime
            and self.xattrs == other.xattrs
            and self.sha256 == other.sha256
        )


@dataclass
class LayerIndex:
    """One layer: its blob and entries (canonical order for chunkah layers)."""

    digest: str
    diff_id: str
    blob_size: int
    media_type: str
    kind: str  # "chunkah", "zstd:chunked" or "whole" (listing of a downloaded layer)
    entries: Sequence[IndexEntry]
    frames: Sequence[FrameRef] = ()
    toc_bytes: int = 0  # bytes fetched to learn this index
    components: tuple[str, ...] = ()
    toc: Toc | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[IndexEntry]:
        return iter(self.entries)


def index_from_toc(
    toc: Toc,
    *,
    digest: str,
    diff_id: str,
    blob_size: int,
    media_type: str,
    kind: str = "chunkah",
    toc_bytes: int = 0,
    components: tuple[str, ...] = (),
    zero_chunks: Sequence[bool] | None = None,
) -> LayerIndex:
    """Turn a (validated) TOC into the planner's view of a layer.

    ``zero_chunks`` (zstd:chunked holes) marks chunks made of zeros: never fetched.
    """
    frames_np = toc.frames
    coff = frames_np["coff"].tolist()
    csize = frames_np["csize"].tolist()
    frames = list(map(FrameRef._make, zip(coff, csize, frames_np["usize"].tolist(), strict=True)))
    ch = toc.chunks
    c_frame = ch["frame"].tolist()
    in_frame = (
        (ch["uoff"].astype("int64") - frames_np["uoff"].astype("int64")[ch["frame"]]).tolist()
        if len(ch)
        else []
    )
    c_sha = [bytes(x) for x in ch["sha256"]]
    refs = list(
        map(ChunkRef._make, zip(c_sha, ch["usize"].tolist(), c_frame, in_frame, strict=True))
    )
    if zero_chunks is not None:
        refs = [
            ChunkRef(r.sha256, r.size, -2, 0) if z else r
            for r, z in zip(refs, zero_chunks, strict=True)
        ]
    e = toc.entries
    types = e["type"].tolist()
    path_off = e["path_off"].tolist()
    path_len = e["path_len"].tolist()
    link_len = e["link_len"].tolist()
    first = e["first_chunk"].tolist()
    count = e["n_chunks"].tolist()
    n_xattrs = e["n_xattrs"].tolist()
    strings = toc.strings
    paths = [strings[o : o + n] for o, n in zip(path_off, path_len, strict=True)]
    links = [
        strings[o + n : o + n + m] if m else b""
        for o, n, m in zip(path_off, path_len, link_len, strict=True)
    ]
    shas = [bytes(x) if t in (0, 6) else b"" for x, t in zip(e["sha256"], types, strict=True)]
    entries = [
        IndexEntry(
            paths[i], TYPE_NAMES[t], mode, uid, gid, mtime, size, links[i],
            toc.entry(i).xattrs if n_xattrs[i] else (), (major, minor), shas[i],
            tuple(refs[first[i] : first[i] + count[i]]) if count[i] else (),
        )
        for i, (t, mode, uid, gid, mtime, size, major, minor) in enumerate(
            zip(types, e["mode"].tolist(), e["uid"].tolist(), e["gid"].tolist(), e["mtime"].tolist(),
                e["size"].tolist(), e["dev_major"].tolist(), e["dev_minor"].tolist(), strict=True)
        )
    ]  # fmt: skip
    return LayerIndex(
        digest=digest,
        diff_id=diff_id,
        blob_size=blob_size,
        media_type=media_type,
        kind=kind,
        entries=entries,
        frames=frames,
        toc_bytes=toc_bytes,
        components=components,
        toc=toc,
    )
