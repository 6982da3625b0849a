"""Streaming compression for layer blobs: plain tar, gzip and zstd.

Reading: :func:`open_decompressed` detects the format from the magic bytes (the
declared media type only rules out formats we cannot read) and returns a buffered,
bounded-memory stream.  gzip goes through ``isal.igzip`` when it is importable
(several times faster than zlib), zstd through python-zstandard with a window limit
so a hostile frame cannot make us allocate gigabytes.

Writing: :class:`CompressingWriter` takes uncompressed bytes and writes the
compressed blob to a sink while hashing both sides, so one pass yields the diff_id
(sha256 of the uncompressed stream) and the blob digest and size.  Output is
deterministic for a given level and library build:

- gzip: raw deflate from the stdlib ``zlib`` (isal is not used for writing: its
  levels and bytes differ from zlib's), our own 10-byte header with mtime 0, no file
  name, XFL 0 and OS 255 ("unknown"), so the blob does not depend on time, file name
  or host OS.
- zstd: always run through libzstd's multi-threaded engine (``nbWorkers >= 1``),
  even for one thread.  libzstd's single-threaded mode (``nbWorkers = 0``) produces
  *different* bytes from the multi-threaded one, while every worker count >= 1
  produces the same bytes; so ``threads=1`` and ``threads=8`` give identical blobs.
  Frames carry no content size (the stream length is unknown up front) and, by
  default, a content checksum (xxh64, 4 bytes per frame), as the ``zstd`` CLI does.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import zstandard

from chunkah.errors import InputError

if TYPE_CHECKING:  # collections.abc.Buffer is 3.12+
    from _typeshed import ReadableBuffer, WriteableBuffer

_GZIP_ERRORS: tuple[type[BaseException], ...] = (zlib.error,)
try:  # isal is a declared dependency, but keep working if a platform lacks wheels.
    from isal import igzip as _igzip
    from isal.isal_zlib import error as _isal_error  # not an OSError subclass

    GZIP_READER = "isal"
    _GZIP_ERRORS = (zlib.error, cast(type[BaseException], _isal_error))
except ImportError:  # pragma: no cover - depends on the installation
    _igzip = None  # type: ignore[assignment]
    GZIP_READER = "zlib"

# What the decoders raise on bad input (OSError covers gzip.BadGzipFile).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    zstandard.ZstdError,
    OSError,
    EOFError,
    ValueError,
    *_GZIP_ERRORS,
)

__all__ = [
    "DEFAULT_LEVELS",
    "GZIP_READER",
    "MAX_ZSTD_WINDOW",
    "BlobDigests",
    "CompressingWriter",
    "Compression",
    "CompressionError",
    "compress_stream",
    "decompress_frame",
    "detect_compression",
    "open_decompressed",
]


def decompress_frame(data: bytes, size: int) -> bytes:
    """One zstd frame that must hold exactly ``size`` bytes, decompressed without ever
    allocating more.

    python-zstandard sizes its output by the content size a frame *declares* and then
    ignores ``max_output_size``: a frame declaring gigabytes is allocated before any
    check.  The declaration is compared with ``size`` first.  CompressionError otherwise.
    """
    if size <= 0:  # max_output_size=0 would mean "no limit"
        raise CompressionError(f"a zstd frame of {size} bytes is not a frame")
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared not in (size, zstandard.CONTENTSIZE_UNKNOWN):
            raise CompressionError(f"zstd frame declares {declared} bytes where {size} belong")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"corrupt zstd frame: {exc}") from None
    if len(out) != size:
        raise CompressionError(f"zstd frame holds {len(out)} bytes where {size} belong")
    return out


#: Largest zstd window we agree to decode (libzstd's own default limit, 128 MiB).
#: ``zstd --long=27`` and every level up to 19 stay under it; ``--ultra -22`` does not.
MAX_ZSTD_WINDOW = 1 << 27

_READ_BUFFER = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class CompressionError(InputError):
    """A compressed stream is corrupt, truncated, too big, or in a format we do not read."""


class Compression(enum.StrEnum):
    """How a layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


