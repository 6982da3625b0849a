"""Which component owns each path of a tree.

One module per ownership source (:mod:`.dpkg`, :mod:`.rpm`, :mod:`.alpm`,
:mod:`.apk`, :mod:`.python_dist`, :mod:`.xattr`, :mod:`.bigfiles`) behind the
:class:`OwnershipSource` interface; :func:`assign_components` applies them in
precedence order and returns an :class:`Ownership` that packing and the SBOM
read. See docs/owners.md.
"""

from chunkah.owners.assign import PACKAGE_SOURCES, Ownership, SourceStats, assign_components
from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import UNCLAIMED, BinaryPackage, Claim, Component, Digest
from chunkah.owners.source import OwnershipSource

__all__ = [
    "PACKAGE_SOURCES",
    "UNCLAIMED",
    "BinaryPackage",
    "Claim",
    "Component",
    "DatabaseError",
    "Digest",
    "Ownership",
    "OwnershipSource",
    "PathCanonicalizer",
    "SourceStats",
    "assign_components",
]
