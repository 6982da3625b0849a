"""What a host knows about one layer of a target image, whatever its format.

A chunkah TOC, a zstd:chunked TOC (converted to a chunkah ``Toc``), or the listing of
a plain layer made after downloading it whole: the planner sees them all as a
``LayerIndex`` of entries whose content is a list of chunks (sha256 + size + the
frame that holds it, when the layer can be fetched by ranges).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from chunkah.format.toc import TYPE_NAMES, Toc

__all__ = ["ChunkRef", "FrameRef", "IndexEntry", "LayerIndex", "index_from_toc"]


@dataclass(frozen=True, slots=True)
class ChunkRef:
    sha256: bytes
    size: int
    frame: int  # index into LayerIndex.frames; -1: not fetchable by range; -2: all zeros (a hole)
    offset_in_frame: int = 0


@dataclass(frozen=True, slots=True)
class FrameRef:
    offset: int  # in the blob
    size: int  # compressed bytes
    usize: int  # decompressed bytes


@dataclass(frozen=True, slots=True)
class IndexEntry:
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
    fu = frames_np["uoff"].tolist()
    fs = frames_np["usize"].tolist()
    frames = [FrameRef(coff[i], csize[i], fs[i]) for i in range(len(coff))]
    ch = toc.chunks
    c_uoff = ch["uoff"].tolist()
    c_size = ch["usize"].tolist()
    c_frame = ch["frame"].tolist()
    c_sha = [bytes(x) for x in ch["sha256"]]
    e = toc.entries
    types = e["type"].tolist()
    modes = e["mode"].tolist()
    uids = e["uid"].tolist()
    gids = e["gid"].tolist()
    mtimes = e["mtime"].tolist()
    sizes = e["size"].tolist()
    path_off = e["path_off"].tolist()
    path_len = e["path_len"].tolist()
    link_len = e["link_len"].tolist()
    first = e["first_chunk"].tolist()
    count = e["n_chunks"].tolist()
    majors = e["dev_major"].tolist()
    minors = e["dev_minor"].tolist()
    n_xattrs = e["n_xattrs"].tolist()
    shas = [bytes(x) for x in e["sha256"]]
    strings = toc.strings
    entries = []
    for i in range(len(types)):
        po, pl = path_off[i], path_len[i]
        chunks = tuple(
            ChunkRef(c_sha[c], c_size[c], -2, 0)
            if zero_chunks is not None and zero_chunks[c]
            else ChunkRef(c_sha[c], c_size[c], c_frame[c], c_uoff[c] - fu[c_frame[c]])
            for c in range(first[i], first[i] + count[i])
        )
        entries.append(
            IndexEntry(
                path=strings[po : po + pl],
                type=TYPE_NAMES[types[i]],
                mode=modes[i],
                uid=uids[i],
                gid=gids[i],
                mtime=mtimes[i],
                size=sizes[i],
                link=strings[po + pl : po + pl + link_len[i]],
                xattrs=toc.entry(i).xattrs if n_xattrs[i] else (),
                rdev=(majors[i], minors[i]),
                sha256=shas[i] if types[i] in (0, 6) else b"",
                chunks=chunks,
            )
        )
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
