"""Images as a whole: resolving a reference to manifest, config and layers; writing
layers and manifests into a layout; the data behind ``chunkah inspect``.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from chunkah.compression import BlobDigests, CompressingWriter, Compression, open_decompressed

from . import media_types as mt
from .archive import OciArchive, write_archive
from .config import build_manifest, host_platform
from .errors import (
    BadReferenceError,
    ImageNotFoundError,
    InvalidImageError,
    PlatformNotFoundError,
)
from .layout import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    BlobSource,
    OciLayout,
    VerifiedReader,
    read_blob,
    read_verified,
)
from .model import Descriptor, ImageConfig, Index, Manifest, Platform
from .reference import ImageReference, parse_reference

__all__ = [
    "ResolvedImage",
    "add_layer",
    "inspect_image",
    "open_output",
    "open_source",
    "resolve_image",
    "select_manifest",
    "write_image",
]


def _as_reference(ref: ImageReference | str) -> ImageReference:
    return parse_reference(ref) if isinstance(ref, str) else ref


def open_source(ref: ImageReference | str) -> OciLayout | OciArchive:
    """The blob source behind an ``oci:`` or ``oci-archive:`` reference."""
    r = _as_reference(ref)
    if r.transport == "oci":
        assert r.path is not None
        return OciLayout.open(r.path)
    if r.transport == "oci-archive":
        assert r.path is not None
        return OciArchive(r.path)
    if r.transport == "rootfs":
        raise BadReferenceError(
            f"{r}: a plain directory is a rootfs, not an image; use oci:{r.path} if it "
            "is an OCI layout"
        )
    raise BadReferenceError(f"{r}: registry images are read by chunkah.registry, not here")


def _platform_matches(have: Platform | None, want: Platform) -> bool:
    if have is None or have.os != want.os or have.architecture != want.architecture:
        return False
    if want.variant is None:
        return True

    def norm(v: str | None) -> str | None:  # arm64 without variant means v8
        return None if have.architecture == "arm64" and v == "v8" else v

    return norm(have.variant) == norm(want.variant)


def _pick_platform(candidates: Sequence[Descriptor], want: Platform, where: str) -> Descriptor:
    matches = [d for d in candidates if _platform_matches(d.platform, want)]
    if not matches:
        have = ", ".join(str(d.platform) for d in candidates if d.platform) or "none declared"
        raise PlatformNotFoundError(
            f"{where}: no image for {want} (available: {have}); pick one with --arch"
        )
    # Without a requested variant, prefer an entry that declares none.
    exact = [d for d in matches if d.platform and d.platform.variant == want.variant]
    return (exact or matches)[0]


_REFERRERS_TAG = re.compile(r"sha256-[0-9a-f]{64}")


def select_manifest(
    source: BlobSource,
    tag: str | None = None,
    platform: Platform | None = None,
    *,
    where: str = "image",
) -> tuple[Descriptor, Descriptor | None]:
    """Find the image manifest for ``tag`` (and ``platform`` when there are several).

    Returns the manifest descriptor and, when it was chosen from a nested index,
    that index's descriptor.  Without a tag the layout must hold one image (or one
    set of platform variants), as in skopeo.
    """
    index = source.read_index()
    if tag is not None:
        candidates = [d for d in index.manifests if d.ref_name == tag]
        if not candidates:
            tags = sorted({d.ref_name for d in index.manifests if d.ref_name})
            raise ImageNotFoundError(
                f"{where}: no image tagged {tag!r} (tags: {', '.join(tags) or 'none'})"
            )
    else:
        # Artifacts (an attached SBOM) and referrers fallback indexes are not images.
        candidates = [
            d
            for d in index.manifests
            if "artifactType" not in d.extra and not _REFERRERS_TAG.fullmatch(d.ref_name or "")
        ]
        if not candidates:
            raise ImageNotFoundError(f"{where}: the layout holds no image")
        if len(candidates) > 1 and not all(d.platform for d in candidates):
            tags = sorted({d.ref_name for d in candidates if d.ref_name})
            raise ImageNotFoundError(
                f"{where}: holds {len(candidates)} images; add :TAG to the reference "
                f"(tags: {', '.join(tags) or 'none'})"
            )
    want = platform or host_platform()
    parent: Descriptor | None = None
    for _depth in range(8):  # nested indexes are legal; loops are not
        single = candidates[0] if len(candidates) == 1 else None
        if single is not None and (
            platform is None or single.platform is None or single.media_type in mt.INDEX_TYPES
        ):
            # One entry: take it (an index is opened below; a manifest that declares
            # no platform is what the user pointed at).
            chosen = single
        else:
            chosen = _pick_platform(candidates, want, where)
        if chosen.media_type in mt.MANIFEST_TYPES:
            return chosen, parent
        if chosen.media_type not in mt.INDEX_TYPES:
            raise InvalidImageError(
                f"{where}: {chosen.digest} has media type {chosen.media_type!r}, "
                "neither an image manifest nor an index"
            )
        body = read_blob(source, chosen, max_size=MAX_MANIFEST_SIZE)
        candidates = list(Index.from_json(body, chosen.media_type).manifests)
        if not candidates:
            raise ImageNotFoundError(f"{where}: index {chosen.digest} is empty")
        parent = chosen
    raise InvalidImageError(f"{where}: image indexes nested too deeply")


@dataclass(frozen=True)
class ResolvedImage:
    """One image: its manifest, config and layers, with verified access to each."""

    source: BlobSource
    descriptor: Descriptor  #: of the manifest
    manifest: Manifest
    manifest_bytes: bytes
    config: ImageConfig
    config_bytes: bytes
    index_descriptor: Descriptor | None = None
    reference: ImageReference | None = None

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    def open_layer_blob(self, i: int) -> VerifiedReader:
        """Layer ``i`` as stored (compressed), verified against its digest at EOF."""
        return self.source.open_blob(self.layers[i])

    def open_layer(self, i: int, *, limit: int | None = None) -> VerifiedReader:
        """Layer ``i`` decompressed: a tar stream, checked against its diff_id at EOF.

        Reaching EOF also verifies the compressed blob's digest.  Use it in a
        ``with`` block to have the rest read and verified on a clean exit.
        ``limit`` caps the uncompressed size.
        """
        desc = self.layers[i]
        mt.layer_compression(desc.media_type)  # refuses encrypted/unknown layer types
        blob = self.source.open_blob(desc)
        try:
            plain = open_decompressed(blob, desc.media_type, limit=limit)
        except BaseException:
            blob.close()
            raise
        return read_verified(
            plain, self.config.diff_ids[i], None, what=f"layer {i} diff_id", closing=[blob]
        )


def resolve_image(
    ref: ImageReference | str | BlobSource,
    tag: str | None = None,
    platform: Platform | None = None,
) -> ResolvedImage:
    """Resolve a reference (or a source plus tag) to a verified manifest and config."""
    reference: ImageReference | None = None
    if isinstance(ref, ImageReference | str):
        reference = _as_reference(ref)
        source: BlobSource = open_source(reference)
        tag = tag or reference.tag
        where = str(reference)
    else:
        source, where = ref, str(getattr(ref, "path", "image"))
    desc, parent = select_manifest(source, tag, platform, where=where)
    manifest_bytes = read_blob(source, desc, max_size=MAX_MANIFEST_SIZE)
    manifest = Manifest.from_json(manifest_bytes, desc.media_type)
    if manifest.config.media_type not in mt.CONFIG_TYPES:
        raise InvalidImageError(
            f"{where}: config media type {manifest.config.media_type!r} is not an image "
            "config (an artifact, not a container image?)"
        )
    config_bytes = read_blob(source, manifest.config, max_size=MAX_CONFIG_SIZE)
    config = ImageConfig.from_json(config_bytes)
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidImageError(
            f"{where}: manifest has {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    return ResolvedImage(
        source=source,
        descriptor=desc,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        config=config,
        config_bytes=config_bytes,
        index_descriptor=parent,
        reference=reference,
    )


def inspect_image(ref: ImageReference | str, platform: Platform | None = None) -> dict[str, Any]:
    """What ``chunkah inspect REF --json`` prints: JSON-ready, stable keys."""
    image = resolve_image(ref, platform=platform)
    cfg = image.config
    run = cfg.config
    tags_of = getattr(image.source, "tags", None)
    return {
        "reference": str(image.reference),
        "transport": image.reference.transport if image.reference else None,
        "tags": tags_of() if callable(tags_of) else [],
        "digest": image.descriptor.digest,
        "mediaType": image.manifest.media_type,
        "size": image.descriptor.size,
        "index": (
            {
                "digest": image.index_descriptor.digest,
                "mediaType": image.index_descriptor.media_type,
            }
            if image.index_descriptor
            else None
        ),
        "platform": str(cfg.platform),
        "os": cfg.os,
        "architecture": cfg.architecture,
        "variant": cfg.variant,
        "created": cfg.created,
        "author": cfg.author,
        "labels": cfg.labels,
        "annotations": dict(image.manifest.annotations),
        "config": {
            "digest": image.manifest.config.digest,
            "mediaType": image.manifest.config.media_type,
            "size": image.manifest.config.size,
            "user": run.get("User"),
            "env": run.get("Env") or [],
            "entrypoint": run.get("Entrypoint"),
            "cmd": run.get("Cmd"),
            "workingDir": run.get("WorkingDir"),
            "exposedPorts": sorted(run.get("ExposedPorts") or {}),
            "volumes": sorted(run.get("Volumes") or {}),
            "stopSignal": run.get("StopSignal"),
        },
        "layers": [
            {
                "digest": d.digest,
                "mediaType": d.media_type,
                "size": d.size,
                "compression": str(mt.layer_compression(d.media_type))
                if d.media_type in mt.LAYER_TYPES
                else None,
                "diffId": cfg.diff_ids[i],
                "annotations": dict(d.annotations),
            }
            for i, d in enumerate(image.layers)
        ],
        "layersSize": sum(d.size for d in image.layers),
        "history": [h.to_dict() for h in cfg.history],
    }


# -- writing --


def add_layer(
    layout: OciLayout,
    tar_stream: BinaryIO,
    compression: Compression | str = Compression.ZSTD,
    *,
    level: int | None = None,
    threads: int = 1,
    annotations: Mapping[str, str] | None = None,
    docker: bool = False,
) -> tuple[Descriptor, BlobDigests]:
    """Compress an uncompressed tar stream into a layer blob of ``layout``.

    Returns the layer descriptor and the digests (``diff_id`` for the config).
    """
    with layout.blob_writer() as blob:
        writer = CompressingWriter(blob, compression, level=level, threads=threads)  # type: ignore[arg-type]
        while chunk := tar_stream.read(1 << 20):
            writer.write(chunk)
        digests = writer.finish()
        blob.commit(digests.digest, digests.size)
    desc = Descriptor(
        media_type=mt.layer_media_type(digests.compression, docker=docker),
        digest=digests.digest,
        size=digests.size,
        annotations=dict(annotations or {}),
    )
    return desc, digests


def write_image(
    layout: OciLayout,
    config: ImageConfig,
    layers: Sequence[Descriptor],
    *,
    tag: str | None = None,
    annotations: Mapping[str, str] | None = None,
    docker: bool = False,
) -> Descriptor:
    """Store ``config`` and a manifest over ``layers`` (already in the layout) under
    ``tag``; returns the manifest descriptor as recorded in ``index.json``."""
    if len(config.diff_ids) != len(layers):
        raise InvalidImageError(
            f"config lists {len(config.diff_ids)} diff_ids for {len(layers)} layers"
        )
    config_desc = layout.write_json_blob(
        config.to_json(), mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
    )
    manifest = build_manifest(config_desc, layers, annotations=annotations, docker=docker)
    return layout.add_manifest(manifest, tag)


@contextlib.contextmanager
def open_output(ref: ImageReference | str) -> Iterator[tuple[OciLayout, str | None]]:
    """A layout to write an image into, and the tag from the reference.

    ``oci:DIR`` is created if needed and written in place.  For
    ``oci-archive:FILE`` a temporary layout is packed into FILE (replacing it) when
    the block exits cleanly, and discarded otherwise.
    """
    r = _as_reference(ref)
    if r.transport == "oci":
        assert r.path is not None
        yield OciLayout.create(r.path), r.tag
    elif r.transport == "oci-archive":
        assert r.path is not None
        with tempfile.TemporaryDirectory(
            prefix=".chunkah-archive-", dir=_existing_parent(r.path)
        ) as tmp:
            layout = OciLayout.create(Path(tmp) / "layout")
            yield layout, r.tag
            write_archive(layout, r.path)
    else:
        raise BadReferenceError(
            f"{r}: images are written to oci:DIR[:TAG] or oci-archive:FILE[:TAG]"
        )


def _existing_parent(path: Path) -> Path:
    # Stage next to the target: same file system, and /tmp may be small.
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent
