"""``chunkah delta FROM TO``: compute the per-file deltas of one upgrade path.

Pairs every changed file of TO with a base in FROM (:mod:`chunkah.delta.pairing`),
encodes it against that base in every encoding on a process pool, keeps the
smallest, and drops deltas that would not save bytes over the chunks a host would
otherwise fetch for that file.  The kept deltas are concatenated in path order into
the data blob; :mod:`chunkah.delta.index` describes them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chunkah.delta.encode import BSDIFF_MAX, DEFAULT_LEVEL, ENCODING_NAMES, encode_best
from chunkah.delta.index import DeltaOffer
from chunkah.delta.pairing import Pair, pair_files
from chunkah.delta.source import ImageFiles
from chunkah.errors import VerificationError

__all__ = ["DeltaSet", "compute_deltas"]

#: A delta must beat the chunks by at least this much (the bytes its index entry costs).
INDEX_ENTRY_COST = 64
_IN_FLIGHT_BYTES = 256 << 20
_IN_FLIGHT_JOBS_PER_WORKER = 4


@dataclass
class DeltaSet:
    """The kept deltas (offers with offsets into ``data``) and what it took."""

    offers: list[DeltaOffer]
    data: bytes
    stats: dict[str, Any] = field(default_factory=dict)


def _cpu_seconds() -> float:
    """This process's CPU time and its waited-for children's (the zstd programs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _encode_job(old: bytes, new: bytes, level: int, bsdiff_max: int) -> tuple[int, bytes, float]:
    t = _cpu_seconds()
    encoding, delta = encode_best(old, new, level=level, bsdiff_max=bsdiff_max)
    return encoding, delta, _cpu_seconds() - t


def _check(files: ImageFiles, path: bytes, data: bytes, sha: bytes) -> bytes:
    if hashlib.sha256(data).digest() != sha:
        raise VerificationError(f"{path!r}: content does not match its TOC digest")
    return data


def compute_deltas(
    old: ImageFiles,
    new: ImageFiles,
    *,
    workers: int | None = None,
    level: int = DEFAULT_LEVEL,
    bsdiff_max: int = BSDIFF_MAX,
    progress: Callable[[int, int], None] | None = None,
) -> DeltaSet:
    """Deltas for every changed file of ``new`` that has a base in ``old``."""
    started = time.perf_counter()
    pairs = pair_files(old.file_infos(), new.file_infos())
    have = old.chunk_digests()
    costs = {p.new.path: new.chunk_cost(p.new.path, have) for p in pairs}
    # Files whose chunks are all on the host already cost nothing: no delta.
    jobs = [p for p in pairs if costs[p.new.path] > INDEX_ENTRY_COST]
    jobs.sort(key=lambda p: -p.new.size)  # big ones first: the pool ends evenly
    workers = workers or min(2, os.cpu_count() or 1)
    results: dict[bytes, tuple[Pair, int, bytes]] = {}
    cpu = 0.0
    slowest: list[tuple[float, bytes]] = []
    dropped = 0
    done = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict[concurrent.futures.Future[tuple[int, bytes, float]], Pair] = {}
        in_flight = 0

        def collect(block: bool) -> None:
            nonlocal in_flight, cpu, dropped, done
            if not pending:
                return
            finished, _ = concurrent.futures.wait(
                pending,
                return_when=concurrent.futures.FIRST_COMPLETED if block else "ALL_COMPLETED",
            )
            for fut in finished:
                pair = pending.pop(fut)
                in_flight -= pair.new.size + pair.old.size
                encoding, delta, seconds = fut.result()
                cpu += seconds
                slowest.append((seconds, pair.new.path))
                slowest.sort(reverse=True)
                del slowest[5:]
                done += 1
                if len(delta) + INDEX_ENTRY_COST < costs[pair.new.path]:
                    results[pair.new.path] = (pair, encoding, delta)
                else:
                    dropped += 1
                if progress is not None:
                    progress(done, len(jobs))

        for pair in jobs:
            # Bounded by bytes (memory) and by count: wait() walks every pending future,
            # and with thousands of small files queued the main process spent ~55 of
            # its 77 CPU-s on the os pair there (22 CPU-s after).
            while pending and (
                in_flight + pair.new.size + pair.old.size > _IN_FLIGHT_BYTES
                or len(pending) >= _IN_FLIGHT_JOBS_PER_WORKER * workers
            ):
                collect(True)
            old_data = _check(old, pair.old.path, old.read(pair.old.path), pair.old.sha256)
            new_data = _check(new, pair.new.path, new.read(pair.new.path), pair.new.sha256)
            fut = pool.submit(_encode_job, old_data, new_data, level, bsdiff_max)
            pending[fut] = pair
            in_flight += pair.new.size + pair.old.size
        while pending:
            collect(True)
    offers: list[DeltaOffer] = []
    data = bytearray()
    by_how: dict[str, int] = {}
    by_encoding: dict[str, int] = {}
    for path in sorted(results):
        pair, encoding, delta = results[path]
        offers.append(
            DeltaOffer(
                path,
                encoding,
                len(data),
                len(delta),
                pair.old.sha256,
                pair.old.size,
                pair.new.sha256,
                pair.new.size,
                hashlib.sha256(delta).digest(),
            )
        )
        data += delta
        by_how[pair.how] = by_how.get(pair.how, 0) + 1
        by_encoding[ENCODING_NAMES[encoding]] = by_encoding.get(ENCODING_NAMES[encoding], 0) + 1
    kept_cost = sum(costs[o.path] for o in offers)
    stats = {
        "pairs": len(pairs),
        "paired_by": {
            h: sum(1 for p in pairs if p.how == h) for h in ("path", "renamed", "similar")
        },
        "encoded": len(jobs),
        "kept": len(offers),
        "dropped": dropped,
        "kept_by": by_how,
        "encodings": by_encoding,
        "delta_bytes": len(data),
        "chunk_bytes_replaced": round(kept_cost),
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(cpu, 3),
        "slowest": [
            {"path": path.decode(errors="replace"), "cpu_seconds": round(t, 3)}
            for t, path in slowest
        ],
        "workers": workers,
    }
    return DeltaSet(offers, bytes(data), stats)


@dataclass
class DeltaResult:
    """What ``chunkah delta`` made and where it went."""

    from_digest: str
    to_digest: str
    artifact: str
    destination: str
    discoverable_by: str  # "referrers", "tag" or "layout"
    index_bytes: int
    stats: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_digest,
            "to": self.to_digest,
            "artifact": self.artifact,
            "destination": self.destination,
            "discoverable_by": self.discoverable_by,
            "index_bytes": self.index_bytes,
            **self.stats,
        }


