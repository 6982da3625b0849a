"""Writes a tree as a chunked layer blob: zstd frames on chunk boundaries + a TOC.

Layout and rules: docs/format.md.  Frames are compressed in batches; with
``threads > 1`` python-zstandard compresses a batch on several C threads (each frame
independently, so the bytes do not depend on the thread count).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import xxhash
import zstandard

from chunkah import cdc
from chunkah.errors import InputError
from chunkah.format.toc import (
    TYPE_BLOCK,
    TYPE_CHAR,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_FILE,
    TYPE_HARDLINK,
    TYPE_SYMLINK,
    CdcSettings,
    Toc,
    TocBuilder,
    encode_toc_frame,
)
from chunkah.tree import EntryType, Tree, TreeError
from chunkah.tree.errors import show_path
from chunkah.tree.tar_writer import END_OF_ARCHIVE, iter_tar_records

ANNOTATION_TOC_DIGEST = "org.chunkah.toc.v1.digest"
ANNOTATION_TOC_POSITION = "org.chunkah.toc.v1.position"

_TYPE_CODE = {
    EntryType.FILE: TYPE_FILE,
    EntryType.DIR: TYPE_DIR,
    EntryType.SYMLINK: TYPE_SYMLINK,
    EntryType.CHAR: TYPE_CHAR,
    EntryType.BLOCK: TYPE_BLOCK,
    EntryType.FIFO: TYPE_FIFO,
}
_ZEROS = bytes(512)
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
_NO_DIGEST = bytes(32)


# zstd level when none is given: $CHUNKAH_ZSTD_LEVEL, else DEFAULT_LEVEL.  16 compresses
# each independent frame about as well as 19 at nearly twice the speed; frames are
# compressed once on the builder and fetched by every host (docs/format.md).
DEFAULT_LEVEL = 16
LEVEL_ENV = "CHUNKAH_ZSTD_LEVEL"


def default_level() -> int:
    raw = os.environ.get(LEVEL_ENV, "").strip()
    if not raw:
        return DEFAULT_LEVEL
    try:
        level = int(raw)
    except ValueError:
        raise InputError(f"{LEVEL_ENV}={raw!r}: expected a zstd level, 1..22") from None
    if not 1 <= level <= 22:
        raise InputError(f"{LEVEL_ENV}={raw!r}: expected a zstd level, 1..22")
    return level


@dataclass(frozen=True)
class ChunkedSettings:
    """How layers are cut and compressed (defaults: docs/format.md section 2)."""

    level: int = field(default_factory=default_level)
    cdc: CdcSettings = field(default_factory=lambda: CdcSettings(16 << 10, 64 << 10, 256 << 10))
    inline_limit: int = 32 << 10
    pack_target: int = 192 << 10
    threads: int = 1
    batch_bytes: int = 8 << 20


@dataclass(frozen=True)
class ChunkedLayer:
    """What was written: blob digest/size, diff_id and where the TOC is."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    toc_digest: str
    toc_offset: int
    toc_length: int
    toc_body_size: int
    frames: int
    chunks: int
    entries: int

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_TOC_DIGEST: self.toc_digest,
            ANNOTATION_TOC_POSITION: f"{self.toc_offset}:{self.toc_length}:{self.toc_body_size}",
        }


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _FrameWriter:
    """Turns uncompressed segments of the tar into frames, in order, in batches."""

    def __init__(self, out: _Writable, settings: ChunkedSettings, builder: TocBuilder) -> None:
        self.out = out
        self.settings = settings
        self.builder = builder
        self.compressor = zstandard.ZstdCompressor(level=settings.level, write_content_size=True)
        self.batch: list[bytes | bytearray | memoryview] = []
        self.batch_bytes = 0
        self.created = 0  # frames created so far (index of the next one)
        self.uoff = 0  # tar bytes covered by created frames
        self.coff = 0  # blob bytes written
        self.tar_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()

    def frame(self, data: bytes) -> int:
        index = self.created
        self.created += 1
        self.uoff += len(data)
        self.tar_hash.update(data)
        self.batch.append(data)
        self.batch_bytes += len(data)
        if self.batch_bytes >= self.settings.batch_bytes:
            self.flush()
        return index

    def flush(self) -> None:
        if not self.batch:
            return
        if self.settings.threads > 1 and len(self.batch) > 1:
            result = self.compressor.multi_compress_to_buffer(
                self.batch, threads=self.settings.threads
            )
            compressed = [result[i].tobytes() for i in range(len(result))]
        else:
            compressed = [self.compressor.compress(data) for data in self.batch]
        uoff = self.uoff - self.batch_bytes
        for data, frame in zip(self.batch, compressed, strict=True):
            self.builder.add_frame(self.coff, uoff, len(frame), len(data))
            self.out.write(frame)
            self.blob_hash.update(frame)
            self.coff += len(frame)
            uoff += len(data)
        self.batch = []
        self.batch_bytes = 0


# Files up to this size are read in one piece and cut with one call; larger ones stream.
_WHOLE_FILE_LIMIT = 16 << 20


