"""Per-file delta encodings: make one, apply one (docs/delta.md section 3).

- ``zstd-patch`` (1): one zstd frame of the new file, compressed with the old file
  as a raw-content dictionary (what ``zstd --patch-from`` does), a window covering
  both, long-distance matching for big files.
- ``bsdiff-zstd`` (2): a bsdiff patch (control triples, diff bytes, extra bytes,
  as PyPI ``bsdiff4``'s core makes and applies them; made by :mod:`chunkah.delta.bsdiff`), serialised as below and compressed as one zstd frame.
- ``bsdiff-xz`` (3): the same patch as a raw LZMA2 stream (fixed filter settings), which
  compresses bsdiff's mostly-zero diff block 12-16 % tighter than zstd -19 here.
- ``bsdiff-sparse-xz`` (5): the same patch with the diff block as (zero gap, byte)
  tokens (:mod:`chunkah.delta.sparse`), as raw LZMA2: as small as encoding 3 and about
  10x faster to compress (LZMA2's match finder crawls through long zero runs).
- ``gzip-inner`` (4): both files are gzip streams that ``gzip -n`` reproduces; one of
  the encodings above between their decompressed contents, and the host recompresses
  (:mod:`chunkah.delta.regzip`).  An initrd is the case that matters: 36 MB of gzip
  whose content changes by a few MB.

Applying never trusts the delta: the output is capped at the size the target TOC
gives, and the caller checks the result against the TOC's sha256.
"""

from __future__ import annotations

import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence

import bsdiff4.core
import zstandard

from chunkah.delta import bsdiff, sparse
from chunkah.delta.regzip import RAW_MAX, GzipError, gunzip_exact, gzip_level_guess, regzip
from chunkah.errors import VerificationError

__all__ = [
    "BSDIFF_SPARSE_XZ",
    "BSDIFF_XZ",
    "BSDIFF_ZSTD",
    "ENCODING_NAMES",
    "GZIP_INNER",
    "ZSTD_PATCH",
    "ZSTD_PATCH_PARTS",
    "DeltaError",
    "apply_delta",
    "encode",
    "encode_best",
]

ZSTD_PATCH = 1
BSDIFF_ZSTD = 2
BSDIFF_XZ = 3
GZIP_INNER = 4
BSDIFF_SPARSE_XZ = 5
ZSTD_PATCH_PARTS = 6
ENCODING_NAMES = {
    ZSTD_PATCH: "zstd-patch",
    BSDIFF_ZSTD: "bsdiff-zstd",
    BSDIFF_XZ: "bsdiff-xz",
    GZIP_INNER: "gzip-inner",
    BSDIFF_SPARSE_XZ: "bsdiff-sparse-xz",
    ZSTD_PATCH_PARTS: "zstd-patch-parts",
}

