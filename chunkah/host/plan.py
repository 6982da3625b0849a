"""The update planner: a pure function of the target's layer indexes and what the
host already has.  No I/O, no network: it says, for every file of the new tree,
whether it is hardlinked or copied from the current deployment or assembled from
chunks (local, cached or fetched), which frames to fetch in which coalesced byte
ranges, and how many bytes that costs.  The fetcher and assembler only execute it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chunkah.delta.index import DeltaOffer
from chunkah.errors import VerificationError
from chunkah.host.index import IndexEntry, LayerIndex
from chunkah.tree.model import path_sort_key

__all__ = [
    "ChunkStep",
    "DeltaRange",
    "FetchRange",
    "FileStep",
    "Inventory",
    "LocalChunk",
    "PlanError",
    "UpdatePlan",
    "flatten",
    "inventory_from_indexes",
    "plan_update",
]

DEFAULT_MERGE_GAP = 4096  # fetch a gap between two needed frames rather than split the range
# The only device nodes a deployment may carry: the kernel's pseudo devices (null, zero,
# full, random, urandom, tty, console, ptmx).  Any other node (a disk, /dev/mem, a
# serial line) would give whoever can open it inside the deployment the host's hardware.
SAFE_DEVICES = frozenset(
    ("char", major, minor)
    for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))
)
_WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"


class PlanError(VerificationError):
    """The target image cannot be turned into a tree safely (a lying or hostile index)."""


@dataclass(frozen=True, slots=True)
class LocalChunk:
    path: bytes  # relative to the current deployment's root
    offset: int
    size: int


@dataclass(frozen=True)
class Inventory:
    """What the host has: files and chunks of the current deployment, the chunk cache."""

    # sha256 -> the local files with that content (distinct inodes: hardlinks are
    # "hardlink" entries, never files)
    files: dict[bytes, tuple[IndexEntry, ...]] = field(default_factory=dict)
    chunks: dict[bytes, LocalChunk] = field(default_factory=dict)
    cached: Container[bytes] = frozenset()
    layers: frozenset[str] = frozenset()  # layer digests of the current image

    @property
    def empty(self) -> bool:
        return not self.files and not self.cached


@dataclass(frozen=True, slots=True)
class ChunkStep:
    sha256: bytes
    size: int
    source: str  # "cache", "local", "fetch" or "zeros" (a hole: written, never fetched)
    local: LocalChunk | None = None
    layer: int = -1
    frame: int = -1
    offset_in_frame: int = 0


@dataclass(frozen=True, slots=True)
class FileStep:
    entry: IndexEntry
    layer: int
    action: str  # "link" (hardlink a local file), "copy" (local file, new metadata),
    # "build" (from chunks), "delta" (a delta against the local file), "empty"
    local: bytes = b""  # path in the current deployment for link/copy/delta
    chunks: tuple[ChunkStep, ...] = ()
    delta: DeltaOffer | None = None


@dataclass(frozen=True, slots=True)
class FetchRange:
    layer: int
    offset: int
    length: int
    frames: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeltaRange:
    """Bytes ``offset .. offset+length`` of the delta data blob, holding ``offers``."""

    offset: int
    length: int
    offers: tuple[DeltaOffer, ...]


@dataclass(frozen=True)
class UpdatePlan:
    entries: tuple[tuple[int, IndexEntry], ...]  # (layer, entry) of the new tree, canonical order
    files: tuple[FileStep, ...]
    fetch: tuple[FetchRange, ...]
    whole_layers: tuple[int, ...]  # downloaded whole (no index)
    unchanged_layers: tuple[int, ...]
    layers: tuple[dict[str, Any], ...]  # per-layer summary
    deltas: tuple[DeltaRange, ...] = ()  # ranges of the delta data blob to fetch

    @property
    def fetch_bytes(self) -> int:
        return sum(r.length for r in self.fetch)

    @property
    def delta_bytes(self) -> int:
        return sum(r.length for r in self.deltas)

    def summary(self, indexes: Sequence[LayerIndex]) -> dict[str, Any]:
        actions: dict[str, int] = defaultdict(int)
        action_bytes: dict[str, int] = defaultdict(int)
        chunk_sources: dict[str, int] = defaultdict(int)
        chunk_bytes: dict[str, int] = defaultdict(int)
        for f in self.files:
            actions[f.action] += 1
            action_bytes[f.action] += f.entry.size
            for c in f.chunks:
                chunk_sources[c.source] += 1
                chunk_bytes[c.source] += c.size
        toc_bytes = sum(
            indexes[i].toc_bytes for i in range(len(indexes)) if i not in self.unchanged_layers
        )
        whole = sum(indexes[i].blob_size for i in self.whole_layers)
        by_delta = [f for f in self.files if f.action == "delta" and f.delta is not None]
        return {
            "entries": len(self.entries),
            "files": dict(actions),
            "file_bytes": dict(action_bytes),
            "chunks": dict(chunk_sources),
            "chunk_bytes": dict(chunk_bytes),
            "ranges": len(self.fetch),
            "fetch_bytes": self.fetch_bytes,
            "toc_bytes": toc_bytes,
            "whole_layer_bytes": whole,
            "delta_bytes": self.delta_bytes,
            "delta_ranges": len(self.deltas),
            "delta_files": [
                {
                    "path": f.entry.path.decode("utf-8", "surrogateescape"),
                    "base": f.local.decode("utf-8", "surrogateescape"),
                    "encoding": f.delta.encoding,
                    "delta_bytes": f.delta.size,
                    "size": f.entry.size,
                }
                for f in by_delta
                if f.delta is not None
            ],
            "expected_bytes": self.fetch_bytes + toc_bytes + whole + self.delta_bytes,
            "full_pull_bytes": sum(ix.blob_size for ix in indexes),
            "layers": list(self.layers),
        }


def _parent(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""


def flatten(indexes: Sequence[LayerIndex]) -> dict[bytes, tuple[int, IndexEntry]]:
    """Apply layers in order, with OCI whiteouts and opaque directories.

    Returns path -> (layer, entry) of the final tree.  Refuses trees where an
    entry's parent is not a directory (a symlink as parent would let a write
    escape the staging directory) and hardlinks that do not point at a file.
    """
    final: dict[bytes, tuple[int, IndexEntry]] = {}
    children: dict[bytes, set[bytes]] = defaultdict(set)

    def drop(path: bytes) -> None:
        stack = [path]
        while stack:
            p = stack.pop()
            if final.pop(p, None) is not None:
                kids = children.pop(p, set())
                stack.extend(kids)
                children[_parent(p)].discard(p)

    for li, index in enumerate(indexes):
        for entry in index:
            path = entry.path
            base = path.rpartition(b"/")[2]
            if base.startswith(_WHITEOUT):
                parent = _parent(path)
                if base == _OPAQUE:
                    for kid in list(children.get(parent, ())):
                        drop(kid)
                else:
                    drop((parent + b"/" if parent else b"") + base[len(_WHITEOUT) :])
                continue
            old = final.get(path)
            if old is not None and (old[1].type == "dir") != (entry.type == "dir"):
                drop(path)
            final[path] = (li, entry)
            if path:
                children[_parent(path)].add(path)
    if final and b"" not in final:
        # Layers written by other tools often have no "./" member: the root is implied.
        final[b""] = (0, IndexEntry(b"", "dir", 0o755, 0, 0, 0, 0))
    for path, (_li, entry) in final.items():
        if entry.type in ("char", "block") and (entry.type, *entry.rdev) not in SAFE_DEVICES:
            raise PlanError(
                f"{path!r}: {entry.type} device {entry.rdev[0]}:{entry.rdev[1]} would give the "
                "deployment access to the host's hardware; only the pseudo devices null, zero, "
                "full, random, urandom, tty, console and ptmx are deployed"
            )
        if path:
            above = final.get(_parent(path))
            if above is None:
                raise PlanError(f"{path!r}: its parent directory is not in the image")
            if above[1].type != "dir":
                raise PlanError(f"{path!r}: its parent is a {above[1].type}, not a directory")
        if entry.type == "hardlink":
            target = final.get(entry.link)
            if target is None or target[1].type != "file":
                raise PlanError(
                    f"{path!r}: hardlink to {entry.link!r}, which is not a regular file"
                )
    return final


def inventory_from_indexes(
    current: Sequence[LayerIndex], cached: Container[bytes] = frozenset()
) -> Inventory:
    """The inventory of a deployment made from ``current`` (its content is trusted:
    deployments are immutable and were verified when they were made)."""
    files: dict[bytes, list[IndexEntry]] = defaultdict(list)
    chunks: dict[bytes, LocalChunk] = {}
    for _li, entry in flatten(current).values():
        if entry.type != "file" or not entry.sha256:
            continue
        files[entry.sha256].append(entry)
        offset = 0
        for c in entry.chunks:
            chunks.setdefault(c.sha256, LocalChunk(entry.path, offset, c.size))
            offset += c.size
    return Inventory(
        {k: tuple(v) for k, v in files.items()},
        chunks,
        cached,
        frozenset(ix.digest for ix in current),
    )


def _coalesce(layer: int, frames: list[tuple[int, int, int]], merge_gap: int) -> list[FetchRange]:
    """frames: (offset, size, index) sorted by offset -> ranges with small gaps merged."""
    out: list[FetchRange] = []
    start = end = -1
    members: list[int] = []
    for offset, size, index in frames:
        if members and offset - end <= merge_gap:
            end = max(end, offset + size)
            members.append(index)
            continue
        if members:
            out.append(FetchRange(layer, start, end - start, tuple(members)))
        start, end, members = offset, offset + size, [index]
    if members:
        out.append(FetchRange(layer, start, end - start, tuple(members)))
    return out


def _coalesce_deltas(offers: Sequence[DeltaOffer], merge_gap: int) -> list[DeltaRange]:
    out: list[DeltaRange] = []
    members: list[DeltaOffer] = []
    start = end = -1
    for o in sorted({o.offset: o for o in offers}.values(), key=lambda o: o.offset):
        if members and o.offset - end <= merge_gap:
            end = max(end, o.offset + o.size)
            members.append(o)
            continue
        if members:
            out.append(DeltaRange(start, end - start, tuple(members)))
        start, end, members = o.offset, o.offset + o.size, [o]
    if members:
        out.append(DeltaRange(start, end - start, tuple(members)))
    return out


def plan_update(
    indexes: Sequence[LayerIndex],
    inventory: Inventory,
    *,
    merge_gap: int = DEFAULT_MERGE_GAP,
    deltas: Mapping[bytes, Sequence[DeltaOffer]] | None = None,
) -> UpdatePlan:
    """Plan how to make the tree of ``indexes`` from ``inventory`` plus fetched frames.

    ``deltas`` (target sha256 -> offers, docs/delta.md) lets a file come as a delta
    against a local file instead of its chunks, when the delta is smaller than the
    compressed bytes its missing chunks would cost.  A file whose whole content is
    in the cache (a delta applied by an earlier pass) is built from there.
    """
    final = flatten(indexes)
    order = sorted(final, key=path_sort_key)
    entries = tuple(final[p] for p in order)
    unchanged = tuple(i for i, ix in enumerate(indexes) if ix.digest in inventory.layers)
    whole = tuple(
        i
        for i, ix in enumerate(indexes)
        if ix.kind == "whole" and ix.digest not in inventory.layers
    )
    need_frames: dict[int, set[int]] = defaultdict(set)
    files: list[FileStep] = []
    per_layer: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    linked: set[bytes] = set()
    delta_offers: list[DeltaOffer] = []
    for li, entry in entries:
        if entry.type != "file":
            continue
        stats = per_layer[li]
        stats["files"] += 1
        if entry.size == 0:
            files.append(FileStep(entry, li, "empty"))
            continue
        candidates = inventory.files.get(entry.sha256)
        if candidates:
            # A local inode may back one new path only, or the new tree would gain
            # hardlink sets the image does not have.  Prefer the file at the same path.
            same = [c for c in candidates if c.same_metadata(entry) and c.path not in linked]
            same.sort(key=lambda c: c.path != entry.path)
            if same:
                linked.add(same[0].path)
                files.append(FileStep(entry, li, "link", local=same[0].path))
                stats["link_bytes"] += entry.size
            else:
                files.append(FileStep(entry, li, "copy", local=candidates[0].path))
                stats["copy_bytes"] += entry.size
            continue
        if len(entry.chunks) != 1 and entry.sha256 in inventory.cached:
            files.append(
                FileStep(entry, li, "build", chunks=(ChunkStep(entry.sha256, entry.size, "cache"),))
            )
            stats["cache_bytes"] += entry.size
            continue
        if not entry.chunks:
            raise PlanError(f"{entry.path!r}: {entry.size} bytes but no chunks and no local copy")
        steps = []
        total = 0
        frames_here: list[int] = []
        cost = 0.0
        fetch_bytes = 0
        for c in entry.chunks:
            total += c.size
            if c.sha256 in inventory.cached:
                steps.append(ChunkStep(c.sha256, c.size, "cache"))
                stats["cache_bytes"] += c.size
            elif c.sha256 in inventory.chunks:
                steps.append(ChunkStep(c.sha256, c.size, "local", local=inventory.chunks[c.sha256]))
                stats["local_chunk_bytes"] += c.size
            elif c.frame == -2:
                steps.append(ChunkStep(c.sha256, c.size, "zeros"))
                stats["zero_bytes"] += c.size
            elif c.frame >= 0:
                steps.append(
                    ChunkStep(
                        c.sha256,
                        c.size,
                        "fetch",
                        layer=li,
                        frame=c.frame,
                        offset_in_frame=c.offset_in_frame,
                    )
                )
                frames_here.append(c.frame)
                fetch_bytes += c.size
                frame_ref = indexes[li].frames[c.frame]
                cost += frame_ref.size * c.size / max(1, frame_ref.usize)
            else:
                raise PlanError(
                    f"{entry.path!r}: chunk {c.sha256.hex()[:12]} is not fetchable and not local"
                )
        if total != entry.size:
            raise PlanError(
                f"{entry.path!r}: chunks add up to {total} bytes, the entry says {entry.size}"
            )
        offer = _usable_delta(entry, deltas, inventory) if frames_here and deltas else None
        if offer is not None and offer.size < cost:
            base = inventory.files[offer.from_sha256][0].path
            files.append(FileStep(entry, li, "delta", local=base, delta=offer))
            delta_offers.append(offer)
            stats["delta_bytes"] += offer.size
            continue
        need_frames[li].update(frames_here)
        stats["fetch_chunk_bytes"] += fetch_bytes
        files.append(FileStep(entry, li, "build", chunks=tuple(steps)))
    fetch: list[FetchRange] = []
    for li in sorted(need_frames):
        frames = indexes[li].frames
        wanted = sorted((frames[f].offset, frames[f].size, f) for f in need_frames[li])
        ranges = _coalesce(li, wanted, merge_gap)
        per_layer[li]["fetch_bytes"] = sum(r.length for r in ranges)
        per_layer[li]["ranges"] = len(ranges)
        fetch.extend(ranges)
    layers = []
    for i, ix in enumerate(indexes):
        row: dict[str, Any] = {
            "index": i,
            "digest": ix.digest,
            "kind": ix.kind,
            "components": list(ix.components),
            "unchanged": i in unchanged,
            "whole_download": i in whole,
            "toc_bytes": 0 if i in unchanged else ix.toc_bytes,
        }
        row.update(per_layer.get(i, {}))
        layers.append(row)
    return UpdatePlan(
        entries, tuple(files), tuple(fetch), whole, unchanged, tuple(layers),
        tuple(_coalesce_deltas(delta_offers, merge_gap)),
    )  # fmt: skip


def _usable_delta(
    entry: IndexEntry, deltas: Mapping[bytes, Sequence[DeltaOffer]], inventory: Inventory
) -> DeltaOffer | None:
    """The smallest offer for this content whose base the host has."""
    usable = [
        o
        for o in deltas.get(entry.sha256, ())
        if o.to_size == entry.size and o.from_sha256 in inventory.files
    ]
    return min(usable, key=lambda o: (o.size, o.offset), default=None)
