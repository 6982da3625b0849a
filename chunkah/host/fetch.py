"""Executes the fetch part of an update plan: ranges -> frames -> verified chunks.

Every fetched range is split into its zstd frames, each frame is decompressed with
its declared size as a hard cap, and every chunk cut from it must hash to the
sha256 its TOC gives before it is stored in the chunk cache.  A range that fails
verification is fetched again once (bytes flipped in transit), then the update
fails with a VerificationError; nothing unverified reaches the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chunkah.compression import CompressionError, decompress_frame
from chunkah.errors import VerificationError
from chunkah.host.deploy import crash_point
from chunkah.host.index import LayerIndex
from chunkah.host.plan import ChunkStep, FetchRange, UpdatePlan
from chunkah.registry.client import RegistryClient
from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import RegistryReference

__all__ = ["ChunkStore", "FetchStats", "fetch_plan", "frames_to_chunks"]


class ChunkStore(Protocol):
    """Where verified chunks go (the sysroot's content-addressed chunk cache)."""

    def has(self, sha256: bytes) -> bool: ...

    def put(self, sha256: bytes, data: bytes) -> None: ...


@dataclass
class FetchStats:
    ranges: int = 0
    bytes: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    refetched: int = 0
    layers: dict[str, int] = field(default_factory=dict)


Progress = Callable[[int, int], None]  # (compressed bytes done, chunks done)


def frames_to_chunks(plan: UpdatePlan) -> dict[tuple[int, int], list[ChunkStep]]:
    """(layer, frame) -> the distinct chunks to cut from it."""
    out: dict[tuple[int, int], dict[bytes, ChunkStep]] = defaultdict(dict)
    for f in plan.files:
        for c in f.chunks:
            if c.source == "fetch":
                out[(c.layer, c.frame)].setdefault(c.sha256, c)
    return {k: list(v.values()) for k, v in out.items()}


def _cut(
    data: bytes, rng: FetchRange, index: LayerIndex, wanted: dict[tuple[int, int], list[ChunkStep]]
) -> list[tuple[bytes, bytes]] | None:
    """Verified (sha256, chunk) pairs of a range, or None when anything is off."""
    out = []
    for frame_no in rng.frames:
        frame = index.frames[frame_no]
        start = frame.offset - rng.offset
        raw_frame = data[start : start + frame.size]
        if len(raw_frame) != frame.size:
            return None
        try:
            raw = decompress_frame(raw_frame, frame.usize)  # never more than the TOC says
        except CompressionError:
            return None
        for step in wanted.get((rng.layer, frame_no), ()):
            piece = raw[step.offset_in_frame : step.offset_in_frame + step.size]
            if len(piece) != step.size or hashlib.sha256(piece).digest() != step.sha256:
                return None
            out.append((step.sha256, piece))
    return out


async def _fetch_layer(
    client: RegistryClient,
    ref: RegistryReference,
    layer_no: int,
    index: LayerIndex,
    ranges: Sequence[FetchRange],
    wanted: dict[tuple[int, int], list[ChunkStep]],
    store: ChunkStore,
    stats: FetchStats,
    options: RangeOptions,
    progress: Progress | None,
    spool_dir: str | None,
) -> None:
    verified: dict[int, list[tuple[bytes, bytes]]] = {}

    def check(i: int, data: bytes) -> bool:
        cut = _cut(data, ranges[i], index, wanted)
        if cut is None:
            stats.refetched += 1
            return False
        verified[i] = cut
        return True

    async with RangeFetcher(
        client,
        ref,
        index.digest,
        index.blob_size,
        options=options,
        check=check,
        spool_dir=spool_dir,
    ) as fetcher:
        async for result in fetcher.fetch([(r.offset, r.length) for r in ranges]):
            pieces = verified.pop(result.index, None)
            if pieces is None:  # the fetcher gave up re-fetching: never store unverified bytes
                raise VerificationError(
                    f"layer {index.digest}: bytes {result.offset}+{len(result.data)} do not "
                    "match the chunk digests of its TOC"
                )
            for sha, piece in pieces:
                if not store.has(sha):
                    store.put(sha, piece)
                    crash_point("chunk-stored")
                stats.chunks += 1
                stats.chunk_bytes += len(piece)
            stats.ranges += 1
            crash_point(f"fetched-{stats.ranges}")
            stats.bytes += len(result.data)
            stats.layers[index.digest] = stats.layers.get(index.digest, 0) + len(result.data)
            if progress is not None:
                progress(len(result.data), len(pieces))


async def fetch_plan(
    client: RegistryClient,
    ref: RegistryReference,
    indexes: Sequence[LayerIndex],
    plan: UpdatePlan,
    store: ChunkStore,
    *,
    options: RangeOptions | None = None,
    layer_concurrency: int = 3,
    progress: Progress | None = None,
    spool_dir: str | None = None,
) -> FetchStats:
    """Fetch every range of ``plan`` and store the verified chunks."""
    wanted = frames_to_chunks(plan)
    by_layer: dict[int, list[FetchRange]] = defaultdict(list)
    for r in plan.fetch:
        by_layer[r.layer].append(r)
    stats = FetchStats()
    options = options or RangeOptions()
    gate = asyncio.Semaphore(layer_concurrency)

    async def one(layer_no: int) -> None:
        async with gate:
            await _fetch_layer(
                client, ref, layer_no, indexes[layer_no], by_layer[layer_no], wanted, store,
                stats, options, progress, spool_dir,
            )  # fmt: skip

    await asyncio.gather(*(one(li) for li in sorted(by_layer)))
    return stats