#: inner encodings gzip-inner allows
_INNER = (ZSTD_PATCH, BSDIFF_ZSTD, BSDIFF_XZ, BSDIFF_SPARSE_XZ, ZSTD_PATCH_PARTS)
DEFAULT_LEVEL = 19
BSDIFF_MAX = 64 << 20  # bsdiff's index is 4 bytes per old byte, its blocks 2x the new
_WINDOW_LOG_MAX = 31
_BSDIFF_HEADER = struct.Struct("<4sIQQQ")  # magic, reserved, control, diff, extra lengths
_BSDIFF_MAGIC = b"CKBD"
_XZ_DICT = 64 << 20
#: bsdiff-xz: raw LZMA2, these settings exactly (docs/delta.md section 3)
_DENSE_LZMA = {"lc": 1, "lp": 0, "pb": 0}
_XZ_DECODE = [{"id": lzma.FILTER_LZMA2, "dict_size": _XZ_DICT, **_DENSE_LZMA}]
#: bsdiff-sparse-xz: a token is two bytes (gap, value) far more often than not: pb=1
_SPARSE_LZMA = {"lc": 2, "lp": 0, "pb": 1}
_SPARSE_DECODE = [{"id": lzma.FILTER_LZMA2, "dict_size": _XZ_DICT, **_SPARSE_LZMA}]
_SPARSE_HEADER = struct.Struct("<4sIQQQQ")  # magic, 0, control, diff, tokens, extra lengths
_SPARSE_MAGIC = b"CKSP"
#: The dense bsdiff-xz as well, only for patches this small: on a 4.7 MB libcrypto
#: patch it took 3.0 s for 0.02-0.3 % fewer bytes than the sparse form's 0.3 s.
_DENSE_XZ_MAX = 256 << 10
_SMALL_PATCH = 64 << 10  # bsdiff patches up to this size are also tried with zstd
_DISSIMILAR = 0.9  # the old file saves less than 10 %: not worth a delta search
#: Above this (either file), the full-level patch-from runs only when the probe is
#: close to the best.
_BIG = 8 << 20
_BIG_CLOSE = 1.1
#: The full-level patch-from pass after bsdiff: worth it on small text files (the
#: probe within 2x), rarely on binaries (150 kernel modules: 0.07 % smaller deltas for
#: 40 % of the CPU), so past 64 KiB only when the probe is within 1.2x of the best.
_SMALL_FILE = 64 << 10
_CLOSE = 1.2
#: bsdiff's search is slow where the files differ a lot (numpy's rebuilt 25 MB
#: OpenBLAS: 27 s; close files take about 0.25 s per MB).  Past this size it runs only when
#: the probe says the files are close (under 12 % of the new size): numpy's 25 MB
#: OpenBLAS rebuilt (probe 18 %) gives 2.82 MB by a level-18 patch-from against
#: bsdiff-xz's 3.07 MB for half the CPU; patched (probe 8 %), bsdiff-xz gives 266 KB
#: against patch-from's 527 KB.
_BSDIFF_ALWAYS = 16 << 20
_NEAR = 0.12
_FAR_LEVEL = 18
#: Above this (both files), patch-from runs in the zstd program: python-zstandard loads
#: the old file as a dictionary, where long-distance matching does not see it (an
#: initrd's content: 29 MB from python-zstandard at level 9, 10.6 MB from `zstd`).
_LDM_MIN = 16 << 20
#: zstd-patch-parts: the far pass over a big file on both cores.  numpy's rebuilt 25 MB
#: OpenBLAS at level 18: 23.1 s and 2.82 MB in one process, 15.3 s and 2.91 MB in two
#: (each still reads the whole old file; halves of the old file as dictionaries lose
#: 8 % for 2 s more saved).
_PARTS = 2
_MAX_PARTS = 64
_PARTS_HEADER = struct.Struct("<4sI")  # magic, number of parts
_PART_ENTRY = struct.Struct("<QQ")  # frame bytes, content bytes
_PARTS_MAGIC = b"CKZP"
_GZIP_HEADER = struct.Struct("<4sBBHQQ")  # magic, gzip level, inner encoding, 0, raw sizes
_GZIP_MAGIC = b"CKGZ"


class DeltaError(VerificationError):
    """A delta that does not decode, or decodes to something else than promised."""


def _window_log(old_size: int, new_size: int) -> int:
    return min(_WINDOW_LOG_MAX, max(10, (old_size + new_size).bit_length()))


def _zstd_patch(old: bytes, new: bytes, level: int) -> bytes:
    if len(old) + len(new) > _LDM_MIN:
        cli = shutil.which("zstd")
        if cli is not None:
            made = _zstd_patch_cli(cli, old, [new], level)
            if made is not None:
                return made[0]
    return _zstd_patch_in_process(old, new, level)


def _zstd_patch_in_process(old: bytes, new: bytes | memoryview, level: int) -> bytes:
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


