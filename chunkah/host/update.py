"""`chunkah plan` and `chunkah update`: the host side of the pipeline, end to end.

registry -> manifest + TOCs -> plan (pure) -> fetch (verified chunks into the cache)
-> assemble (staging) -> diff_id check -> atomic deploy.  Everything before the
deploy only writes into the staging area and the content-addressed cache, so an
interrupted update leaves the current deployment untouched and a re-run fetches
only the chunks that are still missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chunkah import oci
from chunkah.compression import open_decompressed
from chunkah.errors import ChunkahError, InputError, VerificationError
from chunkah.format import zstd_chunked
from chunkah.format.toc import TocError, decode_toc_frame
from chunkah.format.writer import ANNOTATION_TOC_DIGEST, ANNOTATION_TOC_POSITION
from chunkah.format.zstd_chunked import is_zstd_chunked
from chunkah.host.assemble import assemble, verify_diff_ids
from chunkah.host.deploy import crash_point
from chunkah.host.fetch import FetchStats, fetch_plan
from chunkah.host.index import ChunkRef, IndexEntry, LayerIndex, index_from_toc
from chunkah.host.plan import Inventory, UpdatePlan, inventory_from_indexes, plan_update
from chunkah.host.store import HostStore
from chunkah.packing import ANNOTATION_COMPONENTS
from chunkah.registry.client import RegistryClient, RemoteImage
from chunkah.registry.fetcher import RangeFetcher
from chunkah.registry.reference import RegistryReference, parse_registry_reference
from chunkah.registry.retry import Timeouts

if TYPE_CHECKING:  # imported when an update looks for deltas
    from chunkah.delta.artifact import FoundDeltas
from chunkah.tree import Entry, EntryType
from chunkah.tree.tar_reader import TAR_TYPES, header_entry, member_path

__all__ = ["UpdateOptions", "UpdateResult", "run_plan", "run_update"]

MAX_TOC_FRAME = 256 << 20
PLAIN_LAYER_MAX_RATIO = 1000
PLAIN_LAYER_MIN_LIMIT = 64 << 20


@dataclass(frozen=True)
class UpdateOptions:
    plain_http: bool = False
    tls_verify: bool = True
    verify_diff_ids: bool = True
    # fsync every file and directory as it is assembled; off by default because the
    # commit syncs the whole filesystem once (syncfs) before the switch.
    fsync: bool = False
    merge_gap: int = 4096
    timeouts: Timeouts | None = None  # registry timeouts (default: the client's)
    deltas: bool = True  # look for a delta artifact for (current -> target), docs/delta.md


@dataclass
class UpdateResult:
    reference: str
    digest: str
    plan: dict[str, Any]
    fetched_bytes: int = 0
    requests: int = 0
    deployed: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    unchanged: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "unchanged": self.unchanged,
            "deployment": self.deployed,
            "fetched_bytes": self.fetched_bytes,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "plan": self.plan,
        }


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _components(desc: oci.Descriptor) -> tuple[str, ...]:
    raw = desc.annotations.get(ANNOTATION_COMPONENTS)
    if not raw:
        return ()
    try:
        return tuple(sorted(json.loads(raw)))
    except (ValueError, TypeError):
        return ()


def _toc_position(desc: oci.Descriptor) -> tuple[int, int, int, str] | None:
    pos = desc.annotations.get(ANNOTATION_TOC_POSITION)
    digest = desc.annotations.get(ANNOTATION_TOC_DIGEST)
    if pos is None or digest is None:
        return None
    try:
        offset, length, body = (int(x) for x in pos.split(":"))
    except ValueError:
        raise TocError(
            f"layer {desc.digest}: malformed {ANNOTATION_TOC_POSITION} {pos!r}"
        ) from None
    if offset < 0 or length <= 8 or length > MAX_TOC_FRAME or offset + length != desc.size:
        raise TocError(
            f"layer {desc.digest}: TOC position {pos!r} does not fit a {desc.size}-byte blob"
        )
    return offset, length, body, digest


async def _layer_index(
    client: RegistryClient,
    ref: RegistryReference,
    desc: oci.Descriptor,
    diff_id: str,
    store: HostStore,
) -> LayerIndex:
    """The index of one target layer: from the TOC cache, a fetched TOC, or 'whole'."""
    cached = store.load_index(desc.digest)
    if cached is not None:
        return cached
    components = _components(desc)
    if is_zstd_chunked(desc.annotations):
        return await _zstd_chunked_index(client, ref, desc, diff_id, store, components)
    position = _toc_position(desc)
    if position is None:
        return LayerIndex(
            desc.digest, diff_id, desc.size, desc.media_type, "whole", [], components=components
        )
    offset, length, body_size, toc_digest = position
    frame = store.stored_toc(toc_digest)
    fetched = 0
    if frame is None:
        async with RangeFetcher(client, ref, desc.digest, desc.size) as fetcher:
            (frame,) = await fetcher.fetch_all([(offset, length)])
        fetched = length
    toc = decode_toc_frame(
        frame, expected_digest=toc_digest, body_size=body_size, toc_offset=offset
    )
    if toc.diff_id_digest != diff_id:
        raise VerificationError(
            f"layer {desc.digest}: its TOC describes a tar with diff_id {toc.diff_id_digest}, "
            f"the config says {diff_id}"
        )
    if toc.compressed_size() > offset:
        raise TocError(f"layer {desc.digest}: TOC frames run past the TOC")
    store.save_toc(desc.digest, frame, body_size)
    return index_from_toc(
        toc, digest=desc.digest, diff_id=diff_id, blob_size=desc.size, media_type=desc.media_type,
        toc_bytes=fetched, components=components,
    )  # fmt: skip


async def _zstd_chunked_index(
    client: RegistryClient,
    ref: RegistryReference,
    desc: oci.Descriptor,
    diff_id: str,
    store: HostStore,
    components: tuple[str, ...],
) -> LayerIndex:
    """A layer made by podman/skopeo with zstd:chunked: its TOC, converted to ours."""
    location = zstd_chunked.parse_annotations(desc.annotations, blob_size=desc.size)
    span = location.manifest
    async with RangeFetcher(client, ref, desc.digest, desc.size) as fetcher:
        (compressed,) = await fetcher.fetch_all([(span.offset, span.length)])
    layer = zstd_chunked.decode_manifest(compressed, location, diff_id=diff_id)
    index = index_from_toc(
        layer.toc, digest=desc.digest, diff_id=diff_id, blob_size=desc.size, media_type=desc.media_type,
        kind="zstd:chunked", toc_bytes=span.length, components=components,
        zero_chunks=layer.zero_chunks.tolist(),
    )  # fmt: skip
    # Kept as a listing: the host only needs its files' digests once it is deployed.
    store.save_listing(desc.digest, index)
    return index


def _index_entry(e: Entry, kind: str, **kw: Any) -> IndexEntry:
    return IndexEntry(
        path=e.path, type=kind, mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime,
        size=kw.pop("size", 0), xattrs=e.xattrs, rdev=e.rdev, **kw,
    )  # fmt: skip


def _list_whole_layer(
    blob: Path, desc: oci.Descriptor, diff_id: str, store: HostStore
) -> LayerIndex:
    """Read a downloaded (digest-verified) plain layer: entries + file contents into the cache."""
    entries: list[IndexEntry] = []
    hasher = hashlib.sha256()

    class _Hashing(io.RawIOBase):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = int(self.inner.readinto(b))
            hasher.update(memoryview(b)[:n])
            return n

    with blob.open("rb") as raw:
        # Content reaches the cache before the diff_id can be checked: bound what a
        # decompression bomb can write (1000:1, at least PLAIN_LAYER_MIN_LIMIT).
        limit = max(PLAIN_LAYER_MIN_LIMIT, PLAIN_LAYER_MAX_RATIO * desc.size)
        plain = open_decompressed(raw, desc.media_type, limit=limit)
        stream = io.BufferedReader(_Hashing(plain), 1 << 20)
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except tarfile.TarError as exc:
            raise InputError(f"layer {desc.digest}: not a tar stream ({exc})") from None
        with tf:
            for ti in tf:
                tf.members.clear()  # type: ignore[attr-defined]  # keep no TarInfo
                # The tree reader's rules: '..' refused, xattr policy, mode bits.
                path = member_path(ti.name)
                if ti.islnk():
                    e = header_entry(ti, path, EntryType.FILE)
                    entries.append(_index_entry(e, "hardlink", link=member_path(ti.linkname)))
                    continue
                etype = TAR_TYPES.get(ti.type)
                if etype is None:
                    raise InputError(
                        f"layer {desc.digest}: {ti.name!r} has unsupported type {ti.type!r}"
                    )
                e = header_entry(ti, path, etype)
                if etype is EntryType.FILE:
                    f = tf.extractfile(ti)
                    assert f is not None
                    digest, size = store.put_stream(f, ti.size)
                    chunk = (ChunkRef(digest, size, -1),) if size else ()
                    entries.append(_index_entry(e, "file", size=size, sha256=digest, chunks=chunk))
                else:
                    entries.append(_index_entry(e, etype.value, link=e.link_target))
        while stream.read(1 << 20):
            pass
    if "sha256:" + hasher.hexdigest() != diff_id:
        raise VerificationError(
            f"layer {desc.digest}: uncompressed content does not match diff_id {diff_id}"
        )
    index = LayerIndex(
        desc.digest, diff_id, desc.size, desc.media_type, "whole", entries, toc_bytes=0
    )
    store.save_listing(desc.digest, index)
    return index


async def _prepare(
    client: RegistryClient, ref: RegistryReference, store: HostStore
) -> tuple[RemoteImage, list[LayerIndex]]:
    image = await client.resolve(ref)
    if image.config is None:
        raise InputError(f"{ref}: is an artifact, not a container image")
    diff_ids = image.config.diff_ids
    if len(diff_ids) != len(image.manifest.layers):
        raise InputError(
            f"{ref}: the config lists {len(diff_ids)} diff_ids for "
            f"{len(image.manifest.layers)} layers"
        )
    for desc in image.manifest.layers:
        if desc.media_type not in oci.LAYER_TYPES:
            raise InputError(
                f"{ref}: layer {desc.digest} has media type {desc.media_type!r}, "
                "not a filesystem layer chunkah can apply"
            )
    indexes = await asyncio.gather(
        *(
            _layer_index(client, image.reference, desc, diff_ids[i], store)
            for i, desc in enumerate(image.manifest.layers)
        )
    )
    return image, list(indexes)


def _current_inventory(store: HostStore) -> tuple[Inventory, Path | None]:
    current = store.current_indexes()
    if current is None:
        return Inventory(cached=store.cached_set()), None
    indexes, root = current
    return inventory_from_indexes(indexes, cached=store.cached_set()), root


@dataclass
class _Deltas:
    """What delta discovery found (or why not): the artifact, its offers, the cost."""

    found: FoundDeltas | None = None
    error: str | None = None
    index_bytes: int = 0  # wire bytes discovery cost (probes, manifests, the index)

    def summary(self) -> dict[str, Any]:
        return {
            "artifact": self.found.artifact if self.found is not None else None,
            "offered": len(self.found.offers) if self.found is not None else 0,
            "index_bytes": self.index_bytes,
            "error": self.error,
        }


async def _discover_deltas(
    client: RegistryClient, image: RemoteImage, current: str | None, options: UpdateOptions
) -> _Deltas:
    """The delta artifact for (current -> target), if the registry has one.  Any
    failure only means no deltas: the update goes on with chunks."""
    out = _Deltas()
    if not options.deltas or current is None or current == image.digest:
        return out
    from chunkah.delta.artifact import find_deltas

    before = client.stats.bytes_received
    try:
        out.found = await find_deltas(client, image.reference, image.digest, current)
    except ChunkahError as exc:
        out.error = str(exc)
    out.index_bytes = client.stats.bytes_received - before
    return out


async def _plan(
    ref_text: str, store: HostStore, options: UpdateOptions, *, download_whole: bool
) -> tuple[RegistryClient, RemoteImage, list[LayerIndex], UpdatePlan, Path | None, _Deltas]:
    ref = parse_registry_reference(ref_text)
    client = RegistryClient(
        plain_http=options.plain_http, tls_verify=options.tls_verify, timeouts=options.timeouts
    )
    await client.__aenter__()
    try:
        image, indexes = await _prepare(client, ref, store)
        inventory, current_root = _current_inventory(store)
        if download_whole:
            for i, ix in enumerate(indexes):
                if ix.kind == "whole" and not ix.entries and ix.digest not in inventory.layers:
                    desc = image.manifest.layers[i]
                    with tempfile.NamedTemporaryFile(
                        dir=store.staging_root, prefix=".layer-"
                    ) as tmp:
                        await client.download_blob(
                            image.reference, desc.digest, tmp, size=desc.size
                        )
                        tmp.flush()
                        indexes[i] = _list_whole_layer(Path(tmp.name), desc, ix.diff_id, store)
            inventory, current_root = _current_inventory(store)
        deltas = await _discover_deltas(
            client, image, store.current_digest() if current_root is not None else None, options
        )
        offers = None
        if deltas.found is not None:
            from chunkah.delta.index import offers_by_target

            offers = offers_by_target(deltas.found.offers)
        plan = plan_update(indexes, inventory, merge_gap=options.merge_gap, deltas=offers)
        return client, image, indexes, plan, current_root, deltas
    except BaseException:
        await client.__aexit__(None, None, None)
        raise


def _summary(plan: UpdatePlan, indexes: list[LayerIndex], deltas: _Deltas) -> dict[str, Any]:
    summary = plan.summary(indexes)
    summary["deltas"] = deltas.summary()
    if deltas.found is not None:  # the artifact's manifest and index (a miss costs ~2 small 404s)
        summary["expected_bytes"] += deltas.index_bytes
    return summary


def run_plan(ref_text: str, store: HostStore, options: UpdateOptions) -> UpdateResult:
    """What an update would do and cost, without downloading any content."""

    async def go() -> UpdateResult:
        client, image, indexes, plan, _root, deltas = await _plan(
            ref_text, store, options, download_whole=False
        )
        try:
            summary = _summary(plan, indexes, deltas)
            return UpdateResult(
                ref_text, image.digest, summary, requests=client.stats.requests,
                fetched_bytes=client.stats.bytes_received,
                unchanged=store.current_digest() == image.digest,
            )  # fmt: skip
        finally:
            await client.__aexit__(None, None, None)

    return asyncio.run(go())


def run_update(
    ref_text: str, store: HostStore, options: UpdateOptions, *, progress: Progress | None = None
) -> UpdateResult:
    """Fetch, verify, assemble and deploy ``ref_text`` on the sysroot behind ``store``."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    async def go() -> UpdateResult:
        t = time.perf_counter()
        client, image, indexes, plan, current_root, deltas = await _plan(
            ref_text, store, options, download_whole=True
        )
        phases["plan"] = time.perf_counter() - t
        try:
            summary = _summary(plan, indexes, deltas)
            result = UpdateResult(ref_text, image.digest, summary)
            if store.current_digest() == image.digest:
                result.unchanged = True
                result.fetched_bytes = client.stats.bytes_received
                result.requests = client.stats.requests
                return result
            if plan.deltas and deltas.found is not None and current_root is not None:
                t = time.perf_counter()
                from chunkah.delta.apply import fetch_and_apply

                dstats = await fetch_and_apply(
                    client, image.reference, deltas.found.data, plan, current_root, store,
                    spool_dir=str(store.staging_root),
                )  # fmt: skip
                summary["deltas"].update(dstats.to_json())
                phases["deltas"] = time.perf_counter() - t
                # Second pass: rebuilt files are in the cache now; the rest come as chunks.
                inventory, _root = _current_inventory(store)
                plan = plan_update(indexes, inventory, merge_gap=options.merge_gap)
                summary["fallback_fetch_bytes"] = plan.fetch_bytes
            t = time.perf_counter()
            total = plan.fetch_bytes

            def on_fetch(nbytes: int, _chunks: int, done: list[int] = [0]) -> None:  # noqa: B006
                done[0] += nbytes
                if progress is not None:
                    progress("fetch", done[0], total)

            stats: FetchStats = await fetch_plan(
                client, image.reference, indexes, plan, store, progress=on_fetch,
                spool_dir=str(store.staging_root),
            )  # fmt: skip
            phases["fetch"] = time.perf_counter() - t
            result.fetched_bytes = client.stats.bytes_received
            result.requests = client.stats.requests
            summary["fetched_chunks"] = stats.chunks
        finally:
            await client.__aexit__(None, None, None)
        t = time.perf_counter()
        with store.stage() as staging:
            assemble(plan, staging, current=current_root, read_chunk=store.read, fsync=options.fsync,
                     link=store.link)  # fmt: skip
            phases["assemble"] = time.perf_counter() - t
            crash_point("assembled")
            if options.verify_diff_ids:
                t = time.perf_counter()
                changed = [i for i in range(len(indexes)) if i not in plan.unchanged_layers]
                summary["diff_id_bytes"] = verify_diff_ids(indexes, staging, changed)
                phases["verify"] = time.perf_counter() - t
            t = time.perf_counter()
            assert image.config is not None
            result.deployed = store.deploy(
                staging,
                reference=ref_text,
                manifest_digest=image.digest,
                config_digest=image.manifest.config.digest,
                layers=[(d.digest, image.config.diff_ids[i], d.media_type, d.size)
                        for i, d in enumerate(image.manifest.layers)],
                extra={"fetched_bytes": result.fetched_bytes, "requests": result.requests},
            )  # fmt: skip
            phases["deploy"] = time.perf_counter() - t
        return result

    result = asyncio.run(go())
    result.seconds = time.perf_counter() - started
    result.phases = phases
    return result
