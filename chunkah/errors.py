"""The error hierarchy: every failure a user can act on, with an exit code per class."""

from __future__ import annotations


class ChunkahError(Exception):
    """Base of all errors chunkah reports to users; the message says what to do."""

    exit_code = 1


class InputError(ChunkahError):
    """Bad arguments, unreadable or malformed input (a tree, a tar, an image)."""

    exit_code = 2


class NetworkError(ChunkahError):
    """A registry could not be reached or kept failing after bounded retries."""

    exit_code = 3


class VerificationError(ChunkahError):
    """Fetched or stored bytes do not match the digest that vouches for them."""

    exit_code = 4


class StateError(ChunkahError):
    """The sysroot or cache is busy, inconsistent, or out of space."""

    exit_code = 5
