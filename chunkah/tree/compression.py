"""Detect and undo the compression of a tar stream by its magic bytes."""

from __future__ import annotations

import enum
import gzip
import io
import types
from typing import IO, Any, BinaryIO, cast

import zstandard

from chunkah.tree.errors import TarFormatError

_gzip_module: types.ModuleType
try:  # isal's igzip is a drop-in gzip that is several times faster
    from isal import igzip as _gzip_module
except ImportError:  # pragma: no cover - isal is a declared dependency
    _gzip_module = gzip

__all__ = ["Compression", "detect_compression", "open_decompressed"]


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A stream may start with a zstd skippable frame (magic 0x184D2A50..5F, little-endian).
_OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}


def detect_compression(head: bytes) -> Compression:
    """Classify a stream from its first bytes (at least 6 are useful)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC) or (
        len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50
    ):
        return Compression.ZSTD
    for magic, name in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise TarFormatError(
                f"{name}-compressed tar streams are not supported (use gzip or zstd)"
            )
    return Compression.NONE


class _Prefixed(io.RawIOBase):
    """Replays bytes already read for sniffing, then continues with the stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        mv = memoryview(buf).cast("B")
        if self._head:
            n = min(len(mv), len(self._head))
            mv[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._rest, "readinto", None)
        if readinto is not None:
            return int(readinto(mv))
        data = self._rest.read(len(mv))
        mv[: len(data)] = data
        return len(data)


def _read_head(fileobj: IO[bytes], n: int) -> bytes:
    chunks = []
    while n > 0:
        data = fileobj.read(n)
        if not data:
            break
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def open_decompressed(fileobj: IO[bytes]) -> tuple[BinaryIO, Compression]:
    """Wrap ``fileobj`` so reads return the uncompressed tar bytes.

    Works on non-seekable streams: the sniffed bytes are replayed, never re-read.
    The caller keeps ownership of ``fileobj`` (closing the wrapper does not close it
    for the plain case).
    """
    head = _read_head(fileobj, 6)
    kind = detect_compression(head)
    raw = io.BufferedReader(_Prefixed(head, fileobj), buffer_size=1 << 20)
    if kind is Compression.GZIP:
        gz = _gzip_module.GzipFile(fileobj=raw, mode="rb")
        return cast(BinaryIO, gz), kind
    if kind is Compression.ZSTD:
        # read_across_frames: our layer blobs hold many frames plus a skippable TOC frame.
        dctx = zstandard.ZstdDecompressor()
        reader = dctx.stream_reader(raw, read_size=1 << 20, read_across_frames=True)
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=1 << 20)), kind
    return cast(BinaryIO, raw), kind
