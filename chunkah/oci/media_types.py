"""Media types of OCI and Docker v2 manifests, indexes, configs and layers."""

from __future__ import annotations

from chunkah.compression import Compression

from .errors import InvalidImageError

OCI_LAYOUT_VERSION = "1.0.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Deprecated by image-spec 1.1 but still found in the wild.
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

_LAYER_COMPRESSION = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_LAYER_ND_TAR: Compression.NONE,
    OCI_LAYER_ND_GZIP: Compression.GZIP,
    OCI_LAYER_ND_ZSTD: Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_LAYER_ZSTD: Compression.ZSTD,
    DOCKER_FOREIGN_LAYER_GZIP: Compression.GZIP,
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)


def layer_media_type(compression: Compression | str, *, docker: bool = False) -> str:
    """The layer media type for a compression, OCI by default or Docker v2."""
    comp = Compression(compression)
    if docker:
        return {
            Compression.NONE: DOCKER_LAYER_TAR,
            Compression.GZIP: DOCKER_LAYER_GZIP,
            Compression.ZSTD: DOCKER_LAYER_ZSTD,
        }[comp]
    return {
        Compression.NONE: OCI_LAYER_TAR,
        Compression.GZIP: OCI_LAYER_GZIP,
        Compression.ZSTD: OCI_LAYER_ZSTD,
    }[comp]


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type declares; unknown layer types are an error."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise InvalidImageError(
            f"unsupported layer media type {media_type!r} "
            "(encrypted or non-tar layers cannot be read)"
        ) from None
