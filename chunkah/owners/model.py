"""Values shared by every ownership source: components, digests and claims."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BIGFILE_KIND",
    "UNCLAIMED",
    "UNCLAIMED_KIND",
    "XATTR_KIND",
    "BinaryPackage",
    "Claim",
    "Component",
    "Digest",
]

UNCLAIMED_KIND = "unclaimed"
BIGFILE_KIND = "bigfile"
XATTR_KIND = "xattr"


@dataclass(frozen=True, order=True)
class BinaryPackage:
    """One installed binary package that a component covers."""

    name: str
    version: str
    arch: str = ""


@dataclass(frozen=True)
class Component:
    """A group of paths that changes together: a source package, a wheel, a big file.

    ``name`` is the stable identity packing keys on (``"dpkg/openssl"``,
    ``"rpm/glibc"``, ``"python/numpy"``, ``"bigfile/usr/lib/x.so"``,
    ``"chunkah/unclaimed"``). ``mtime_clamp`` is the package's build time when
    the database records one (None: use SOURCE_DATE_EPOCH). ``stability`` is the
    probability that the component does not change within 7 days of the build
    epoch (see docs/owners.md).
    """

    name: str
    kind: str
    version: str = ""
    purl: str | None = None
    packages: tuple[BinaryPackage, ...] = ()
    mtime_clamp: int | None = None
    stability: float = 0.0


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest recorded by a database; ``hex`` is lower-case hex."""

    algorithm: str  # a hashlib name: "md5", "sha1", "sha256", ...
    hex: str


@dataclass(frozen=True, slots=True)
class Claim:
    """``component`` owns the tree path ``path`` (already canonicalised).

    ``digest`` and ``size`` are what the database recorded for a regular file;
    they let a file that moved after installation be claimed back by content.
    ``db_path`` is the path as the database spells it (for statistics).
    """

    path: bytes
    component: Component
    digest: Digest | None = None
    size: int | None = None
    db_path: bytes | None = field(default=None, compare=False)


UNCLAIMED = Component(name="chunkah/unclaimed", kind=UNCLAIMED_KIND, stability=0.0)
