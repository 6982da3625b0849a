"""Decide one component for every path of a tree.

Precedence, highest first (a higher tier always wins; inside a tier the
component whose name sorts first wins, so the result does not depend on the
order sources run in):

0. ``user.component`` xattrs: the image author's explicit word.
1. package databases: dpkg, rpm, alpm, apk.
2. Python ``RECORD`` files.
3. byte-compiled caches: ``D/__pycache__/N.*.pyc`` follows ``D/N.py``.
4. moved files re-claimed by digest.
5. big files (>= 1 MiB), each its own component.
6. ``chunkah/unclaimed``.

Hardlinked paths always end up in one component: the one the best-ranked
member got.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chunkah.owners.alpm import AlpmSource
from chunkah.owners.apk import ApkSource
from chunkah.owners.bigfiles import BIG_FILE_SIZE, claim_big_files
from chunkah.owners.canon import PathCanonicalizer, db_path_key
from chunkah.owners.dpkg import DpkgSource
from chunkah.owners.model import UNCLAIMED, XATTR_KIND, Claim, Component
from chunkah.owners.python_dist import PythonDistSource
from chunkah.owners.reclaim import RECLAIM_BUDGET, reclaim_by_digest
from chunkah.owners.rpm import RpmSource
from chunkah.owners.source import OwnershipSource
from chunkah.owners.xattr import XattrSource
from chunkah.tree.model import EntryType, Tree, path_sort_key

__all__ = [
    "PACKAGE_SOURCES",
    "TIER_BIGFILE",
    "TIER_PACKAGE",
    "TIER_PYC",
    "TIER_PYTHON",
    "TIER_RECLAIM",
    "TIER_XATTR",
    "Ownership",
    "SourceStats",
    "assign_components",
]

TIER_XATTR, TIER_PACKAGE, TIER_PYTHON, TIER_PYC, TIER_RECLAIM, TIER_BIGFILE = range(6)
_TIER_UNCLAIMED = 99

PACKAGE_SOURCES: tuple[OwnershipSource, ...] = (
    DpkgSource(),
    RpmSource(),
    AlpmSource(),
    ApkSource(),
)


@dataclass
class SourceStats:
    """What one source contributed; ``canonicalised`` counts database paths
    whose parent directories went through a symlink of the tree."""

    claims: int = 0
    present: int = 0
    absent: int = 0
    canonicalised: int = 0
    won: int = 0  # paths this source ended up owning


@dataclass
class Ownership:
    """The component of every path of a tree, and per-component totals.

    Built by :func:`assign_components`. Every path of the tree has exactly one
    component (directories included; a directory several packages list goes to
    the best-ranked one). Byte totals count regular files, each hardlink set
    once.
    """

    tree: Tree
    build_epoch: int
    _owner: dict[bytes, Component]
    _members: dict[str, list[bytes]]
    _bytes: dict[str, int]
    _by_name: dict[str, Component]
    stats: dict[str, SourceStats] = field(default_factory=dict)
    reclaimed: dict[bytes, str] = field(default_factory=dict)
    reclaim_hashed_bytes: int = 0

    def component_of(self, path: bytes) -> Component:
        """The component of a tree path (``KeyError`` if the tree has no such path)."""
        return self._owner[path]

    def components(self) -> list[Component]:
        """Every component that owns at least one path, sorted by name."""
        return [self._by_name[n] for n in sorted(self._members)]

    def get(self, name: str) -> Component | None:
        return self._by_name.get(name) if name in self._members else None

    def paths_of(self, name: str) -> Sequence[bytes]:
        """The paths of one component, in canonical order."""
        return self._members.get(name, [])

    def bytes_of(self, name: str) -> int:
        """Regular-file bytes of one component (hardlink sets counted once)."""
        return self._bytes.get(name, 0)

    @property
    def unclaimed_bytes(self) -> int:
        return self._bytes.get(UNCLAIMED.name, 0)

    @property
    def total_bytes(self) -> int:
        return sum(self._bytes.values())

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary (counts per source, unclaimed share)."""
        total = self.total_bytes
        return {
            "components": len(self._members),
            "total_bytes": total,
            "unclaimed_bytes": self.unclaimed_bytes,
            "unclaimed_share": self.unclaimed_bytes / total if total else 0.0,
            "reclaimed_files": len(self.reclaimed),
            "reclaim_hashed_bytes": self.reclaim_hashed_bytes,
            "sources": {k: vars(v) for k, v in sorted(self.stats.items())},
        }


