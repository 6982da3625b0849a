"""Errors of the registry client, mapped onto chunkah's exit-code classes.

A bad reference or a missing image is the user's input (:class:`InputError`); a
registry that cannot be reached or keeps failing is :class:`NetworkError`; bytes that
do not match their digest are :class:`VerificationError`.
"""

from __future__ import annotations

from chunkah.errors import InputError, NetworkError, VerificationError

__all__ = [
    "BadRegistryReferenceError",
    "RegistryAuthError",
    "RegistryDigestError",
    "RegistryNotFoundError",
    "RegistryRequestError",
]


class BadRegistryReferenceError(InputError, ValueError):
    """A ``docker://`` reference does not follow the distribution reference grammar."""


class RegistryNotFoundError(InputError):
    """The registry answered 404: no such repository, tag, manifest or blob."""


class RegistryRequestError(NetworkError):
    """A request failed for good: its status after bounded retries, or a protocol error.

    ``status`` is the last HTTP status seen (None for connection errors and timeouts).
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class RegistryAuthError(RegistryRequestError):
    """401/403 after the credentials or token we could obtain were presented."""


class RegistryDigestError(VerificationError):
    """A manifest or blob does not hash to (or is not the size of) its digest."""
