"""Image references as the CLI takes them, following skopeo's transport syntax."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import BadReferenceError

__all__ = ["ImageReference", "Transport", "parse_reference", "validate_tag"]

Transport = Literal["oci", "oci-archive", "rootfs", "docker"]

# The grammar of org.opencontainers.image.ref.name (image-spec annotations.md),
# which containers/image also enforces for oci: references.
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")
_TRANSPORT_RE = re.compile(r"^([a-z][a-z0-9-]*):")
_KNOWN = ("oci", "oci-archive", "docker")


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid ``org.opencontainers.image.ref.name``."""
    if not _REF_NAME_RE.match(tag):
        raise BadReferenceError(
            f"invalid tag {tag!r}: use letters, digits and . _ - : @ + / between them "
            "(e.g. 'latest', 'v1.2', 'example.com/app:1')"
        )
    return tag


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``DIR``
    (a rootfs directory) or ``docker://NAME`` (left to the registry client)."""

    transport: Transport
    path: Path | None = None
    tag: str | None = None
    #: For ``docker://`` the text after the scheme, unparsed.
    remote: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.remote}"
        if self.transport == "rootfs":
            return str(self.path)
        suffix = f":{self.tag}" if self.tag else ""
        return f"{self.transport}:{self.path}{suffix}"


def parse_reference(text: str) -> ImageReference:
    """Parse a reference string; no file system access.

    As in skopeo, the path of ``oci:`` and ``oci-archive:`` ends at the first ``:``
    after the transport, so the tag may itself contain ``:`` but the path may not.
    Anything without a ``transport:`` prefix is a rootfs directory; write
    ``./name:with:colons`` for a directory whose name looks like a transport.
    """
    if not text:
        raise BadReferenceError("empty image reference")
    if text.startswith("docker://"):
        remote = text[len("docker://") :]
        if not remote:
            raise BadReferenceError("docker:// reference without a repository name")
        return ImageReference("docker", remote=remote)
    m = _TRANSPORT_RE.match(text)
    if not m or text.startswith(("/", ".")):
        return ImageReference("rootfs", path=Path(text))
    transport = m.group(1)
    if transport not in _KNOWN:
        raise BadReferenceError(
            f"unsupported transport {transport!r} in {text!r} "
            "(use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://NAME or a directory path; "
            "write ./NAME for a directory whose name contains ':')"
        )
    if transport == "docker":
        raise BadReferenceError(f"{text!r}: write docker references as docker://HOST/REPO[:TAG]")
    rest = text[m.end() :]
    path, sep, tag = rest.partition(":")
    if not path:
        raise BadReferenceError(f"{text!r}: missing path after {transport}:")
    if sep and not tag:
        raise BadReferenceError(f"{text!r}: empty tag after ':' (omit the ':' for no tag)")
    return ImageReference(
        transport,  # type: ignore[arg-type]  # checked against _KNOWN above
        path=Path(path),
        tag=validate_tag(tag) if tag else None,
    )
