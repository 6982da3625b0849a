"""Delta artifacts: an OCI 1.1 artifact manifest whose ``subject`` is the target image
(docs/delta.md §1).  Writing one into a layout or a registry, finding one for a
(current → target) pair, and reading its index.

Registries with the referrers API list the artifact by itself; for the others
(distribution 2.8) an image index tagged ``sha256-<hex of the target digest>`` lists
it, as the distribution spec's referrers tag schema says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chunkah import oci
from chunkah.delta.index import DeltaIndexError, DeltaOffer, decode_index, encode_index
from chunkah.oci import media_types as mt
from chunkah.registry.client import RegistryClient
from chunkah.registry.errors import RegistryNotFoundError
from chunkah.registry.reference import RegistryReference

__all__ = [
    "ANNOTATION_FROM",
    "ARTIFACT_TYPE",
    "DATA_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "DeltaArtifact",
    "FoundDeltas",
    "find_deltas",
    "make_artifact",
    "push_artifact",
    "write_artifact",
]

ARTIFACT_TYPE = "application/vnd.chunkah.delta.v1"
INDEX_MEDIA_TYPE = "application/vnd.chunkah.delta.index.v1+zstd"
DATA_MEDIA_TYPE = "application/vnd.chunkah.delta.data.v1"
ANNOTATION_FROM = "org.chunkah.delta.v1.from"
ANNOTATION_TO = "org.chunkah.delta.v1.to"
MAX_INDEX_BLOB = 64 << 20

_EMPTY_JSON = b"{}"
EMPTY_CONFIG = oci.Descriptor(
    media_type=mt.OCI_EMPTY,
    digest="sha256:" + hashlib.sha256(_EMPTY_JSON).hexdigest(),
    size=len(_EMPTY_JSON),
    extra={"data": "e30="},
)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def referrers_tag(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}"[:128]


@dataclass(frozen=True)
class DeltaArtifact:
    """Everything one artifact consists of, ready to store."""

    manifest: bytes
    index: bytes
    data: bytes
    subject: oci.Descriptor
    from_digest: str

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    def descriptor(self) -> oci.Descriptor:
        """As a referrers listing shows it: artifactType and the manifest's annotations."""
        return oci.Descriptor(
            media_type=mt.OCI_MANIFEST,
            digest=self.digest,
            size=len(self.manifest),
            annotations={ANNOTATION_FROM: self.from_digest, ANNOTATION_TO: self.subject.digest},
            extra={"artifactType": ARTIFACT_TYPE},
        )


def make_artifact(
    offers: list[DeltaOffer], data: bytes, *, subject: oci.Descriptor, from_digest: str
) -> DeltaArtifact:
    """The artifact for deltas ``from_digest`` → ``subject`` (reproducible: no timestamps)."""
    index = encode_index(offers, len(data))
    layers = (
        oci.Descriptor(INDEX_MEDIA_TYPE, _digest(index), len(index)),
        oci.Descriptor(DATA_MEDIA_TYPE, _digest(data), len(data)),
    )
    manifest = oci.Manifest(
        config=EMPTY_CONFIG,
        layers=layers,
        media_type=mt.OCI_MANIFEST,
        annotations={ANNOTATION_FROM: from_digest, ANNOTATION_TO: subject.digest},
        extra={
            "artifactType": ARTIFACT_TYPE,
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": subject.size,
            },
        },
    )
    return DeltaArtifact(manifest.to_json(), index, data, subject, from_digest)


def _listing(existing: list[oci.Descriptor], artifact: DeltaArtifact) -> bytes:
    """The fallback tag's index: every referrer kept, one delta artifact per source."""
    kept = [
        d
        for d in existing
        if d.digest != artifact.digest
        and not (
            d.extra.get("artifactType") == ARTIFACT_TYPE
            and d.annotations.get(ANNOTATION_FROM) == artifact.from_digest
        )
    ]
    return oci.Index(manifests=(*kept, artifact.descriptor()), media_type=mt.OCI_INDEX).to_json()