#: Levels used when the caller gives none (those of the ``gzip`` and ``zstd`` CLIs).
DEFAULT_LEVELS = {Compression.NONE: 0, Compression.GZIP: 6, Compression.ZSTD: 3}


def detect_compression(head: bytes) -> Compression:
    """The compression of a stream from its first (up to 4) bytes."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    # A zstd stream may start with a skippable frame: magic 0x184D2A50..5F (LE).
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return Compression.ZSTD
    return Compression.NONE


def _check_media_type(media_type: str | None) -> None:
    """Reject media types whose payload we could not read even if the magic looked fine."""
    if media_type is None:
        return
    for suffix in ("+encrypted", "+bzip2", "+xz", "+lz4"):
        if suffix in media_type:
            raise CompressionError(
                f"layer media type {media_type!r} is not supported "
                "(chunkah reads plain tar, gzip and zstd layers)"
            )


class _PrefixedRaw(io.RawIOBase):
    """Bytes already read for magic detection, then the rest of the source."""

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._source.read(len(view))
        view[: len(data)] = data
        return len(data)


class _ZstdFrameTracker(io.RawIOBase):
    """Follows zstd frame and block headers as bytes pass, to catch truncation.

    Only headers are parsed (a few bytes per 128 KiB block); payloads are skipped
    by length.  At EOF the stream must sit between two frames.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._state = "magic"
        self._need = 4  # bytes still wanted by the current state
        self._hdr = bytearray()  # header bytes collected for the current state
        self._last_block = False
        self._checksum = False
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        data = self._source.read(len(view))
        n = len(data)
        if n == 0:
            if self._state != "magic" or self._hdr:
                raise CompressionError(
                    f"zstd stream truncated at byte {self._offset} (inside a frame)"
                )
            return 0
        view[:n] = data
        self._scan(data)
        self._offset += n
        return n

    def _scan(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self._state in ("skip", "payload"):
                step = min(self._need, len(data) - pos)
                pos += step
                self._need -= step
                if self._need == 0:
                    self._after_payload()
                continue
            step = min(self._need - len(self._hdr), len(data) - pos)
            self._hdr += data[pos : pos + step]
            pos += step
            if len(self._hdr) == self._need:
                hdr = bytes(self._hdr)
                self._hdr.clear()
                self._header_done(hdr)

    def _header_done(self, hdr: bytes) -> None:
        state = self._state
        if state == "magic":
            if hdr == _ZSTD_MAGIC:
                self._state, self._need = "fhd", 1
            elif hdr[1:4] == b"\x2a\x4d\x18" and hdr[0] & 0xF0 == 0x50:
                self._state, self._need = "skip_size", 4
            else:
                raise CompressionError(
                    f"zstd stream: no frame magic at byte {self._offset} (trailing garbage?)"
                )
        elif state == "skip_size":
            size = int.from_bytes(hdr, "little")
            self._state, self._need = "skip", size
            if size == 0:
                self._state, self._need = "magic", 4
        elif state == "fhd":
            fhd = hdr[0]
            fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
            if fhd & 0x08:
                raise CompressionError("zstd frame header has the reserved bit set")
            self._checksum = bool(fhd & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[did_flag]
            rest += (1 if single else 0, 2, 4, 8)[fcs_flag]
            self._state, self._need = "frame_rest", rest
            if rest == 0:
                self._state, self._need = "block", 3
        elif state == "frame_rest":
            self._state, self._need = "block", 3
        elif state == "block":
            bh = int.from_bytes(hdr, "little")
            self._last_block = bool(bh & 1)
            btype, bsize = (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise CompressionError("zstd stream: reserved block type (corrupt data)")
            self._state, self._need = "payload", 1 if btype == 1 else bsize
            if self._need == 0:
                self._after_payload()
        elif state == "checksum":
            self._state, self._need = "magic", 4

    def _after_payload(self) -> None:
        if self._state == "skip":
            self._state, self._need = "magic", 4
        elif not self._last_block:
            self._state, self._need = "block", 3
        elif self._checksum:
            self._state, self._need = "checksum", 4
        else:
            self._state, self._need = "magic", 4


class _DecompressedRaw(io.RawIOBase):
    """Maps each library's errors to :class:`CompressionError` and enforces a size cap."""

    def __init__(self, inner: Any, fmt: Compression, limit: int | None) -> None:
        self._inner = inner
        self._fmt = fmt
        self._limit = limit
        self._total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        try:
            n = int(self._inner.readinto(b))
        except CompressionError:
            raise
        except _DECODE_ERRORS as exc:
            raise CompressionError(f"corrupt {self._fmt} stream: {exc}") from exc
        self._total += n
        if self._limit is not None and self._total > self._limit:
            raise CompressionError(
                f"{self._fmt} stream decompresses to more than {self._limit} bytes"
            )
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def open_decompressed(
    fileobj: BinaryIO,
    media_type: str | None = None,
    *,
    max_window_size: int = MAX_ZSTD_WINDOW,
    limit: int | None = None,
) -> BinaryIO:
    """A stream of the uncompressed bytes of ``fileobj`` (plain, gzip or zstd).

    The format comes from the magic bytes: registries are known to serve layers whose
    media type says gzip while the bytes are plain tar, and every container tool
    trusts the bytes.  ``media_type`` only rejects formats we cannot read
    (encrypted, bzip2, xz).  Concatenated gzip members and zstd frames (including
    skippable frames) are read through.  Closing the result does not close
    ``fileobj``.  ``limit`` caps the decompressed size (decompression bombs);
    zstd frames needing a window above ``max_window_size`` are refused.
    """
    _check_media_type(media_type)
    head = b""
    while len(head) < 4:  # a short read from a pipe must not hide the magic
        more = fileobj.read(4 - len(head))
        if not more:
            break
        head += more
    fmt = detect_compression(head)
    src = io.BufferedReader(_PrefixedRaw(head, fileobj), _READ_BUFFER)
    inner: Any
    if fmt is Compression.GZIP:
        if _igzip is not None:
            inner = _igzip.IGzipFile(fileobj=src, mode="rb")  # type: ignore[no-untyped-call]
        else:
            inner = gzip.GzipFile(fileobj=src, mode="rb")
    elif fmt is Compression.ZSTD:
        dctx = zstandard.ZstdDecompressor(max_window_size=max_window_size)
        # The tracker sits between source and decoder: python-zstandard's reader
        # reports a stream cut mid-frame as a clean EOF, the tracker does not.
        tracked = io.BufferedReader(_ZstdFrameTracker(src), _READ_BUFFER)
        inner = dctx.stream_reader(tracked, read_size=_READ_BUFFER, read_across_frames=True)
    else:
        inner = src
    raw = _DecompressedRaw(inner, fmt, limit)
    return cast(BinaryIO, io.BufferedReader(raw, _READ_BUFFER))


@dataclass(frozen=True)
class BlobDigests:
    """What one compression pass learnt about a layer."""

    diff_id: str  #: ``sha256:`` of the uncompressed stream
    digest: str  #: ``sha256:`` of the blob as written
    size: int  #: blob size in bytes
    uncompressed_size: int
    compression: Compression


class _HashingSink:
    """Counts and hashes everything written to the real sink."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self.out.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.out.flush()


class CompressingWriter:
    """Compress what is written to it into ``out``, hashing both sides.

    ``level`` defaults to 6 for gzip and 3 for zstd.  ``threads`` only matters for
    zstd; the bytes do not depend on it (see the module docstring).  Call
    :meth:`finish` (or leave the ``with`` block) to flush and get the digests;
    ``out`` is never closed.
    """

    def __init__(
        self,
        out: BinaryIO,
        compression: Compression | str = Compression.ZSTD,
        *,
        level: int | None = None,
        threads: int = 1,
        checksum: bool = True,
    ) -> None:
        try:
            self.compression = Compression(compression)
        except ValueError:
            raise CompressionError(
                f"unknown compression {compression!r} (use none, gzip or zstd)"
            ) from None
        self.level = DEFAULT_LEVELS[self.compression] if level is None else level
        self._sink = _HashingSink(out)
        self._usha = hashlib.sha256()
        self._usize = 0
        self._result: BlobDigests | None = None
        self._zwriter: Any = None
        self._deflate: Any = None
        self._crc = 0
        if self.compression is Compression.ZSTD:
            if not -(1 << 17) <= self.level <= 22:
                raise CompressionError(f"zstd level {self.level} out of range (-131072..22)")
            cctx = zstandard.ZstdCompressor(
                level=self.level,
                # nbWorkers >= 1 always: the MT engine's output is the same for any
                # worker count, the single-threaded engine's is not.
                threads=max(1, threads),
                write_checksum=checksum,
                write_content_size=False,
            )
            self._zwriter = cctx.stream_writer(
                cast(BinaryIO, self._sink), closefd=False, write_return_read=True
            )
        elif self.compression is Compression.GZIP:
            if not 0 <= self.level <= 9:
                raise CompressionError(f"gzip level {self.level} out of range (0..9)")
            # Fixed header: magic, deflate, no flags, mtime 0, XFL 0, OS 255 (unknown).
            self._sink.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
            self._deflate = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)

    # -- file-like surface (enough for tarfile and shutil.copyfileobj) --
    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        """Compress ``data``; returns the number of uncompressed bytes taken."""
        if self._result is not None:
            raise ValueError("write to a finished CompressingWriter")
        view = memoryview(data).cast("B")
        n = view.nbytes
        if not n:
            return 0
        self._usha.update(view)
        self._usize += n
        if self._zwriter is not None:
            self._zwriter.write(view)
        elif self._deflate is not None:
            self._crc = zlib.crc32(view, self._crc)
            self._sink.write(self._deflate.compress(view))
        else:
            self._sink.write(view)
        return n

    def flush(self) -> None:
        """Nothing to do: flushing a compressor mid-stream would change the bytes."""

    def end_frame(self) -> int:
        """zstd only: end the current frame here; returns the blob offset after it.

        Chunked layers start frames at file payloads so ranges decode on their own.
        The bytes stay independent of the thread count.
        """
        if self._zwriter is None:
            raise CompressionError("end_frame() needs zstd compression")
        self._zwriter.flush(zstandard.FLUSH_FRAME)
        return self._sink.size

    def write_raw(self, data: bytes) -> int:
        """zstd only: append pre-made frames (e.g. a skippable TOC frame) verbatim.

        Must follow :meth:`end_frame`; the bytes count for the blob digest only,
        not for the diff_id.
        """
        if self._zwriter is None:
            raise CompressionError("write_raw() needs zstd compression")
        return self._sink.write(data)

    @property
    def compressed_size(self) -> int:
        """Blob bytes written so far (compressors buffer, so this lags the input)."""
        return self._sink.size

    @property
    def uncompressed_size(self) -> int:
        return self._usize

    def finish(self) -> BlobDigests:
        """Flush the compressor and return the digests; idempotent."""
        if self._result is None:
            if self._zwriter is not None:
                self._zwriter.flush(zstandard.FLUSH_FRAME)
                self._zwriter.close()
            elif self._deflate is not None:
                self._sink.write(self._deflate.flush())
                self._sink.write(struct.pack("<II", self._crc, self._usize & 0xFFFFFFFF))
            self._sink.flush()
            self._result = BlobDigests(
                diff_id="sha256:" + self._usha.hexdigest(),
                digest="sha256:" + self._sink.sha.hexdigest(),
                size=self._sink.size,
                uncompressed_size=self._usize,
                compression=self.compression,
            )
        return self._result

    def __enter__(self) -> CompressingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()


def compress_stream(
    src: BinaryIO,
    out: BinaryIO,
    compression: Compression | str = Compression.ZSTD,
    *,
    level: int | None = None,
    threads: int = 1,
    checksum: bool = True,
    bufsize: int = _READ_BUFFER,
) -> BlobDigests:
    """Compress all of ``src`` into ``out``; see :class:`CompressingWriter`."""
    writer = CompressingWriter(out, compression, level=level, threads=threads, checksum=checksum)
    while chunk := src.read(bufsize):
        writer.write(chunk)
    return writer.finish()
