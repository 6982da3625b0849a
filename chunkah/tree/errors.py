"""Errors raised by :mod:`chunkah.tree`.

One small hierarchy so callers can catch ``TreeError`` for "the input tree or
archive is not something we can turn into an image" and tell it apart from I/O
or programming errors.
"""

from __future__ import annotations

import os

from chunkah.errors import InputError


def show_path(path: bytes | str) -> str:
    """Render a path for an error message, keeping non-UTF-8 bytes visible."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return path.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace") or "."


class TreeError(InputError):
    """The tree or archive cannot be read, written or extracted as asked."""


class SpecialFileError(TreeError):
    """A directory tree holds a device, fifo or socket and special files were not allowed."""

    def __init__(self, path: bytes, kind: str) -> None:
        self.path = path
        super().__init__(
            f"{show_path(path)}: is a {kind}; special files are not allowed in a rootfs "
            "(remove it, prune it, or pass --skip-special-files)"
        )


class TarFormatError(TreeError):
    """A tar stream is damaged, truncated, or uses a compression or entry type we do not read."""


class UnsafeEntryError(TreeError):
    """Extraction refused an archive entry that could write outside the destination."""

    def __init__(self, name: bytes | str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"refusing archive entry {show_path(name)!r}: {reason}")
