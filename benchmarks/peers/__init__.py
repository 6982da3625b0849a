"""Update strategies measured side by side by ``benchmarks/suite.py``: one module per peer.

Each module names its strategies in a module-level ``STRATEGIES`` list (see
``peers.strategy.Strategy``); ``MODULES`` below is the registry the suite walks, in
table order.  Adding a strategy is one line here plus its module.

Some modules also offer a stable function for other benchmarks, e.g.
``peers.ostree.measure_static_delta(old_tree, new_tree, workdir)`` and
``peers.refdelta.measure_zstd_patch_from(old_tar, new_tar)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent.parent
# tests/support (treediff, registry, podman) and the chunkah package itself.
for _p in (_REPO / "tests", _REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: The registry: peers/<name>.py for each entry, in the order the tables show them.
MODULES: tuple[str, ...] = (
    "fullpull",
    "layers",
    "chunkah_update",
    "chunkah_delta",
    "podman",
    "casync",
    "zchunk",
    "rsync",
    "ostree",
    "refdelta",
)
