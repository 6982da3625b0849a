"""The delta index: which per-file deltas an artifact holds, and where (docs/delta.md §2).

A small binary table, one zstd frame, that a host fetches whole before it asks for
single deltas by range.  All integers little-endian.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import zstandard

from chunkah.compression import CompressionError, decompress_frame
from chunkah.delta.encode import ENCODING_NAMES
from chunkah.errors import VerificationError

__all__ = [
    "DeltaIndexError",
    "DeltaOffer",
    "decode_index",
    "encode_index",
]

MAGIC = b"CHKDLT\x00\x01"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQQ24x")  # magic, version, flags, entries, strings, data size
_ENTRY = struct.Struct("<QQQQQIB3x32s32s32s16x")
assert _HEADER.size == 64 and _ENTRY.size == 160
MAX_ENTRIES = 1 << 22
MAX_BODY = 256 << 20


class DeltaIndexError(VerificationError):
    """A delta index that is malformed or lies about its data."""


class DeltaOffer(NamedTuple):
    """One delta: ``to_sha256``'s content rebuilt from a file with ``from_sha256``."""

    path: bytes  # the file's path in the target image
    encoding: int
    offset: int  # in the data blob
    size: int  # delta bytes
    from_sha256: bytes
    from_size: int
    to_sha256: bytes
    to_size: int
    delta_sha256: bytes  # of the delta bytes: checked as they arrive


def encode_index(offers: Iterable[DeltaOffer], data_size: int, *, level: int = 19) -> bytes:
    """The index blob (one zstd frame) for ``offers`` in a data blob of ``data_size`` bytes."""
    rows = []
    strings = bytearray()
    items = list(offers)
    for o in items:
        rows.append(
            _ENTRY.pack(
                o.offset,
                o.size,
                o.from_size,
                o.to_size,
                len(strings),
                len(o.path),
                o.encoding,
                o.from_sha256,
                o.to_sha256,
                o.delta_sha256,
            )
        )
        strings += o.path
    body = (
        _HEADER.pack(MAGIC, VERSION, 0, len(items), len(strings), data_size)
        + b"".join(rows)
        + bytes(strings)
    )
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)


def decode_index(blob: bytes) -> tuple[list[DeltaOffer], int]:
    """Parse and check an index blob; returns the offers and the data blob's size.

    Rejects anything that does not follow docs/delta.md exactly: sizes, magic,
    version, unknown encodings, deltas outside the data blob or overlapping.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as exc:
        raise DeltaIndexError(f"delta index is not a zstd frame: {exc}") from None
    if params.content_size < _HEADER.size or params.content_size > MAX_BODY:
        raise DeltaIndexError(f"delta index body of {params.content_size} bytes")
    try:
        body = decompress_frame(blob, params.content_size)
    except CompressionError as exc:
        raise DeltaIndexError(f"delta index does not decompress: {exc}") from None
    magic, version, flags, n, strings_size, data_size = _HEADER.unpack_from(body)
    if magic != MAGIC or version != VERSION or flags != 0:
        raise DeltaIndexError("not a chunkah delta index (magic, version or flags)")
    if n > MAX_ENTRIES or _HEADER.size + n * _ENTRY.size + strings_size != len(body):
        raise DeltaIndexError("delta index size does not match its counts")
    strings_at = _HEADER.size + n * _ENTRY.size
    offers: list[DeltaOffer] = []
    spans: list[tuple[int, int]] = []
    for i in range(n):
        (offset, size, from_size, to_size, path_off, path_len, encoding, f_sha, t_sha, d_sha) = (
            _ENTRY.unpack_from(body, _HEADER.size + i * _ENTRY.size)
        )
        if encoding not in ENCODING_NAMES:
            raise DeltaIndexError(f"delta index entry {i}: unknown encoding {encoding}")
        if size == 0 or offset + size > data_size:
            raise DeltaIndexError(f"delta index entry {i}: bytes {offset}+{size} outside the data")
        if path_off + path_len > strings_size:
            raise DeltaIndexError(f"delta index entry {i}: path outside the strings")
        path = body[strings_at + path_off : strings_at + path_off + path_len]
        offers.append(
            DeltaOffer(path, encoding, offset, size, f_sha, from_size, t_sha, to_size, d_sha)
        )
        spans.append((offset, size))
    spans.sort()
    for (a, sa), (b, _sb) in itertools.pairwise(spans):
        if a + sa > b:
            raise DeltaIndexError("delta index entries overlap in the data")
    return offers, data_size


def offers_by_target(offers: Sequence[DeltaOffer]) -> dict[bytes, tuple[DeltaOffer, ...]]:
    """to_sha256 -> the offers that rebuild it (what the planner looks up)."""
    out: dict[bytes, list[DeltaOffer]] = {}
    for o in offers:
        out.setdefault(o.to_sha256, []).append(o)
    return {k: tuple(v) for k, v in out.items()}
