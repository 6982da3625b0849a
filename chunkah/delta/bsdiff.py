"""bsdiff patches: divsufsort's suffix array, then bsdiff's search in the C core.

The sort is not the cost: on libcrypto's 4.7 MB, bsdiff4 took 1.8-2.6 s, and the same
search over divsufsort's array (PyPI ``pydivsufsort``, 0.2 s) 1.9 s; the search here
skips, in each binary-search probe, the prefix both bounds already share (1.1 s).  The
suffix array of a string is unique, and the search (chunkah/_native/delta.c, or :func:`_search_python`, its
pure-Python twin) follows bsdiff's rules exactly, so the patch is byte for byte the
one ``bsdiff4.core.diff`` makes, and ``bsdiff4.core.patch`` applies it.  Memory: the
suffix array is 4 bytes per old byte (bsdiff4's sort: 16).

Without the C extension (a source install without a compiler) ``bsdiff4.core.diff``
makes the same patch, slower; ``CHUNKAH_BACKEND=python`` selects the twin, which is
for tests: it runs at Python speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydivsufsort import divsufsort

from chunkah._native import load_delta_kernels, wanted_backend

__all__ = ["BACKEND", "diff", "suffix_array"]

_BATCH = 1 << 16  # control triples collected per call into the C core


def suffix_array(old: bytes) -> np.ndarray:
    """bsdiff's index of ``old``: the empty suffix first, then every suffix in order."""
    if len(old) >= 1 << 31:
        raise ValueError("bsdiff's index holds 32-bit offsets: the old file is too big")
    sa = np.empty(len(old) + 1, dtype=np.int32)
    sa[0] = len(old)
    if old:
        sa[1:] = divsufsort(old)
    return sa


def _sign_magnitude(values: np.ndarray) -> bytes:
    """bsdiff's integer encoding: little-endian magnitude, sign in the top bit."""
    v = values.astype(np.int64)
    out = np.abs(v).astype(np.uint64) | np.where(v < 0, np.uint64(1 << 63), np.uint64(0))
    return out.astype("<u8").tobytes()


def _search_python(old: bytes, new: bytes, sa: np.ndarray) -> tuple[list[int], bytes, bytes]:
    """The pure-Python twin of ``chunkah_bsdiff_run`` (for tests: small inputs)."""
    old_size, new_size = len(old), len(new)
    index = sa.tolist()

    def match_len(at: int, scan: int) -> int:
        n = min(old_size - at, new_size - scan)
        i = 0
        while i < n and old[at + i] == new[scan + i]:
            i += 1
        return i

    def longest_match(scan: int) -> tuple[int, int]:
        lo, hi = 0, old_size
        want = new_size - scan
        while hi - lo >= 2:
            mid = lo + (hi - lo) // 2
            at = index[mid]
            n = min(old_size - at, want)
            if old[at : at + n] < new[scan : scan + n]:
                lo = mid
            else:
                hi = mid
        x, y = match_len(index[lo], scan), match_len(index[hi], scan)
        return (x, index[lo]) if x > y else (y, index[hi])

    def same_at(old_at: int, new_at: int) -> bool:
        return old_at < old_size and old[old_at] == new[new_at]

    control: list[int] = []
    diff_block = bytearray()
    extra_block = bytearray()
    scan = length = pos = last_scan = last_pos = last_offset = 0
    while scan < new_size:
        old_score = 0
        scan += length
        scored = scan
        while scan < new_size:
            length, pos = longest_match(scan)
            while scored < scan + length:
                if same_at(scored + last_offset, scored):
                    old_score += 1
                scored += 1
            if (length == old_score and length != 0) or length > old_score + 8:
                break
            if same_at(scan + last_offset, scan):
                old_score -= 1
            scan += 1
        if length == old_score and scan != new_size:
            continue
        agree = best = fwd = 0
        i = 0
        while last_scan + i < scan and last_pos + i < old_size:
            if old[last_pos + i] == new[last_scan + i]:
                agree += 1
            i += 1
            if agree * 2 - i > best * 2 - fwd:
                best, fwd = agree, i
        back = 0
        if scan < new_size:
            agree = best = 0
            i = 1
            while scan >= last_scan + i and pos >= i:
                if old[pos - i] == new[scan - i]:
                    agree += 1
                if agree * 2 - i > best * 2 - back:
                    best, back = agree, i
                i += 1
        if last_scan + fwd > scan - back:
            overlap = (last_scan + fwd) - (scan - back)
            score = best_score = cut = 0
            for i in range(overlap):
                if new[last_scan + fwd - overlap + i] == old[last_pos + fwd - overlap + i]:
                    score += 1
                if new[scan - back + i] == old[pos - back + i]:
                    score -= 1
                if score > best_score:
                    best_score, cut = score, i + 1
            fwd += cut - overlap
            back -= cut
        diff_block += bytes((new[last_scan + i] - old[last_pos + i]) & 0xFF for i in range(fwd))
        extra_n = (scan - back) - (last_scan + fwd)
        extra_block += new[last_scan + fwd : last_scan + fwd + extra_n]
        control += [fwd, extra_n, (pos - back) - (last_pos + fwd)]
        last_scan, last_pos, last_offset = scan - back, pos - back, pos - scan
    return control, bytes(diff_block), bytes(extra_block)


