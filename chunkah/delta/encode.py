"""Per-file delta encodings: make one, apply one (docs/delta.md section 3).

- ``zstd-patch`` (1): one zstd frame of the new file, compressed with the old file
  as a raw-content dictionary (what ``zstd --patch-from`` does), a window covering
  both, long-distance matching for big files.
- ``bsdiff-zstd`` (2): a bsdiff patch (control triples, diff bytes, extra bytes,
  from PyPI ``bsdiff4``'s core), serialised as below and compressed as one zstd frame.

Applying never trusts the delta: the output is capped at the size the target TOC
gives, and the caller checks the result against the TOC's sha256.
"""

from __future__ import annotations

import struct

import bsdiff4.core
import zstandard

from chunkah.errors import VerificationError

__all__ = [
    "BSDIFF_ZSTD",
    "ENCODING_NAMES",
    "ZSTD_PATCH",
    "DeltaError",
    "apply_delta",
    "encode",
    "encode_best",
]

ZSTD_PATCH = 1
BSDIFF_ZSTD = 2
ENCODING_NAMES = {ZSTD_PATCH: "zstd-patch", BSDIFF_ZSTD: "bsdiff-zstd"}

DEFAULT_LEVEL = 19
BSDIFF_MAX = 64 << 20  # bsdiff's suffix sort costs ~9x the old file in memory
_WINDOW_LOG_MAX = 31
_BSDIFF_HEADER = struct.Struct("<4sIQQQ")  # magic, reserved, control, diff, extra lengths
_BSDIFF_MAGIC = b"CKBD"


class DeltaError(VerificationError):
    """A delta that does not decode, or decodes to something else than promised."""


def _window_log(old_size: int, new_size: int) -> int:
    return min(_WINDOW_LOG_MAX, max(10, (old_size + new_size).bit_length()))


def _zstd_patch(old: bytes, new: bytes, level: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(new),
        dict_size=len(old),
        window_log=_window_log(len(old), len(new)),
        enable_ldm=len(old) + len(new) > (16 << 20),
        write_content_size=True,
    )
    d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=d, compression_params=params).compress(new)


def _bsdiff(old: bytes, new: bytes, level: int) -> bytes:
    control, diff, extra = bsdiff4.core.diff(old, new)
    if not isinstance(control, bytes):  # older bsdiff4: a list of (x, y, z)
        control = b"".join(struct.pack("<qqq", *t) for t in control)
    raw = (
        _BSDIFF_HEADER.pack(_BSDIFF_MAGIC, 0, len(control), len(diff), len(extra))
        + control
        + diff
        + extra
    )
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(raw), write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def encode(encoding: int, old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL) -> bytes:
    """The delta of ``new`` against ``old`` in one encoding."""
    if encoding == ZSTD_PATCH:
        return _zstd_patch(old, new, level)
    if encoding == BSDIFF_ZSTD:
        return _bsdiff(old, new, level)
    raise ValueError(f"unknown delta encoding {encoding}")


def encode_best(
    old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL, bsdiff_max: int = BSDIFF_MAX
) -> tuple[int, bytes]:
    """The smallest of the encodings (bsdiff only for files up to ``bsdiff_max``)."""
    best = (ZSTD_PATCH, encode(ZSTD_PATCH, old, new, level=level))
    if max(len(old), len(new)) <= bsdiff_max:
        other = encode(BSDIFF_ZSTD, old, new, level=level)
        if len(other) < len(best[1]):
            best = (BSDIFF_ZSTD, other)
    return best


def _decompress(
    data: bytes, cap: int, dict_data: zstandard.ZstdCompressionDict | None, old_size: int
) -> bytes:
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"not a zstd frame: {exc}") from None
    if params.content_size > cap:
        raise DeltaError(f"delta declares {params.content_size} bytes, more than {cap}")
    window = 1 << _window_log(old_size, cap)
    if dict_data is not None:
        dctx = zstandard.ZstdDecompressor(dict_data=dict_data, max_window_size=window)
    else:
        dctx = zstandard.ZstdDecompressor(max_window_size=window)
    try:
        return dctx.decompress(data, max_output_size=cap)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"delta does not decompress: {exc}") from None


def apply_delta(encoding: int, old: bytes, delta: bytes, size: int) -> bytes:
    """Rebuild a ``size``-byte file from ``old`` and ``delta``; :class:`DeltaError`
    if the delta is malformed or does not give exactly ``size`` bytes."""
    if encoding == ZSTD_PATCH:
        d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        out = _decompress(delta, size, d, len(old))
    elif encoding == BSDIFF_ZSTD:
        # control: 24 bytes per triple; diff <= size; extra <= size
        cap = _BSDIFF_HEADER.size + 2 * size + 24 * (size + 1)
        raw = _decompress(delta, cap, None, 0)
        if len(raw) < _BSDIFF_HEADER.size:
            raise DeltaError("bsdiff delta is truncated")
        magic, _r, nc, nd, ne = _BSDIFF_HEADER.unpack_from(raw)
        if magic != _BSDIFF_MAGIC or _BSDIFF_HEADER.size + nc + nd + ne != len(raw) or nc % 24:
            raise DeltaError("bsdiff delta has a bad header")
        start = _BSDIFF_HEADER.size
        control = raw[start : start + nc]
        diff = raw[start + nc : start + nc + nd]
        extra = raw[start + nc + nd :]
        try:
            out = bsdiff4.core.patch(old, size, control, diff, extra)
        except Exception as exc:  # bsdiff4 raises ValueError/MemoryError/SystemError on junk
            raise DeltaError(f"bsdiff delta does not apply: {exc}") from None
    else:
        raise DeltaError(f"unknown delta encoding {encoding}")
    if len(out) != size:
        raise DeltaError(f"delta gives {len(out)} bytes, expected {size}")
    return out