def write_artifact(layout: oci.OciLayout, artifact: DeltaArtifact) -> None:
    """Store the artifact in an OCI layout: blobs, an untagged index.json entry, and
    the ``sha256-HEX`` fallback tag (so ``chunkah serve`` lists it by the referrers
    API and a copy to a registry without one keeps it discoverable)."""
    layout.write_blob(_EMPTY_JSON, expected_digest=EMPTY_CONFIG.digest)
    layout.write_blob(artifact.index)
    layout.write_blob(artifact.data)
    layout.write_blob(artifact.manifest)
    index = layout.read_index()
    tag = referrers_tag(artifact.subject.digest)
    previous: list[oci.Descriptor] = []
    for d in index.manifests:
        if d.ref_name == tag:
            listing = oci.Index.from_json(layout.blob_path(d.digest).read_bytes(), mt.OCI_INDEX)
            previous = list(listing.manifests)
    kept = [d for d in index.manifests if d.digest != artifact.digest or d.ref_name]
    layout.write_index(
        oci.Index(
            manifests=(*kept, artifact.descriptor()),
            media_type=index.media_type,
            annotations=index.annotations,
            extra=index.extra,
        )
    )
    layout.add_manifest(_listing(previous, artifact), tag, media_type=mt.OCI_INDEX)


async def push_artifact(
    client: RegistryClient, repo: RegistryReference, artifact: DeltaArtifact
) -> str:
    """Push the artifact into ``repo`` (the target image's repository).

    Returns how it is discoverable: ``"referrers"`` (the registry lists it by its
    subject) or ``"tag"`` (the fallback index was written).
    """
    await client.upload_blob(repo, _EMPTY_JSON, digest=EMPTY_CONFIG.digest, size=2)
    await client.upload_blob(repo, artifact.index)
    await client.upload_blob(repo, artifact.data)
    await client.put_manifest(repo.with_digest(artifact.digest), artifact.manifest, mt.OCI_MANIFEST)
    listed = await client.referrers(
        repo, artifact.subject.digest, artifact_type=ARTIFACT_TYPE, fallback=False
    )
    if listed is not None and any(d.digest == artifact.digest for d in listed):
        return "referrers"
    tag_ref = repo.with_tag(referrers_tag(artifact.subject.digest))
    try:
        fetched = await client.get_manifest(tag_ref, accept=(mt.OCI_INDEX,))
        existing = list(oci.Index.from_json(fetched.body, fetched.media_type).manifests)
    except RegistryNotFoundError:
        existing = []
    await client.put_manifest(tag_ref, _listing(existing, artifact), mt.OCI_INDEX)
    return "tag"


@dataclass(frozen=True)
class FoundDeltas:
    """The deltas a registry offers for (current → target), index verified."""

    artifact: str  # manifest digest
    offers: list[DeltaOffer]
    data: oci.Descriptor
    index_bytes: int  # bytes of the index blob


async def find_deltas(
    client: RegistryClient, ref: RegistryReference, target: str, current: str
) -> FoundDeltas | None:
    """The delta artifact for ``current`` → ``target`` in ``ref``'s repository, if any.

    Raises on a malformed artifact or index (the caller falls back to chunks).
    """
    listed = await client.referrers(ref, target, artifact_type=ARTIFACT_TYPE)
    for desc in listed or []:
        if desc.annotations.get(ANNOTATION_FROM) not in (None, current):
            continue
        fetched = await client.get_manifest(ref.with_digest(desc.digest), accept=(mt.OCI_MANIFEST,))
        manifest = oci.Manifest.from_json(fetched.body, fetched.media_type)
        subject = manifest.extra.get("subject")
        if (
            manifest.extra.get("artifactType") != ARTIFACT_TYPE
            or not isinstance(subject, dict)
            or subject.get("digest") != target
            or manifest.annotations.get(ANNOTATION_FROM) != current
        ):
            continue
        if len(manifest.layers) != 2 or [d.media_type for d in manifest.layers] != [
            INDEX_MEDIA_TYPE,
            DATA_MEDIA_TYPE,
        ]:
            raise DeltaIndexError(f"delta artifact {desc.digest}: unexpected layers")
        index_desc, data_desc = manifest.layers
        blob = await client.get_blob_bytes(ref, index_desc, max_size=MAX_INDEX_BLOB)
        offers, data_size = decode_index(blob)
        if data_size != data_desc.size:
            raise DeltaIndexError(
                f"delta artifact {desc.digest}: index says {data_size} data bytes, "
                f"the manifest {data_desc.size}"
            )
        return FoundDeltas(desc.digest, offers, data_desc, len(blob))
    return None
