"""Re-claim moved files: an unclaimed file whose digest matches a database entry
that is absent from the tree goes to that entry's component.

Work is bounded: only files whose size could match are hashed (databases that
record no size, like dpkg's md5sums, make every size possible, so files whose
name matches a missing entry's name go first), each file is read once for all
algorithms it needs, and at most ``budget`` bytes are read in total.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from chunkah.owners.model import Claim, Component
from chunkah.tree.model import EntryType, Tree, path_sort_key

__all__ = ["RECLAIM_BUDGET", "ReclaimResult", "reclaim_by_digest"]

RECLAIM_BUDGET = 256 << 20
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ReclaimResult:
    claims: list[Claim]
    hashed_files: int
    hashed_bytes: int
    budget_exhausted: bool


def _basename(p: bytes) -> bytes:
    return p.rpartition(b"/")[2]


def reclaim_by_digest(
    tree: Tree,
    orphans: Iterable[Claim],
    unclaimed: Iterable[bytes],
    *,
    budget: int = RECLAIM_BUDGET,
) -> ReclaimResult:
    """Match ``unclaimed`` regular files against the digests of ``orphans``."""
    by_digest: dict[tuple[str, str], Component] = {}
    sizes: dict[str, set[int] | None] = {}
    names: set[bytes] = set()
    for o in orphans:
        if o.digest is None or not o.digest.hex:
            continue
        key = (o.digest.algorithm, o.digest.hex)
        have = by_digest.get(key)
        if have is None or o.component.name < have.name:
            by_digest[key] = o.component
        algo = o.digest.algorithm
        if o.size is None:
            sizes[algo] = None
        elif algo not in sizes:
            sizes[algo] = {o.size}
        else:
            s = sizes[algo]
            if s is not None:
                s.add(o.size)
        names.add(_basename(o.db_path or o.path))
    if not by_digest:
        return ReclaimResult([], 0, 0, False)
    candidates: list[tuple[int, bytes, bytes, list[str]]] = []
    for p in unclaimed:
        e = tree[p]
        if e.type is not EntryType.FILE or e.size == 0 or e.content is None:
            continue
        algos = [a for a, s in sorted(sizes.items()) if s is None or e.size in s]
        if not algos:
            continue
        exact = any(sizes[a] is not None for a in algos) or _basename(p) in names
        candidates.append((0 if exact else 1, path_sort_key(p), p, algos))
    candidates.sort()
    claims = []
    hashed_files = hashed_bytes = 0
    exhausted = False
    for _, _, p, algos in candidates:
        e = tree[p]
        if hashed_bytes + e.size > budget:
            exhausted = True
            continue
        hashers = {a: hashlib.new(a) for a in algos}
        assert e.content is not None
        try:
            with e.content.open() as f:
                while block := f.read(_BLOCK):
                    for hs in hashers.values():
                        hs.update(block)
        except OSError:
            continue  # an unreadable file is the tree reader's business, not ours
        hashed_files += 1
        hashed_bytes += e.size
        best: Component | None = None
        for a, hs in hashers.items():
            comp = by_digest.get((a, hs.hexdigest()))
            if comp is not None and (best is None or comp.name < best.name):
                best = comp
        if best is not None:
            claims.append(Claim(path=p, component=best, size=e.size, db_path=p))
    return ReclaimResult(claims, hashed_files, hashed_bytes, exhausted)