def assign_components(
    tree: Tree,
    *,
    build_epoch: int,
    sources: Iterable[OwnershipSource] | None = None,
    use_xattrs: bool = True,
    use_python: bool = True,
    big_file_size: int = BIG_FILE_SIZE,
    reclaim_budget: int = RECLAIM_BUDGET,
) -> Ownership:
    """Give every path of ``tree`` one :class:`Component`.

    ``build_epoch`` (SOURCE_DATE_EPOCH) is the time stability is evaluated at,
    so the result is reproducible. ``sources`` replaces the package databases
    consulted (default :data:`PACKAGE_SOURCES`). Raises
    :class:`~chunkah.owners.errors.DatabaseError` for a corrupt database.
    """
    canon = PathCanonicalizer(tree)
    best: dict[bytes, tuple[int, str, Component]] = {}
    stats: dict[str, SourceStats] = {}
    orphans: list[Claim] = []

    def offer(tier: int, kind: str, claims: Iterable[Claim]) -> None:
        st = stats.setdefault(kind, SourceStats())
        for c in claims:
            st.claims += 1
            if c.db_path is not None and c.path != db_path_key(c.db_path):
                st.canonicalised += 1
            if c.path not in tree:
                st.absent += 1
                if c.digest is not None:
                    orphans.append(c)
                continue
            st.present += 1
            rank = (tier, c.component.name, c.component)
            have = best.get(c.path)
            if have is None or rank[:2] < have[:2]:
                best[c.path] = rank

    package_comps: dict[str, Component] = {}
    for src in PACKAGE_SOURCES if sources is None else sources:
        if src.detect(tree):
            claims = list(src.claim(tree, canon, build_epoch=build_epoch))
            for c in claims:
                package_comps.setdefault(c.component.name, c.component)
            offer(TIER_PACKAGE, src.kind, claims)
    if use_python:
        py = PythonDistSource()
        if py.detect(tree):
            claims = list(py.claim(tree, canon, build_epoch=build_epoch))
            for c in claims:
                package_comps.setdefault(c.component.name, c.component)
            offer(TIER_PYTHON, py.kind, claims)
    if use_xattrs:
        xs = XattrSource()
        if xs.detect(tree):
            offer(
                TIER_XATTR,
                xs.kind,
                (
                    _redirect_xattr(c, package_comps)
                    for c in xs.claim(tree, canon, build_epoch=build_epoch)
                ),
            )
    offer(TIER_PYC, "pyc", _pyc_claims(tree, best))
    _join_hardlinks(tree, best)

    paths = tree.paths()
    unclaimed = [p for p in paths if p not in best]
    result = reclaim_by_digest(tree, orphans, unclaimed, budget=reclaim_budget)
    offer(TIER_RECLAIM, "reclaim", result.claims)
    _join_hardlinks(tree, best)
    unclaimed = [p for p in unclaimed if p not in best]
    offer(TIER_BIGFILE, "bigfile", claim_big_files(tree, unclaimed, min_size=big_file_size))
    _directories_follow_children(tree, paths, best)

    owner: dict[bytes, Component] = {}
    members: dict[str, list[bytes]] = {}
    sizes: dict[str, int] = {}
    by_name: dict[str, Component] = {UNCLAIMED.name: UNCLAIMED}
    seen_links: set[bytes] = set()
    tier_kind: dict[str, int] = {}
    for p in paths:
        rank = best.get(p)
        comp = rank[2] if rank is not None else UNCLAIMED
        owner[p] = comp
        by_name.setdefault(comp.name, comp)
        members.setdefault(comp.name, []).append(p)
        if rank is not None:
            tier_kind[comp.kind] = tier_kind.get(comp.kind, 0) + 1
        e = tree[p]
        if e.type is EntryType.FILE:
            if e.hardlink_group is not None:
                if e.hardlink_group in seen_links:
                    continue
                seen_links.add(e.hardlink_group)
            sizes[comp.name] = sizes.get(comp.name, 0) + e.size
    for kind, n in tier_kind.items():
        stats.setdefault(kind, SourceStats()).won = n
    return Ownership(
        tree=tree,
        build_epoch=build_epoch,
        _owner=owner,
        _members=members,
        _bytes=sizes,
        _by_name=by_name,
        stats=stats,
        reclaimed={c.path: owner[c.path].name for c in result.claims},
        reclaim_hashed_bytes=result.hashed_bytes,
    )


