"""Expected mtimes of a packed image: each path clamped per chunkah.packing.entry_clamps."""

from __future__ import annotations

import os

from chunkah.owners import assign_components
from chunkah.packing import entry_clamps
from chunkah.tree import read_dir


def expected_clamps(root: str | os.PathLike[str], epoch: int) -> dict[bytes, int | None]:
    """Relative path (b"." for the root, as diff_trees names it) -> clamp."""
    tree = read_dir(root)
    ownership = assign_components(tree, build_epoch=epoch)
    return {(p or b"."): c for p, c in entry_clamps(tree, ownership, epoch).items()}
