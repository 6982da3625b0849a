"""Pure-Python twin of the FastCDC-2020 C core: same cut points, numpy for speed.

The gear hash ``h_i = (h_{i-1} << 1) + gear[b_i]`` (mod 2**64) forgets a byte after
64 steps, so the hash of the whole prefix at every position can be computed for all
positions at once by doubling: ``H_2w(i) = H_w(i) + (H_w(i-w) << w)``.  The masks
only test bits 0..47, so positions at least 48 bytes after the point where a chunk's
hash restarts from zero see exactly that prefix hash; those candidates are found with
a vector compare, and only the first 48 positions of each chunk are hashed one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from chunkah.cdc import CdcParams

_U64 = (1 << 64) - 1
# Highest bit any mask tests, plus one: beyond this distance a byte no longer matters.
_WINDOW = 48
_BLOCK = 1 << 18  # positions per vector block: keeps the temporaries in L2 cache


def _candidates(
    params: CdcParams, data: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions where the prefix gear hash passes mask_s and mask_l."""
    gear = params.gear
    mask_s, mask_l = np.uint64(params.mask_s), np.uint64(params.mask_l)
    nested = (params.mask_s & params.mask_l) == params.mask_l  # mask_s passing implies mask_l
    n = len(data)
    ctx = 63
    found_s: list[npt.NDArray[np.int64]] = []
    found_l: list[npt.NDArray[np.int64]] = []
    tmp = np.empty(_BLOCK + ctx, dtype=np.uint64)
    for block_start in range(0, n, _BLOCK):
        lo = max(0, block_start - ctx)
        hi = min(n, block_start + _BLOCK)
        h = gear[data[lo:hi]]
        m = hi - lo
        w = 1
        while w < min(64, m):
            t = tmp[: m - w]
            np.left_shift(h[:-w], np.uint64(w), out=t)
            np.add(h[w:], t, out=h[w:])
            w *= 2
        skip = block_start - lo
        body = h[skip:]
        t = tmp[: len(body)]
        np.bitwise_and(body, mask_l, out=t)
        cand_l = np.flatnonzero(t == 0)
        if nested:
            cand_s = cand_l[(body[cand_l] & mask_s) == 0]
        else:
            np.bitwise_and(body, mask_s, out=t)
            cand_s = np.flatnonzero(t == 0)
        found_l.append(cand_l + block_start)
        found_s.append(cand_s + block_start)
    empty = np.empty(0, dtype=np.int64)
    return (
        np.concatenate(found_s) if found_s else empty,
        np.concatenate(found_l) if found_l else empty,
    )


def cut(params: CdcParams, view: memoryview, eof: bool) -> npt.NDArray[np.uint64]:
    """End offsets of the chunks of ``view``; see chunkah_cut_points in fastcdc.c."""
    data = np.frombuffer(view, dtype=np.uint8)
    n = len(data)
    min_size, avg_size, max_size = params.min_size, params.avg_size, params.max_size
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    cand_s, cand_l = _candidates(params, data)
    gear = params.gear.tolist()
    mask_s, mask_l = params.mask_s, params.mask_l
    first_pos = (min_size // 2) * 2
    search = np.searchsorted
    ends: list[int] = []
    start = 0
    while start < n:
        remaining = n - start
        if not eof and remaining < max_size:
            break
        if remaining <= min_size:
            start = n
            ends.append(start)
            continue
        center = avg_size
        if remaining > max_size:
            remaining = max_size
        elif remaining < center:
            center = remaining
        pos = start + first_pos
        mid = start + (center // 2) * 2
        end = start + (remaining // 2) * 2
        cut_at = -1
        # The hash restarts at pos: its first _WINDOW values still lack older bytes.
        exact_end = min(pos + _WINDOW, end)
        h = 0
        for i in range(pos, exact_end):
            h = ((h << 1) + gear[view[i]]) & _U64
            if not h & (mask_s if i < mid else mask_l):
                cut_at = i
                break
        if cut_at < 0 and exact_end < end:
            if exact_end < mid:
                k = search(cand_s, exact_end)
                if k < len(cand_s) and cand_s[k] < mid:
                    cut_at = int(cand_s[k])
            if cut_at < 0:
                k = search(cand_l, max(mid, exact_end))
                if k < len(cand_l) and cand_l[k] < end:
                    cut_at = int(cand_l[k])
        start = cut_at if cut_at >= 0 else start + remaining
        ends.append(start)
    return np.array(ends, dtype=np.uint64)
