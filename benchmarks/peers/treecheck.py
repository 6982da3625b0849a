"""A strategy's resulting tree against the target tree (tests/support/treediff.py).

Content, type, modes, owners, kept xattrs, symlink targets, device numbers and
hardlink sets are always compared; mtimes only where the strategy carries them
(OSTree and podman's partial pulls do not, by design or by bug: the caller says).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from support.treediff import diff_trees


def verdict(diffs: list[str], *, mtimes: str) -> dict[str, Any]:
    """Differences counted by kind ("owner differs", "hardlink set differs", ...)."""
    kinds: dict[str, int] = {}
    for d in diffs:
        kind = d.split(" for ", 1)[0] if " for " in d else d.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "ok": not diffs,
        "differences": len(diffs),
        "kinds": kinds,
        "first": diffs[:20],
        "mtimes": mtimes,
    }


def check_tree(
    target: str | os.PathLike[str],
    result: str | os.PathLike[str],
    *,
    mtime_clamp: int | Mapping[bytes, int | None] | None = None,
    check_mtime: bool = True,
    ignore: tuple[str, ...] = (),
) -> dict[str, Any]:
    """diff_trees(target, result) as a verdict; ``mtimes`` says how mtimes were judged."""
    diffs = diff_trees(
        target, result, mtime_clamp=mtime_clamp, check_mtime=check_mtime, ignore=ignore
    )
    if not check_mtime:
        how = "not compared"
    elif mtime_clamp is not None:
        how = "compared, clamped as chunkah build clamps them"
    else:
        how = "compared"
    return verdict(diffs, mtimes=how)


def short(v: dict[str, Any] | None) -> str:
    """One table cell: ``yes`` or ``**NO**: kind xN, ...``."""
    if v is None:
        return "—"
    if v["ok"]:
        return "yes"
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(v["kinds"].items()))
    return f"**NO**: {kinds}"
