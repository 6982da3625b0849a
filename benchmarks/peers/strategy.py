"""What the suite runs: a Strategy measured on one Step of a series.

A strategy's ``run(step)`` returns one result dict; the keys the tables use are
``bytes`` (on the wire, or the delta file a client would download), ``requests``,
``seconds`` (the client's wall time for the update), ``maxrss_mib`` (the client
process's peak RSS), ``tree`` (a ``treecheck`` verdict), ``build`` (server-side
preparation: seconds and sizes) and ``note``.  A strategy that cannot run raises
``Unavailable`` with the reason, which the table prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .workspace import Workspace


class Unavailable(Exception):
    """This strategy cannot run on this step (the message says why)."""


@dataclass(frozen=True)
class Step:
    """v_k -> v_k+1 of one series, with the series' shared workspace."""

    series: str
    k: int  # index of the old version (0-based)
    old_label: str
    new_label: str
    old_tree: Path
    new_tree: Path
    ws: Workspace
    work: Path  # scratch directory for one strategy on this step (emptied before)

    @property
    def name(self) -> str:
        return f"{self.old_label}->{self.new_label}"


@dataclass(frozen=True)
class Strategy:
    name: str  # stable id: results files, thresholds, plots
    label: str  # table row
    run: Callable[[Step], dict[str, Any]]
    ours: bool = False  # chunkah's own: byte counts guarded by thresholds.json
    quick: bool = True  # part of `make bench-quick`
    wire: str = "server log"  # how bytes are counted