def _zstd_patch_cli(
    cli: str, old: bytes, parts: Sequence[bytes | memoryview], level: int
) -> list[bytes] | None:
    """``zstd --patch-from`` of each part against the whole old file, the parts in
    parallel (one process each), with the window of docs/delta.md (frames of the kind
    python-zstandard decodes with ``old`` as a raw-content dictionary); None when a
    program fails (a full temp directory...): the caller compresses in-process."""
    with tempfile.TemporaryDirectory(prefix="chunkah-patch-") as tmp:
        old_path = os.path.join(tmp, "old")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with open(old_path, "wb") as f:
                f.write(old)
            outs = []
            for i, part in enumerate(parts):
                part_path, out_path = os.path.join(tmp, f"new{i}"), os.path.join(tmp, f"out{i}")
                with open(part_path, "wb") as f:
                    f.write(part)
                window = _window_log(len(old), len(part))
                cmd = [cli, "-q", "-f", f"-{level}", f"--long={window}", "-T1"]
                if level > 19:
                    cmd.insert(1, "--ultra")
                cmd += [f"--patch-from={old_path}", part_path, "-o", out_path]
                procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
                outs.append(out_path)
            codes = [p.wait(timeout=3600) for p in procs]
            if any(codes):
                return None
            made = []
            for out_path in outs:
                with open(out_path, "rb") as f:
                    made.append(f.read())
            return made
        except (OSError, subprocess.TimeoutExpired):
            return None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _zstd_patch_parts(
    old: bytes, new: bytes, level: int, *, in_process: bool = False
) -> bytes | None:
    """Encoding 6: ``new`` cut into ``_PARTS`` parts, each a patch-from frame against
    the whole old file, made at once by as many ``zstd`` processes; None when the
    ``zstd`` program is missing or fails, unless ``in_process`` (then one part after
    the other in this process: no faster than one frame)."""
    cli = shutil.which("zstd")
    view = memoryview(new)
    step = max(1, -(-len(new) // _PARTS))
    parts = [view[i : i + step] for i in range(0, len(new), step)] or [view]
    frames = _zstd_patch_cli(cli, old, parts, level) if cli is not None else None
    if frames is None:
        if not in_process:
            return None
        frames = [_zstd_patch_in_process(old, part, level) for part in parts]
    header = _PARTS_HEADER.pack(_PARTS_MAGIC, len(parts)) + b"".join(
        _PART_ENTRY.pack(len(frame), len(part)) for frame, part in zip(frames, parts, strict=True)
    )
    return header + b"".join(frames)


def _bsdiff_raw(blocks: tuple[bytes, bytes, bytes]) -> bytes:
    control, diff, extra = blocks
    out: bytes = (
        _BSDIFF_HEADER.pack(_BSDIFF_MAGIC, 0, len(control), len(diff), len(extra))
        + control
        + diff
        + extra
    )
    return out


def _sparse_raw(blocks: tuple[bytes, bytes, bytes]) -> bytes:
    control, diff, extra = blocks
    tokens = sparse.pack(diff)
    header = _SPARSE_HEADER.pack(_SPARSE_MAGIC, 0, len(control), len(diff), len(tokens), len(extra))
    return header + control + tokens + extra


def _zstd(raw: bytes, level: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(raw), write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def _xz(raw: bytes, lzma_options: dict[str, int]) -> bytes:
    dict_size = max(4096, min(_XZ_DICT, len(raw)))
    preset = 6 | lzma.PRESET_EXTREME
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size, **lzma_options}]
    out: bytes = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)
    return out


def encode(encoding: int, old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL) -> bytes:
    """The delta of ``new`` against ``old`` in one encoding."""
    if encoding == ZSTD_PATCH:
        return _zstd_patch(old, new, level)
    if encoding == ZSTD_PATCH_PARTS:
        made = _zstd_patch_parts(old, new, level, in_process=True)
        assert made is not None
        return made
    if encoding == BSDIFF_ZSTD:
        return _zstd(_bsdiff_raw(bsdiff.diff(old, new)), level)
    if encoding == BSDIFF_XZ:
        return _xz(_bsdiff_raw(bsdiff.diff(old, new)), _DENSE_LZMA)
    if encoding == BSDIFF_SPARSE_XZ:
        return _xz(_sparse_raw(bsdiff.diff(old, new)), _SPARSE_LZMA)
    if encoding == GZIP_INNER:
        found = _gzip_inner(old, new, level, BSDIFF_MAX)
        if found is None:
            raise GzipError("not a pair of gzip files that gzip -n reproduces")
        return found
    raise ValueError(f"unknown delta encoding {encoding}")


def encode_best(
    old: bytes, new: bytes, *, level: int = DEFAULT_LEVEL, bsdiff_max: int = BSDIFF_MAX
) -> tuple[int, bytes]:
    """The smallest delta, spending CPU where it can pay off.

    Two gzip files that ``gzip -n`` reproduces are compared by content (encoding 4)
    as well as by their bytes.  Otherwise a patch-from probe at level 9 comes first
    (lower levels barely use a large dictionary).  If the old file saves less than
    10 % of the new file's plain zstd -3 size (compressed data, an unrelated file),
    the probe is the answer.  Otherwise bsdiff-xz (both files up to ``bsdiff_max``;
    bsdiff-zstd too when the patch is small), and patch-from at the full level only
    where it can still win: when the probe is less than twice the best so far for
    files up to 64 KiB, 1.2 times up to 8 MiB, 1.1 times above.  Over 16 MiB bsdiff
    runs only when the probe is under 12 % of the new file (else a patch-from at
    level 18 at most); past ``bsdiff_max``, the probe.
    """
    candidates = []
    inner = _gzip_inner(old, new, level, bsdiff_max)
    if inner is not None:
        candidates.append((GZIP_INNER, inner))
    candidates.append(_plain_best(old, new, level, bsdiff_max))
    return min(candidates, key=lambda c: len(c[1]))


