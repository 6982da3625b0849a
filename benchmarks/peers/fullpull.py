"""Full pull of a single-layer gzip image: the baseline every update is measured against.

``chunkah build --compression gzip --max-layers 1`` of the new tree, pulled by skopeo
into an empty layout and unpacked with tar (peers.ocipull).
"""

from __future__ import annotations

from typing import Any

from .ocipull import pull_update
from .strategy import Step, Strategy


def _run(step: Step) -> dict[str, Any]:
    return pull_update(step, "gzip-1", fresh=True)


STRATEGIES = [Strategy("full-gzip", "full pull, one gzip layer", _run, ours=True)]
