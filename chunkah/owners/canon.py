"""Map database paths to tree paths through the tree's own symlinks.

Package databases record paths as the package shipped them (``/bin/ls``,
``/lib/x86_64-linux-gnu/libc.so.6``); a merged-/usr tree has them at
``usr/bin/ls`` because ``bin`` is a symlink to ``usr/bin``. The parent
directories of a database path are resolved through the symlinks *in the tree*
(never the host's); the last component is left alone, because a database that
lists a symlink owns the symlink itself.
"""

from __future__ import annotations

from chunkah.tree.model import EntryType, Tree, normalize_path

__all__ = ["MAX_SYMLINK_HOPS", "PathCanonicalizer", "db_path_key"]

MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS


def db_path_key(raw: bytes | str) -> bytes:
    """A database path in the tree model's form (no leading '/', no '.' parts).

    Same result as :func:`normalize_path`, with a fast path for the common
    already-clean ``/usr/bin/x`` spelling (databases hold tens of thousands).
    """
    if isinstance(raw, bytes) and raw[:1] == b"/":
        q = raw[1:]
        if (
            q
            and q != b"."
            and b"//" not in q
            and b"/./" not in q
            and q[-1:] != b"/"
            and q[:2] != b"./"
            and q[-2:] != b"/."
            and q[:1] != b"/"
        ):
            return q
    return normalize_path(raw)


class PathCanonicalizer:
    """Resolve database paths against one tree; results are memoised per directory."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._dirs: dict[bytes, bytes] = {b"": b""}

    def canonical(self, db_path: bytes | str) -> bytes:
        """The tree path of ``db_path`` with every parent directory resolved.

        A leading '/' is optional. Symlinks that loop or go too deep leave the
        rest of the path unresolved rather than failing: the path then simply
        does not exist in the tree and counts as listed-but-absent.
        """
        path = db_path_key(db_path)
        i = path.rfind(b"/")
        if i < 0:
            return path
        parent = self.resolve_dir(path[:i])
        name = path[i + 1 :]
        if name == b"..":
            j = parent.rfind(b"/")
            return parent[:j] if j >= 0 else b""
        return parent + b"/" + name if parent else name

    def resolve(self, db_path: bytes | str) -> bytes:
        """Like :meth:`canonical` but also follows a symlink in the last component."""
        return self.resolve_dir(normalize_path(db_path))

    def resolve_dir(self, path: bytes) -> bytes:
        """Resolve every component of a normalised path, symlinks included."""
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        resolved = self._walk(path)
        self._dirs[path] = resolved
        return resolved

    def _walk(self, path: bytes) -> bytes:
        tree = self._tree
        todo = path.split(b"/")
        todo.reverse()
        done: list[bytes] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in (b"", b"."):
                continue
            if part == b"..":
                if done:
                    done.pop()
                continue
            done.append(part)
            here = b"/".join(done)
            # Use memoised prefixes where we can (most lookups share parents).
            cached = self._dirs.get(here)
            if cached is not None and cached != here:
                done = cached.split(b"/") if cached else []
                continue
            entry = tree.get(here)
            if entry is None or entry.type is not EntryType.SYMLINK:
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                # A loop: keep the unresolved remainder; the path will be absent.
                rest = list(reversed(todo))
                return b"/".join([*done, *rest])
            done.pop()
            target = entry.link_target
            if target.startswith(b"/"):
                done = []
            for t in reversed(target.split(b"/")):
                todo.append(t)
        return b"/".join(done)