def _plain_best(old: bytes, new: bytes, level: int, bsdiff_max: int) -> tuple[int, bytes]:
    size = max(len(old), len(new))
    big = size > _BIG
    probe = _zstd_patch(old, new, min(level, 9))
    candidates = [(ZSTD_PATCH, probe)]
    if len(new) > 4096 and len(probe) > _DISSIMILAR * len(zstandard.compress(new, 3)):
        return ZSTD_PATCH, probe
    if size > bsdiff_max:
        # Past bsdiff's limit the probe is the answer: a level-19 pass over an
        # initrd's 130 MB content takes minutes for a 20 % smaller delta.
        return ZSTD_PATCH, probe
    if size > _BSDIFF_ALWAYS and len(probe) > _NEAR * len(new):
        if level > 9:
            far = min(level, _FAR_LEVEL)
            split = _zstd_patch_parts(old, new, far)
            if split is not None:
                candidates.append((ZSTD_PATCH_PARTS, split))
            else:
                candidates.append((ZSTD_PATCH, _zstd_patch(old, new, far)))
        return min(candidates, key=lambda c: len(c[1]))
    blocks = bsdiff.diff(old, new)
    candidates.append((BSDIFF_SPARSE_XZ, _xz(_sparse_raw(blocks), _SPARSE_LZMA)))
    raw = _bsdiff_raw(blocks)
    del blocks
    if len(raw) <= _DENSE_XZ_MAX:
        candidates.append((BSDIFF_XZ, _xz(raw, _DENSE_LZMA)))
    if len(raw) <= _SMALL_PATCH:
        candidates.append((BSDIFF_ZSTD, _zstd(raw, level)))
    best = min(candidates, key=lambda c: len(c[1]))
    close = (2 if len(new) <= _SMALL_FILE else _BIG_CLOSE if big else _CLOSE) * len(best[1])
    if level > 9 and len(probe) < close:
        best = min([best, (ZSTD_PATCH, _zstd_patch(old, new, level))], key=lambda c: len(c[1]))
    return best


def _gzip_inner(old: bytes, new: bytes, level: int, bsdiff_max: int) -> bytes | None:
    """Encoding 4, or None when the pair is not two reproducible gzip files."""
    gz_level = gzip_level_guess(new)
    if gz_level is None or gzip_level_guess(old) is None:
        return None
    try:
        old_raw = gunzip_exact(old, RAW_MAX)
        new_raw = gunzip_exact(new, RAW_MAX)
        if regzip(new_raw, gz_level) != new:
            return None
    except GzipError:
        return None
    encoding, delta = _plain_best(old_raw, new_raw, level, bsdiff_max)
    header = _GZIP_HEADER.pack(_GZIP_MAGIC, gz_level, encoding, 0, len(old_raw), len(new_raw))
    return header + delta


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


def _bsdiff_patch(old: bytes, size: int, control: bytes, diff: bytes, extra: bytes) -> bytes:
    try:
        out: bytes = bsdiff4.core.patch(old, size, control, diff, extra)
    except Exception as exc:  # bsdiff4 raises ValueError/MemoryError/SystemError on junk
        raise DeltaError(f"bsdiff delta does not apply: {exc}") from None
    return out


