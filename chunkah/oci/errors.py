"""The errors of :mod:`chunkah.oci`: one base class, subclasses by what the user can do."""

from __future__ import annotations

from chunkah.errors import InputError, VerificationError

__all__ = [
    "BadReferenceError",
    "BlobNotFoundError",
    "ConfigError",
    "DigestMismatchError",
    "ImageNotFoundError",
    "InvalidImageError",
    "OciError",
    "PlatformNotFoundError",
]


class OciError(InputError):
    """Base class: something about an OCI image, layout or reference is wrong."""


class BadReferenceError(OciError, ValueError):
    """An image reference (``oci:DIR[:TAG]`` ...) cannot be parsed or is not supported."""


class ConfigError(OciError, ValueError):
    """Bad input for a config: label/annotation syntax, architecture, inspect JSON."""


class InvalidImageError(OciError):
    """A layout, manifest, index or config is malformed, oversize or of an unknown type."""


class ImageNotFoundError(OciError):
    """No manifest under the requested tag (or the layout/archive does not exist)."""


class PlatformNotFoundError(ImageNotFoundError):
    """An index holds no manifest for the requested os/architecture/variant."""


class BlobNotFoundError(OciError):
    """A descriptor points to a blob that the layout or archive does not hold."""


class DigestMismatchError(OciError, VerificationError):
    """Bytes read do not hash to (or are not the size of) what their descriptor says."""

    exit_code = VerificationError.exit_code
