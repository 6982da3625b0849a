"""Expected mtimes of a packed image: each path clamped by its component's clamp."""

from __future__ import annotations

import os

from chunkah.owners import assign_components
from chunkah.packing import clamp_for
from chunkah.tree import read_dir


def expected_clamps(root: str | os.PathLike[str], epoch: int) -> dict[bytes, int | None]:
    """Relative path (b"." for the root, as diff_trees names it) -> clamp."""
    tree = read_dir(root)
    ownership = assign_components(tree, build_epoch=epoch)
    clamps = clamp_for(ownership, epoch)
    return {(p or b"."): clamps[ownership.component_of(p).name] for p in tree.paths()}