def make_delta_artifact(
    from_ref: str,
    to_ref: str,
    dest: str,
    *,
    workers: int | None = None,
    level: int = DEFAULT_LEVEL,
    plain_http: bool = False,
    tls_verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DeltaResult:
    """``chunkah delta FROM TO -o DEST``: FROM/TO are ``oci:DIR[:TAG]`` or ``docker://``;
    DEST is ``docker://HOST/REPO`` (the target's repository) or ``oci:DIR``."""
    import asyncio
    import tempfile
    from pathlib import Path

    from chunkah import oci
    from chunkah.delta.artifact import make_artifact, push_artifact, write_artifact
    from chunkah.delta.source import open_image_files
    from chunkah.errors import InputError

    async def with_client(job: Callable[[Any], Any]) -> Any:
        from chunkah.registry.client import RegistryClient

        async with RegistryClient(plain_http=plain_http, tls_verify=tls_verify) as client:
            return await job(client)

    with tempfile.TemporaryDirectory(prefix="chunkah-delta-") as tmp:

        def local(ref: str, name: str) -> tuple[Path, str | None]:
            if ref.startswith("docker://"):
                from chunkah.registry.transfer import pull_image

                target = f"oci:{tmp}/{name}:image"
                asyncio.run(with_client(lambda c: pull_image(c, ref, target)))
                return Path(tmp) / name, "image"
            parsed = oci.parse_reference(ref)
            if parsed.transport != "oci" or parsed.path is None:
                raise InputError(f"{ref}: deltas are made from oci:DIR[:TAG] or docker:// images")
            return parsed.path, parsed.tag

        old = open_image_files(*local(from_ref, "from"))
        new = open_image_files(*local(to_ref, "to"))
        try:
            delta_set = compute_deltas(old, new, workers=workers, level=level, progress=progress)
        finally:
            old.close()
            new.close()
        subject = new.image.descriptor
        artifact = make_artifact(
            delta_set.offers, delta_set.data, subject=subject, from_digest=old.digest
        )
        if dest.startswith("docker://"):
            from chunkah.registry.reference import parse_registry_reference

            repo = parse_registry_reference(dest)
            how = asyncio.run(with_client(lambda c: push_artifact(c, repo, artifact)))
        else:
            parsed = oci.parse_reference(dest)
            if parsed.transport != "oci" or parsed.path is None:
                raise InputError(f"{dest}: delta artifacts go to docker://HOST/REPO or oci:DIR")
            write_artifact(oci.OciLayout.create(parsed.path), artifact)
            how = "layout"
    return DeltaResult(
        old.digest, new.digest, artifact.digest, dest, how, len(artifact.index), delta_set.stats
    )
