"""``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` references, as distribution parses them.

The grammar is distribution's ``reference`` package: the first path component is a
registry host when it contains ``.`` or ``:`` or is ``localhost``; otherwise the
image is on Docker Hub (``docker.io``) and a one-component name gets ``library/``.
Docker Hub's API is served from ``registry-1.docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from chunkah.oci import ImageReference

from .errors import BadRegistryReferenceError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ENDPOINT",
    "RegistryReference",
    "parse_registry_reference",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_MAX_NAME = 255


@dataclass(frozen=True)
class RegistryReference:
    """An image in a registry.  ``digest`` wins over ``tag`` when both are given."""

    registry: str  #: ``host[:port]`` as written (``docker.io`` for Docker Hub)
    repository: str  #: ``library/debian``, ``team/app``
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    @property
    def endpoint(self) -> str:
        """The ``host[:port]`` that serves the API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.endswith("]") else ""
        return host in ("localhost", "127.0.0.1") or self.registry.startswith("[::1]")

    def with_digest(self, digest: str) -> RegistryReference:
        return replace(self, digest=digest)

    def with_tag(self, tag: str | None) -> RegistryReference:
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        out = f"docker://{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_registry_reference(text: str | ImageReference) -> RegistryReference:
    """Parse ``docker://NAME[:TAG][@DIGEST]`` (the ``docker://`` prefix is optional).

    Raises :class:`BadRegistryReferenceError` with what is wrong and an example.
    """
    if isinstance(text, ImageReference):
        if text.transport != "docker" or text.remote is None:
            raise BadRegistryReferenceError(f"{text}: not a docker:// reference")
        text = text.remote
    original = text
    rest = text.removeprefix("docker://")
    if not rest:
        raise BadRegistryReferenceError(
            "empty registry reference (e.g. docker://quay.io/org/app:1)"
        )
    if rest.startswith("/") or "//" in rest:
        raise BadRegistryReferenceError(
            f"{original!r}: write docker://HOST/REPO[:TAG] (two slashes only after docker:)"
        )
    name, at, digest = rest.partition("@")
    if at and not _DIGEST_RE.match(digest):
        raise BadRegistryReferenceError(
            f"{original!r}: invalid digest {digest!r} (expected sha256:<64 lowercase hex>)"
        )
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise BadRegistryReferenceError(
                f"{original!r}: invalid tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)"
            )
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
        if not _HOST_RE.match(registry):
            raise BadRegistryReferenceError(f"{original!r}: invalid registry host {registry!r}")
    else:
        registry, repository = DOCKER_HUB, name
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _PATH_RE.match(repository):
        hint = " (repository names must be lowercase)" if repository.lower() != repository else ""
        raise BadRegistryReferenceError(
            f"{original!r}: invalid repository name {repository!r}{hint}; "
            "use lowercase letters, digits and . _ - between them, e.g. docker://HOST/team/app:1"
        )
    if len(registry) + 1 + len(repository) > _MAX_NAME:
        raise BadRegistryReferenceError(f"{original!r}: name longer than {_MAX_NAME} characters")
    return RegistryReference(registry, repository, tag, digest or None)