def _file_chunks(f: BinaryIO, size: int, params: dict[str, int]) -> Iterator[bytes]:
    if size <= _WHOLE_FILE_LIMIT:
        data = f.read(size + 1)
        start = 0
        view = memoryview(data)
        for end in cdc.cut_points(data, **params).tolist():
            yield bytes(view[start:end])
            start = end
        return
    for _off, chunk in cdc.iter_chunks(f, read_size=4 << 20, **params):
        yield bytes(chunk)


def _read_small(entry_path: bytes, content: object, size: int) -> bytes:
    with content.open() as f:  # type: ignore[attr-defined]
        data = f.read(size + 1)
    if len(data) != size:
        raise TreeError(f"{show_path(entry_path)}: content is {len(data)} bytes, expected {size}")
    return bytes(data)


def write_chunked_layer(
    tree: Tree,
    out: _Writable,
    *,
    mtime_clamp: int | None = None,
    settings: ChunkedSettings | None = None,
) -> tuple[ChunkedLayer, Toc]:
    """Write ``tree`` as a chunked ``tar+zstd`` blob to ``out``; return what was written.

    The decompressed blob is byte for byte the canonical tar of ``write_tar``.
    """
    settings = settings or ChunkedSettings()
    c = settings.cdc
    params = {"min_size": c.min_size, "avg_size": c.avg_size, "max_size": c.max_size,
              "normalization": c.normalization, "seed": c.seed}  # fmt: skip
    cdc.make_params(**params)  # fail early on bad settings
    builder = TocBuilder(c)
    frames = _FrameWriter(out, settings, builder)
    pending = bytearray()
    file_hashes: dict[bytes, bytes] = {}

    def close_pending() -> None:
        if pending:
            frames.frame(bytes(pending))
            pending.clear()

    for record in iter_tar_records(tree, mtime_clamp=mtime_clamp):
        entry = record.entry
        size = record.payload_size
        first_chunk = builder.n_chunks
        digest = _EMPTY_SHA256 if entry.type is EntryType.FILE else _NO_DIGEST
        payload_uoff = 0
        if size >= settings.inline_limit:
            pending += record.header
            close_pending()
            payload_uoff = frames.uoff
            whole = hashlib.sha256()
            seen = 0
            n = 0
            assert entry.content is not None
            with entry.content.open() as f:
                for data in _file_chunks(f, size, params):
                    seen += len(data)
                    if seen > size:
                        break
                    whole.update(data)
                    chunk_digest = hashlib.sha256(data).digest()
                    uoff = frames.uoff
                    index = frames.frame(data)
                    builder.add_chunk(
                        uoff, len(data), chunk_digest, xxhash.xxh3_64_intdigest(data), index
                    )
                    n += 1
            if seen != size:
                raise TreeError(
                    f"{show_path(entry.path)}: content is not {size} bytes as when it was read; "
                    "build from a tree that is not being modified"
                )
            digest = chunk_digest if n == 1 else whole.digest()
            pending += _ZEROS[: record.padding]
        else:
            if len(pending) >= settings.pack_target:
                close_pending()
            pending += record.header
            if size:
                data = _read_small(entry.path, entry.content, size)
                digest = hashlib.sha256(data).digest()
                payload_uoff = frames.uoff + len(pending)
                builder.add_chunk(
                    payload_uoff, size, digest, xxhash.xxh3_64_intdigest(data), frames.created
                )
                pending += data
                pending += _ZEROS[: record.padding]
        if record.hardlink_to is not None:
            type_code, link = TYPE_HARDLINK, record.hardlink_to
            digest = file_hashes.get(record.hardlink_to, digest)
            entry_size = entry.size
        else:
            type_code = _TYPE_CODE[entry.type]
            link = entry.link_target if entry.type is EntryType.SYMLINK else b""
            entry_size = size
        if type_code == TYPE_FILE:
            file_hashes[entry.path] = digest
        builder.add_entry(
            type_code=type_code,
            path=entry.path,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime=entry.mtime,
            size=entry_size,
            link=link,
            xattrs=entry.xattrs,
            rdev=entry.rdev,
            first_chunk=first_chunk if size else 0,
            n_chunks=builder.n_chunks - first_chunk,
            payload_uoff=payload_uoff,
            sha256=digest,
        )
    pending += END_OF_ARCHIVE
    close_pending()
    frames.flush()
    toc = builder.finish(frames.uoff, frames.tar_hash.digest())
    toc_frame, body_size = encode_toc_frame(toc)
    toc_offset = frames.coff
    out.write(toc_frame)
    frames.blob_hash.update(toc_frame)
    layer = ChunkedLayer(
        digest="sha256:" + frames.blob_hash.hexdigest(),
        size=toc_offset + len(toc_frame),
        diff_id=toc.diff_id_digest,
        uncompressed_size=toc.tar_size,
        toc_digest="sha256:" + hashlib.sha256(toc_frame).hexdigest(),
        toc_offset=toc_offset,
        toc_length=len(toc_frame),
        toc_body_size=body_size,
        frames=len(toc.frames),
        chunks=len(toc.chunks),
        entries=len(toc.entries),
    )
    return layer, toc