def _redirect_xattr(c: Claim, package_comps: dict[str, Component]) -> Claim:
    """``user.component=dpkg/openssl`` joins the real dpkg component, not a new one."""
    if c.component.kind == XATTR_KIND:
        target = package_comps.get(c.component.name.removeprefix("xattr/"))
        if target is not None:
            return Claim(path=c.path, component=target, db_path=c.db_path)
    return c


def _pyc_claims(tree: Tree, best: dict[bytes, tuple[int, str, Component]]) -> list[Claim]:
    """``D/__pycache__/N.TAG.pyc`` (and the ``__pycache__`` dir) go with ``D/N.py``."""
    out = []
    for p, e in (
        (p, tree[p]) for p in tree.paths() if b"/__pycache__/" in p and p.endswith(b".pyc")
    ):
        if p in best or e.type is not EntryType.FILE:
            continue
        cache_dir, _, name = p.rpartition(b"/")
        src_dir = cache_dir.rpartition(b"/")[0]
        stem = name.split(b".", 1)[0]
        owner = best.get(src_dir + b"/" + stem + b".py")
        if owner is None:
            continue
        out.append(Claim(path=p, component=owner[2], db_path=p))
        if cache_dir not in best:
            out.append(Claim(path=cache_dir, component=owner[2], db_path=cache_dir))
    return out


def _directories_follow_children(
    tree: Tree, paths: list[bytes], best: dict[bytes, tuple[int, str, Component]]
) -> None:
    """An unclaimed directory whose entries all belong to one component joins it.

    RECORD files and xattr-less trees name files, not directories; this keeps a
    wheel's directories with the wheel. Children are decided before parents
    (reverse canonical order); an empty or mixed directory stays unclaimed.
    """
    verdict: dict[bytes, Component | None] = {}  # parent -> the one component, or None
    for p in reversed(paths):
        rank = best.get(p)
        if rank is None and tree[p].type is EntryType.DIR and verdict.get(p) is not None:
            comp = verdict[p]
            assert comp is not None
            rank = (TIER_BIGFILE + 1, comp.name, comp)
            best[p] = rank
        if not p:
            continue
        parent = p.rpartition(b"/")[0]
        mine = rank[2] if rank is not None else None
        if parent not in verdict:
            verdict[parent] = mine
        elif verdict[parent] is not mine:
            verdict[parent] = None


def _join_hardlinks(tree: Tree, best: dict[bytes, tuple[int, str, Component]]) -> None:
    """Every member of a hardlink set takes the best rank any member has."""
    for members in tree.hardlink_groups().values():
        ranks = [best[m] for m in members if m in best]
        if not ranks:
            continue
        top = min(ranks, key=lambda r: r[:2])
        for m in members:
            best[m] = top


def sort_paths(paths: Iterable[bytes]) -> list[bytes]:
    return sorted(paths, key=path_sort_key)
