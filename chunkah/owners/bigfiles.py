"""Big files: each regular file of at least 1 MiB that nobody claimed is its own component.

Hardlinked paths share one component (named after the first path in canonical
order), so packing never has to split a hardlink set.
"""

from __future__ import annotations

from collections.abc import Iterable

from chunkah.owners.model import BIGFILE_KIND, Claim, Component
from chunkah.tree.model import EntryType, Tree

__all__ = ["BIGFILE_STABILITY", "BIG_FILE_SIZE", "claim_big_files"]

BIG_FILE_SIZE = 1 << 20
BIGFILE_STABILITY = 0.0  # nothing vouches for it; assume it moves


def claim_big_files(
    tree: Tree, unclaimed: Iterable[bytes], *, min_size: int = BIG_FILE_SIZE
) -> list[Claim]:
    """Claims for the big regular files among ``unclaimed`` (paths in canonical order)."""
    groups: dict[bytes, Component] = {}
    out = []
    for path in unclaimed:
        e = tree[path]
        if e.type is not EntryType.FILE or e.size < min_size:
            continue
        key = e.hardlink_group if e.hardlink_group is not None else path
        comp = groups.get(key)
        if comp is None:
            comp = Component(
                name="bigfile/" + path.decode("utf-8", "backslashreplace"),
                kind=BIGFILE_KIND,
                stability=BIGFILE_STABILITY,
            )
            groups[key] = comp
        out.append(Claim(path=path, component=comp, size=e.size, db_path=path))
    return out
