"""The host side of deltas: fetch the planned deltas by range, rebuild, verify.

Every delta's bytes are checked against the sha256 its index gives as they arrive
(a range that fails is fetched once more), its base file against ``from_sha256``,
and the rebuilt file against the sha256 of the target TOC.  A rebuilt file goes to
the chunk cache under its own digest, where the planner finds it on its second
pass.  Nothing here fails the update: a delta that is missing, malformed or wrong
is counted and its file comes as chunks instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from chunkah import oci
from chunkah.delta.encode import DeltaError, apply_delta
from chunkah.delta.index import DeltaOffer
from chunkah.errors import ChunkahError
from chunkah.host.fetch import ChunkStore
from chunkah.host.plan import UpdatePlan
from chunkah.registry.client import RegistryClient
from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import RegistryReference

__all__ = ["DeltaStats", "fetch_and_apply"]


@dataclass
class DeltaStats:
    planned: int = 0
    applied: int = 0
    failed: int = 0
    bytes: int = 0  # delta bytes received
    ranges: int = 0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "applied": self.applied,
            "failed": self.failed,
            "bytes": self.bytes,
            "ranges": self.ranges,
            "failures": self.failures[:20],
        }


def _read_base(root: Path, rel: bytes, size: int) -> bytes:
    fd = os.open(os.fsencode(root) + b"/" + rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        got = 0
        while got < size + 1:
            block = os.read(fd, min(1 << 20, size + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _rebuild(offer: DeltaOffer, delta: bytes, base_root: Path, base: bytes) -> bytes:
    if hashlib.sha256(delta).digest() != offer.delta_sha256:
        raise DeltaError("delta bytes do not match the index")
    old = _read_base(base_root, base, offer.from_size)
    if len(old) != offer.from_size or hashlib.sha256(old).digest() != offer.from_sha256:
        raise DeltaError(f"base {base!r} is not the file the delta was made against")
    out = apply_delta(offer.encoding, old, delta, offer.to_size)
    if hashlib.sha256(out).digest() != offer.to_sha256:
        raise DeltaError("rebuilt content does not match its sha256")
    return out


async def fetch_and_apply(
    client: RegistryClient,
    ref: RegistryReference,
    data: oci.Descriptor,
    plan: UpdatePlan,
    current_root: Path,
    store: ChunkStore,
    *,
    options: RangeOptions | None = None,
    spool_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> DeltaStats:
    """Rebuild every file the plan takes by delta into ``store``; never raises for a
    bad or missing delta (the caller re-plans the files that did not arrive)."""
    bases: dict[bytes, bytes] = {}
    for f in plan.files:
        if f.action == "delta" and f.delta is not None:
            bases.setdefault(f.delta.to_sha256, f.local)
    ranges = plan.deltas
    stats = DeltaStats(planned=len(bases))
    if not ranges:
        return stats
    done: set[bytes] = set()

    def check(i: int, blob: bytes) -> bool:
        r = ranges[i]
        return all(
            hashlib.sha256(blob[o.offset - r.offset : o.offset - r.offset + o.size]).digest()
            == o.delta_sha256
            for o in r.offers
        )

    try:
        async with RangeFetcher(
            client, ref, data.digest, data.size, options=options or RangeOptions(),
            check=check, spool_dir=spool_dir,
        ) as fetcher:  # fmt: skip
            async for result in fetcher.fetch([(r.offset, r.length) for r in ranges]):
                r = ranges[result.index]
                stats.ranges += 1
                stats.bytes += len(result.data)
                if progress is not None:
                    progress(len(result.data))
                for o in r.offers:
                    if o.to_sha256 in done or o.to_sha256 not in bases:
                        continue
                    piece = result.data[o.offset - r.offset : o.offset - r.offset + o.size]
                    try:
                        # In a thread (zstd, LZMA2 and gzip let go of the GIL): an
                        # initrd takes seconds, and the fetch of later ranges goes on.
                        out = await asyncio.to_thread(
                            _rebuild, o, piece, current_root, bases[o.to_sha256]
                        )
                    except (DeltaError, OSError, MemoryError, zstandard.ZstdError) as exc:
                        stats.failures.append(f"{o.path.decode(errors='replace')}: {exc}")
                        continue
                    if not store.has(o.to_sha256):
                        store.put(o.to_sha256, out)
                    done.add(o.to_sha256)
    except ChunkahError as exc:  # missing blob, a range that keeps failing, the network
        stats.failures.append(f"delta data {data.digest}: {exc}")
    stats.applied = len(done)
    stats.failed = stats.planned - stats.applied
    return stats