def _unxz(data: bytes, cap: int, filters: list[dict[str, int]]) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
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
    if encoding == GZIP_INNER:
        out = _apply_gzip_inner(old, delta, size)
    elif encoding == ZSTD_PATCH:
        d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        out = _decompress(delta, size, d, len(old))
    elif encoding == ZSTD_PATCH_PARTS:
        out = _apply_parts(old, delta, size)
    elif encoding in (BSDIFF_ZSTD, BSDIFF_XZ):
        # control: 24 bytes per triple; diff <= size; extra <= size
        cap = _BSDIFF_HEADER.size + 2 * size + 24 * (size + 1)
        raw = (
            _decompress(delta, cap, None, 0)
            if encoding == BSDIFF_ZSTD
            else _unxz(delta, cap, _XZ_DECODE)
        )
        if len(raw) < _BSDIFF_HEADER.size:
            raise DeltaError("bsdiff delta is truncated")
        magic, _r, nc, nd, ne = _BSDIFF_HEADER.unpack_from(raw)
        if magic != _BSDIFF_MAGIC or _BSDIFF_HEADER.size + nc + nd + ne != len(raw) or nc % 24:
            raise DeltaError("bsdiff delta has a bad header")
        start = _BSDIFF_HEADER.size
        control = raw[start : start + nc]
        diff = raw[start + nc : start + nc + nd]
        extra = raw[start + nc + nd :]
        del raw
        out = _bsdiff_patch(old, size, control, diff, extra)
    elif encoding == BSDIFF_SPARSE_XZ:
        # tokens: at most 12 bytes per diff byte (an escaped gap and the byte)
        cap = _SPARSE_HEADER.size + 24 * (size + 1) + 13 * size
        raw = _unxz(delta, cap, _SPARSE_DECODE)
        if len(raw) < _SPARSE_HEADER.size:
            raise DeltaError("bsdiff-sparse delta is truncated")
        magic, _r, nc, nd, nt, ne = _SPARSE_HEADER.unpack_from(raw)
        if (
            magic != _SPARSE_MAGIC
            or _SPARSE_HEADER.size + nc + nt + ne != len(raw)
            or nc % 24
            or nd > size
            or ne > size
        ):
            raise DeltaError("bsdiff-sparse delta has a bad header")
        start = _SPARSE_HEADER.size
        control = raw[start : start + nc]
        try:
            diff = bytes(sparse.expand(memoryview(raw)[start + nc : start + nc + nt], nd))
        except sparse.SparseError as exc:
            raise DeltaError(f"bsdiff-sparse delta: {exc}") from None
        extra = raw[start + nc + nt :]
        del raw
        out = _bsdiff_patch(old, size, control, diff, extra)
    else:
        raise DeltaError(f"unknown delta encoding {encoding}")
    if len(out) != size:
        raise DeltaError(f"delta gives {len(out)} bytes, expected {size}")
    return out


def _apply_parts(old: bytes, delta: bytes, size: int) -> bytes:
    if len(delta) < _PARTS_HEADER.size:
        raise DeltaError("zstd-patch-parts delta is truncated")
    magic, count = _PARTS_HEADER.unpack_from(delta)
    if magic != _PARTS_MAGIC or not 1 <= count <= _MAX_PARTS:
        raise DeltaError("zstd-patch-parts delta has a bad header")
    start = _PARTS_HEADER.size + count * _PART_ENTRY.size
    if len(delta) < start:
        raise DeltaError("zstd-patch-parts delta is truncated")
    entries = [
        _PART_ENTRY.unpack_from(delta, _PARTS_HEADER.size + i * _PART_ENTRY.size)
        for i in range(count)
    ]
    if start + sum(e[0] for e in entries) != len(delta) or sum(e[1] for e in entries) != size:
        raise DeltaError("zstd-patch-parts delta's parts do not add up")
    d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    out = bytearray()
    at = start
    for frame_size, content_size in entries:
        part = _decompress(delta[at : at + frame_size], content_size, d, len(old))
        if len(part) != content_size:
            raise DeltaError("a zstd-patch-parts frame is not the size its entry says")
        out += part
        at += frame_size
    return bytes(out)


def _apply_gzip_inner(old: bytes, delta: bytes, size: int) -> bytes:
    if len(delta) < _GZIP_HEADER.size:
        raise DeltaError("gzip-inner delta is truncated")
    magic, gz_level, inner, _r, old_raw_size, new_raw_size = _GZIP_HEADER.unpack_from(delta)
    if magic != _GZIP_MAGIC or inner not in _INNER:
        raise DeltaError("gzip-inner delta has a bad header")
    if not 1 <= gz_level <= 9 or max(old_raw_size, new_raw_size) > RAW_MAX:
        raise DeltaError("gzip-inner delta declares a bad level or size")
    body = delta[_GZIP_HEADER.size :]
    try:
        old_raw = gunzip_exact(old, old_raw_size)
        if len(old_raw) != old_raw_size:
            raise DeltaError("the base's gzip content is not the size the delta expects")
        if inner == ZSTD_PATCH:
            # The dictionary holds its own copy: drop ours before decoding (an initrd's
            # 130 MB content would otherwise be in memory three times at the peak).
            d = zstandard.ZstdCompressionDict(old_raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            del old_raw
            new_raw = _decompress(body, new_raw_size, d, old_raw_size)
            del d
            if len(new_raw) != new_raw_size:
                raise DeltaError(f"delta gives {len(new_raw)} bytes, expected {new_raw_size}")
        else:
            new_raw = apply_delta(inner, old_raw, body, new_raw_size)
            del old_raw
        out = regzip(new_raw, gz_level)
    except GzipError as exc:
        raise DeltaError(f"gzip-inner delta: {exc}") from None
    return out
