"""Errors raised by :mod:`chunkah.owners`."""

from __future__ import annotations

from chunkah.errors import InputError
from chunkah.tree.errors import show_path


class DatabaseError(InputError):
    """A package database in the tree is corrupt or in a format we do not read.

    The message names the database file (as a path inside the tree) so the user
    can look at it, fix the image, or remove the database.
    """

    def __init__(self, path: bytes | str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"/{show_path(path)}: {reason} (the package database looks corrupt; "
            "repair or remove it and build again)"
        )
