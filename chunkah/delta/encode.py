"""Per-file delta encodings: make one, apply one (docs/delta.md section 3).

- ``zstd-patch`` (1): one zstd frame of the new file, compressed with the old file
  as a raw-content dictionary (what ``zstd --patch-from`` does), a window covering
  both, long-distance matching for big files.
- ``bsdiff-zstd`` (2): a bsdiff patch (control triples, diff bytes, extra bytes,
  from PyPI ``bsdiff4``'s core), serialised as below and compressed as one zstd frame.
- ``bsdiff-xz`` (3): the same patch as a raw LZMA2 stream (fixed filter settings), which
  compresses bsdiff's mostly-zero diff block 12-16 % tighter than zstd -19 here.

Applying never trusts the delta: the output is capped at the size the target TOC
gives, and the caller checks the result against the TOC's sha256.
"""

from __future__ import annotations

import lzma
import struct

import bsdiff4.core
import zstandard

from chunkah.errors import VerificationError

__all__ = [
    "BSDIFF_XZ",
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
BSDIFF_XZ = 3
ENCODING_NAMES = {ZSTD_PATCH: "zstd-patch", BSDIFF_ZSTD: "bsdiff-zstd", BSDIFF_XZ: "bsdiff-xz"}

DEFAULT_LEVEL = 19
BSDIFF_MAX = 64 << 20  # bsdiff's suffix sort costs ~9x the old file in memory
_WINDOW_LOG_MAX = 31
_BSDIFF_HEADER = struct.Struct("<4sIQQQ")  # magic, reserved, control, diff, extra lengths
_BSDIFF_MAGIC = b"CKBD"
_XZ_DICT = 64 << 20
#: bsdiff-xz: raw LZMA2, these settings exactly (docs/delta.md section 3)
_XZ_DECODE = [{"id": lzma.FILTER_LZMA2, "dict_size": _XZ_DICT, "lc": 1, "lp": 0, "pb": 0}]
_SMALL_PATCH = 64 << 10  # bsdiff patches up to this size are also tried with zstd
_DISSIMILAR = 0.9  # the old file saves less than 10 %: not worth a delta search


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


def _bsdiff_raw(old: bytes, new: bytes) -> bytes:
    control, diff, extra = bsdiff4.core.diff(old, new)
    if not isinstance(control, bytes):  # older bsdiff4: a list of (x, y, z)
        control = b"".join(struct.pack("<qqq", *t) for t in control)
    out: bytes = (
        _BSDIFF_HEADER.pack(_BSDIFF_MAGIC, 0, len(control), len(diff), len(extra))
        + control
        + diff
        + extra
    )
    return out


def _zstd(raw: bytes, level: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(raw), write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def _xz(raw: bytes) -> bytes:
    dict_size = max(4096, min(_XZ_DICT, len(raw)))
    filters = [
        {"id": lzma.FILTER_LZMA2, "preset": 6 | lzma.PRESET_EXTREME, "dict_size": dict_size,
         "lc": 1, "lp": 0, "pb": 0},
    ]  # fmt: skip
    out: bytes = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)
    return out


def encode(encoding: int, old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL) -> bytes:
    """The delta of ``new`` against ``old`` in one encoding."""
    if encoding == ZSTD_PATCH:
        return _zstd_patch(old, new, level)
    if encoding == BSDIFF_ZSTD:
        return _zstd(_bsdiff_raw(old, new), level)
    if encoding == BSDIFF_XZ:
        return _xz(_bsdiff_raw(old, new))
    raise ValueError(f"unknown delta encoding {encoding}")


def encode_best(
    old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL, bsdiff_max: int = BSDIFF_MAX
) -> tuple[int, bytes]:
    """The smallest delta, spending CPU where it can pay off.

    A patch-from probe at level 9 comes first (lower levels barely use a large
    dictionary).  If the old file saves less than 10 % of the new file's plain zstd -3
    size (compressed data, an unrelated file), the probe is the answer.  Otherwise
    bsdiff-xz (both files up to ``bsdiff_max``; bsdiff-zstd too when the patch is
    small), and patch-from at the full level only where it can still win: when the
    probe is less than twice the best so far.
    """
    probe = _zstd_patch(old, new, min(level, 9))
    candidates = [(ZSTD_PATCH, probe)]
    if len(new) > 4096 and len(probe) > _DISSIMILAR * len(zstandard.compress(new, 3)):
        return ZSTD_PATCH, probe
    if max(len(old), len(new)) <= bsdiff_max:
        raw = _bsdiff_raw(old, new)
        candidates.append((BSDIFF_XZ, _xz(raw)))
        if len(raw) <= _SMALL_PATCH:
            candidates.append((BSDIFF_ZSTD, _zstd(raw, level)))
    best = min(candidates, key=lambda c: len(c[1]))
    if level > 9 and len(probe) < 2 * len(best[1]):
        best = min([best, (ZSTD_PATCH, _zstd_patch(old, new, level))], key=lambda c: len(c[1]))
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


def _unxz(data: bytes, cap: int) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_XZ_DECODE)
    try:
        out = d.decompress(data, max_length=cap + 1)
    except lzma.LZMAError as exc:
        raise DeltaError(f"delta does not decompress: {exc}") from None
    if len(out) > cap or not d.eof:
        raise DeltaError("bsdiff-xz delta is truncated or larger than its file allows")
    return out


def apply_delta(encoding: int, old: bytes, delta: bytes, size: int) -> bytes:
    """Rebuild a ``size``-byte file from ``old`` and ``delta``; :class:`DeltaError`
    if the delta is malformed or does not give exactly ``size`` bytes."""
    if encoding == ZSTD_PATCH:
        d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        out = _decompress(delta, size, d, len(old))
    elif encoding in (BSDIFF_ZSTD, BSDIFF_XZ):
        # control: 24 bytes per triple; diff <= size; extra <= size
        cap = _BSDIFF_HEADER.size + 2 * size + 24 * (size + 1)
        raw = _decompress(delta, cap, None, 0) if encoding == BSDIFF_ZSTD else _unxz(delta, cap)
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
