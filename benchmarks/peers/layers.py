"""chunkah-style layer reuse: our packing by package ownership, layers fetched whole.

Both versions built with ``chunkah build --compression zstd`` (packed layers, plain
zstd, no TOC): ``layers-stateless`` packs each version on its own; ``layers-history``
passes ``--previous`` (the version before) so components stay in their layers.  The
client pulls v_k+1 with skopeo into the layout holding v_k: the layers whose digest
it has are not fetched (peers.ocipull).
"""

from __future__ import annotations

from typing import Any

from .ocipull import pull_update
from .strategy import Step, Strategy


def _stateless(step: Step) -> dict[str, Any]:
    return pull_update(step, "zstd-stateless", fresh=False)


def _history(step: Step) -> dict[str, Any]:
    return pull_update(step, "zstd-history", fresh=False)


STRATEGIES = [
    Strategy("layers-stateless", "whole layers, stateless packing (ours)", _stateless, ours=True),
    Strategy("layers-history", "whole layers, history-aware packing (ours)", _history, ours=True),
]