def _search_native(old: bytes, new: bytes, sa: np.ndarray) -> tuple[np.ndarray, bytes, bytes]:
    ffi, lib = _native
    state = ffi.new("chunkah_bsdiff *")
    old_buf = ffi.from_buffer("uint8_t[]", old)
    new_buf = ffi.from_buffer("uint8_t[]", new)
    state.old, state.old_size = old_buf, len(old)
    state.new_, state.new_size = new_buf, len(new)
    state.sa = ffi.cast("const int32_t *", sa.ctypes.data)
    diff_block = bytearray(len(new))
    extra_block = bytearray(len(new))
    diff_ptr = ffi.from_buffer("uint8_t[]", diff_block)
    extra_ptr = ffi.from_buffer("uint8_t[]", extra_block)
    batch = np.empty(3 * _BATCH, dtype=np.int64)
    batch_ptr = ffi.cast("int64_t *", batch.ctypes.data)
    parts = []
    while True:
        n = lib.chunkah_bsdiff_run(state, batch_ptr, _BATCH, diff_ptr, extra_ptr)
        parts.append(batch[: 3 * n].copy())
        if n < _BATCH:
            break
    del diff_ptr, extra_ptr
    control = np.concatenate(parts)
    return control, bytes(diff_block[: state.diff_len]), bytes(extra_block[: state.extra_len])


def _load() -> tuple[str, Any]:
    kernels = load_delta_kernels()
    if kernels is not None:
        return "native", kernels
    return ("python" if wanted_backend() == "python" else "bsdiff4"), None


BACKEND, _native = _load()


def diff(old: bytes, new: bytes) -> tuple[bytes, bytes, bytes]:
    """(control, diff, extra) as ``bsdiff4.core.diff`` returns them: control is
    24-byte triples (add, copy, seek) in bsdiff's sign-magnitude encoding."""
    if BACKEND == "bsdiff4":
        import bsdiff4.core

        control, d, e = bsdiff4.core.diff(old, new)
        if not isinstance(control, bytes):  # bsdiff4 < 1.3: a list of (x, y, z)
            control = _sign_magnitude(np.asarray(control, dtype=np.int64).reshape(-1))
        return control, d, e
    sa = suffix_array(old)
    if BACKEND == "native":
        triples, d, e = _search_native(old, new, sa)
        return _sign_magnitude(triples), d, e
    control, d, e = _search_python(old, new, sa)
    return _sign_magnitude(np.asarray(control, dtype=np.int64)), d, e
