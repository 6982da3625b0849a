"""Whole images between OCI layouts and registries: ``push_image``, ``pull_image``.

Bytes are copied as they are: blobs keep their digests and the manifest is pushed
(and stored) byte for byte, so the digest on both sides is the same.  Pulling an
index takes one platform's manifest, as skopeo does without ``--all``; pushing an
index pushes every manifest it lists that the layout holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from chunkah import oci
from chunkah.oci import media_types as mt

from .client import RegistryClient, RemoteImage
from .errors import RegistryDigestError
from .reference import RegistryReference, parse_registry_reference

__all__ = ["copy_image", "pull_image", "push_image"]


def _blob_source(
    source: oci.OciLayout | oci.OciArchive, desc: oci.Descriptor
) -> Path | Callable[[], BinaryIO]:
    if isinstance(source, oci.OciLayout):
        return source.blob_path(desc.digest)
    return lambda: source.open_blob(desc)


async def _push_manifest_tree(
    client: RegistryClient,
    source: oci.OciLayout | oci.OciArchive,
    dest: RegistryReference,
    desc: oci.Descriptor,
    *,
    tag: str | None,
    chunk_size: int | None,
    mount_from: str | None,
    depth: int = 0,
) -> str:
    if depth > 8:
        raise oci.InvalidImageError(f"{dest}: image indexes nested too deeply")
    body = oci.read_blob(source, desc, max_size=oci.MAX_MANIFEST_SIZE)
    if desc.media_type in mt.INDEX_TYPES:
        index = oci.Index.from_json(body, desc.media_type)
        for child in index.manifests:
            if source.has_blob(child.digest):
                await _push_manifest_tree(
                    client,
                    source,
                    dest,
                    child,
                    tag=None,
                    chunk_size=chunk_size,
                    mount_from=mount_from,
                    depth=depth + 1,
                )
    else:
        manifest = oci.Manifest.from_json(body, desc.media_type)
        for blob in (manifest.config, *manifest.layers):
            await client.upload_blob(
                dest,
                _blob_source(source, blob),
                digest=blob.digest,
                size=blob.size,
                chunk_size=chunk_size,
                mount_from=mount_from,
            )
    target = dest.with_tag(tag) if tag else dest.with_digest(desc.digest)
    return await client.put_manifest(target, body, desc.media_type)


async def push_image(
    client: RegistryClient,
    source: str | oci.ImageReference,
    dest: str | RegistryReference,
    *,
    chunk_size: int | None = None,
    mount_from: str | None = None,
) -> str:
    """Push ``oci:DIR[:TAG]`` / ``oci-archive:FILE[:TAG]`` to ``docker://...``; returns
    the pushed manifest's (or index's) digest.  The destination tag defaults to the
    source tag, then ``latest``."""
    ref = oci.parse_reference(source) if isinstance(source, str) else source
    dest_ref = dest if isinstance(dest, RegistryReference) else parse_registry_reference(dest)
    src = oci.open_source(ref)
    index = src.read_index()
    if ref.tag is not None:
        candidates = [d for d in index.manifests if d.ref_name == ref.tag]
    else:
        candidates = list(index.manifests)
    if len(candidates) != 1:
        tags = sorted({d.ref_name for d in index.manifests if d.ref_name})
        raise oci.ImageNotFoundError(
            f"{ref}: {'no image' if not candidates else 'several images'} to push "
            f"(tags: {', '.join(tags) or 'none'}); name one with :TAG"
        )
    tag = dest_ref.tag or (None if dest_ref.digest else ref.tag or "latest")
    return await _push_manifest_tree(
        client, src, dest_ref, candidates[0], tag=tag, chunk_size=chunk_size, mount_from=mount_from
    )


async def pull_image(
    client: RegistryClient,
    source: str | RegistryReference,
    dest: str | oci.ImageReference,
    *,
    platform: oci.Platform | None = None,
) -> RemoteImage:
    """Pull ``docker://...`` (one platform) into ``oci:DIR[:TAG]`` / ``oci-archive:``.

    Every blob is verified while it streams; blobs the layout has are not fetched.
    """
    src = source if isinstance(source, RegistryReference) else parse_registry_reference(source)
    image = await client.resolve(src, platform)
    with oci.open_output(dest) as (layout, tag):
        for blob in (image.manifest.config, *image.layers):
            if layout.has_blob(blob.digest):
                continue
            with layout.blob_writer() as w:
                await client.download_blob(src, blob.digest, w, size=blob.size)
                try:
                    w.commit(blob.digest, blob.size)
                except oci.DigestMismatchError as exc:  # cannot happen after verification
                    raise RegistryDigestError(str(exc)) from None
        layout.add_manifest(
            image.manifest_bytes,
            tag or src.tag,
            media_type=image.descriptor.media_type,
            platform=image.config.platform if image.config else None,
        )
    return image


async def copy_image(client: RegistryClient, source: str, dest: str) -> str:
    """``oci:``/``oci-archive:`` → ``docker://`` (push) or ``docker://`` → ``oci:`` (pull).

    Returns the manifest digest."""
    if source.startswith("docker://") and not dest.startswith("docker://"):
        return (await pull_image(client, source, dest)).digest
    if dest.startswith("docker://") and not source.startswith("docker://"):
        return await push_image(client, source, dest)
    raise oci.BadReferenceError(
        f"copy {source} -> {dest}: one side must be docker:// and the other oci: or oci-archive:"
    )
