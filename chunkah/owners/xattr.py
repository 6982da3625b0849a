"""``user.component`` / ``user.update-interval`` xattrs, inherited down directories.

A directory's value applies to everything below it until a deeper path sets
its own. A value that names an existing component of another source
(``dpkg/openssl``) moves the path into that component; any other value makes
the component ``xattr/VALUE``. ``user.update-interval`` (``daily``, ``weekly``,
``monthly``, ``never``, a number of days) sets its stability.
"""

from __future__ import annotations

from collections.abc import Iterable

from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import XATTR_KIND, Claim, Component
from chunkah.owners.stability import interval_stability
from chunkah.tree.model import EntryType, Tree, is_below

__all__ = ["COMPONENT_XATTR", "INTERVAL_XATTR", "XATTR_DEFAULT_STABILITY", "XattrSource"]

COMPONENT_XATTR = "user.component"
INTERVAL_XATTR = "user.update-interval"
XATTR_DEFAULT_STABILITY = 0.0  # chunkah's: unknown cadence, assume it moves


class XattrSource:
    """Ownership the image author wrote onto the tree itself."""

    kind = XATTR_KIND

    def detect(self, tree: Tree) -> bool:
        return any(any(k == COMPONENT_XATTR for k, _ in e.xattrs) for e in tree if e.xattrs)

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        stack: list[tuple[bytes, str, str | None]] = []  # (dir, component, interval)
        found: list[tuple[bytes, str, str | None]] = []
        for e in tree:
            while stack and not is_below(e.path, stack[-1][0]):
                stack.pop()
            attrs = dict(e.xattrs) if e.xattrs else {}
            own = attrs.get(COMPONENT_XATTR)
            own_interval = attrs.get(INTERVAL_XATTR)
            inherited = stack[-1] if stack else None
            if own is not None:
                try:
                    value = own.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise DatabaseError(e.path, f"{COMPONENT_XATTR} is not UTF-8") from None
                if not value:
                    raise DatabaseError(e.path, f"{COMPONENT_XATTR} is empty")
            elif inherited is not None:
                value = inherited[1]
            else:
                continue
            interval: str | None
            if own_interval is not None:
                interval = own_interval.decode("utf-8", "replace")
                if interval_stability(interval) is None:
                    raise DatabaseError(
                        e.path,
                        f"{INTERVAL_XATTR}={interval!r} is not an interval "
                        "(daily, weekly, monthly, never or a number of days)",
                    )
            else:
                interval = inherited[2] if inherited and inherited[1] == value else None
            if e.type is EntryType.DIR:
                stack.append((e.path, value, interval))
            found.append((e.path, value, interval))
        # One Component per value; its stability comes from the first path (in
        # canonical order) that gives an interval, so the result is order-free.
        stability: dict[str, float] = {}
        for _, value, interval in found:
            if interval is not None and value not in stability:
                stability[value] = interval_stability(interval) or 0.0
        comps = {
            v: Component(
                name=f"xattr/{v}",
                kind=self.kind,
                stability=stability.get(v, XATTR_DEFAULT_STABILITY),
            )
            for v in sorted({v for _, v, _ in found})
        }
        return [Claim(path=p, component=comps[v], db_path=p) for p, v, _ in found]
