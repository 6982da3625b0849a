"""Software bills of materials from the ownership data, and how they ride along an image.

:func:`cyclonedx_sbom` turns an :class:`~chunkah.owners.Ownership` into a
CycloneDX 1.5 JSON document (a dict); :func:`sbom_json` gives the exact bytes we
write.  Both are pure: the same tree and build epoch give byte-identical output.
:func:`attach_sbom` stores a document in an OCI layout as an artifact whose
``subject`` is the image manifest (OCI 1.1 referrers); :func:`find_referrers`
lists such artifacts.  See docs/sbom.md for the field mapping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from chunkah import __version__
from chunkah.errors import InputError
from chunkah.oci import (
    ANNOTATION_REF_NAME,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobSource,
    Descriptor,
    Index,
    InvalidImageError,
    Manifest,
    OciLayout,
    format_created,
    read_blob,
)
from chunkah.owners import BinaryPackage, Component, Ownership, PathCanonicalizer
from chunkah.owners.model import BIGFILE_KIND, UNCLAIMED_KIND, XATTR_KIND
from chunkah.owners.purl import make_purl
from chunkah.owners.python_dist import canonical_project_name
from chunkah.owners.source import os_release
from chunkah.tree import Tree
from chunkah.tree.model import EntryType

__all__ = [
    "CYCLONEDX_MEDIA_TYPE",
    "CYCLONEDX_SPEC_VERSION",
    "SBOM_FORMATS",
    "attach_sbom",
    "attach_tree_sbom",
    "binary_purl",
    "canonical_purl",
    "created_epoch",
    "cyclonedx_sbom",
    "find_referrers",
    "referrers_tag",
    "sbom_json",
    "tree_sbom",
]

CYCLONEDX_MEDIA_TYPE = "application/vnd.cyclonedx+json"
CYCLONEDX_SPEC_VERSION = "1.5"
SBOM_FORMATS = ("cyclonedx",)

#: Ownership kinds that are package databases, and their purl types.
PURL_TYPES = {"dpkg": "deb", "rpm": "rpm", "alpm": "alpm", "apk": "apk", "python": "pypi"}

# serialNumber = uuid5(this, sha256 of the document without it): same content, same serial.
_SERIAL_NAMESPACE = uuid.UUID("5d6f3c1e-6a0b-5c1f-9a43-3e2f1b0c8d7a")

# The image-spec's empty descriptor: the two bytes "{}".
_EMPTY_JSON = b"{}"
_EMPTY_DESCRIPTOR = Descriptor(
    media_type=OCI_EMPTY,
    digest="sha256:" + hashlib.sha256(_EMPTY_JSON).hexdigest(),
    size=len(_EMPTY_JSON),
    extra={"data": "e30="},
)
_ANNOTATION_TITLE = "org.opencontainers.image.title"
_ANNOTATION_CREATED = "org.opencontainers.image.created"
SBOM_FILE_NAME = "sbom.cdx.json"


# -- package URLs --


def canonical_purl(purl: str) -> str:
    """A purl in the canonical form of the reference implementation (packageurl-python):
    every part percent-encoded except ``:``, which purl parsers never treat as a
    separator inside the version (``pkg:deb/debian/libc6@1:2.36-9``)."""
    return purl.replace("%3A", ":")


def _split_purl(purl: str) -> tuple[str, str, dict[str, str]]:
    """``(type, namespace, qualifiers)`` of a purl made by :func:`chunkah.owners.purl.make_purl`."""
    body, _, query = purl.removeprefix("pkg:").partition("?")
    segments = body.partition("@")[0].split("/")
    namespace = "/".join(unquote(s) for s in segments[1:-1])
    qualifiers: dict[str, str] = {}
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        qualifiers[key] = unquote(value)
    return segments[0], namespace, qualifiers


def binary_purl(component: Component, package: BinaryPackage) -> str | None:
    """The purl of one binary package of ``component``, or None for non-packages.

    The namespace and the ``distro`` qualifier come from the component's own
    (source) purl, so binaries and their source always agree; ``arch`` is the
    binary's; an rpm epoch becomes the ``epoch`` qualifier as the purl spec asks
    (deb and alpm keep it in the version).
    """
    type_ = PURL_TYPES.get(component.kind)
    if type_ is None or not component.purl:
        return None
    _, namespace, qualifiers = _split_purl(component.purl)
    qualifiers.pop("epoch", None)
    qualifiers["arch"] = package.arch
    name, version = package.name, package.version
    if type_ == "rpm":
        epoch, sep, rest = version.partition(":")
        if sep and epoch.isdigit():
            version, qualifiers["epoch"] = rest, epoch
    elif type_ == "pypi":
        name, namespace, qualifiers = canonical_project_name(name), "", {}
    return canonical_purl(
        make_purl(type_, name, version, namespace=namespace, qualifiers=qualifiers)
    )


# -- the CycloneDX document --


def _properties(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs if v]


class _RefAllocator:
    """bom-refs, unique within one document (a clash gets ``#2``, ``#3``...)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, want: str) -> str:
        n = self._seen.get(want, 0) + 1
        self._seen[want] = n
        return want if n == 1 else f"{want}#{n}"


def _package_components(comp: Component, refs: _RefAllocator) -> Iterator[dict[str, Any]]:
    source_props = [
        ("chunkah:component", comp.name),
        ("chunkah:component:version", comp.version),
        ("chunkah:component:purl", canonical_purl(comp.purl or "")),
    ]
    for pkg in sorted(comp.packages):
        purl = binary_purl(comp, pkg)
        out: dict[str, Any] = {
            "type": "library",
            "bom-ref": refs(purl or f"{comp.name}/{pkg.name}@{pkg.version}"),
            "name": pkg.name,
        }
        if pkg.version:
            out["version"] = pkg.version
        if purl:
            out["purl"] = purl
        out["properties"] = _properties(source_props)
        yield out


def _sha256_of(tree: Tree, path: bytes) -> str | None:
    """sha256 of a regular file of the tree (following its hardlink group), or None."""
    entry = tree.get(path)
    if entry is not None and entry.content is None and entry.hardlink_group:
        entry = tree.get(entry.hardlink_group)
    if entry is None or entry.type is not EntryType.FILE or entry.content is None:
        return None
    h = hashlib.sha256()
    try:
        with entry.content.open() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        shown = path.decode("utf-8", "replace")
        raise InputError(f"/{shown}: cannot read it for the SBOM: {exc.strerror}") from exc
    return h.hexdigest()


def _file_component(
    ownership: Ownership, comp: Component, refs: _RefAllocator
) -> dict[str, Any] | None:
    paths = ownership.paths_of(comp.name)
    if not paths:
        return None
    first = paths[0]
    out: dict[str, Any] = {
        "type": "file",
        "bom-ref": refs(f"chunkah:{comp.name}"),
        "name": "/" + first.decode("utf-8", "replace"),
    }
    digest = _sha256_of(ownership.tree, first)
    if digest:
        out["hashes"] = [{"alg": "SHA-256", "content": digest}]
    out["properties"] = _properties(
        [("chunkah:component", comp.name), ("chunkah:bytes", str(ownership.bytes_of(comp.name)))]
    )
    return out


def _xattr_component(ownership: Ownership, comp: Component, refs: _RefAllocator) -> dict[str, Any]:
    return {
        "type": "application",
        "bom-ref": refs(f"chunkah:{comp.name}"),
        "name": comp.name.partition("/")[2] or comp.name,
        "properties": _properties(
            [
                ("chunkah:component", comp.name),
                ("chunkah:bytes", str(ownership.bytes_of(comp.name))),
            ]
        ),
    }


def _os_component(tree: Tree, refs: _RefAllocator) -> dict[str, Any] | None:
    osr = os_release(tree, PathCanonicalizer(tree))
    name = osr.get("ID")
    if not name:
        return None
    version = osr.get("VERSION_ID", "")
    out: dict[str, Any] = {
        "type": "operating-system",
        "bom-ref": refs(f"os:{name}@{version}" if version else f"os:{name}"),
        "name": name,
    }
    if version:
        out["version"] = version
    if osr.get("PRETTY_NAME"):
        out["description"] = osr["PRETTY_NAME"]
    out["properties"] = _properties(
        [("chunkah:os-release:VERSION_CODENAME", osr.get("VERSION_CODENAME", ""))]
    )
    if not out["properties"]:
        del out["properties"]
    return out


def _serial_number(bom: Mapping[str, Any]) -> str:
    content = json.dumps(bom, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    name = hashlib.sha256(content.encode()).hexdigest()
    return f"urn:uuid:{uuid.uuid5(_SERIAL_NAMESPACE, name)}"


def cyclonedx_sbom(
    ownership: Ownership,
    *,
    source_description: str,
    build_epoch: int,
    image_digest: str | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.5 BOM (JSON-ready dict) of the tree ``ownership`` was made from.

    - one ``library`` component per binary package of every package component
      (dpkg, rpm, alpm, apk, Python), with its version, purl and properties naming
      the chunkah component (source package) it belongs to;
    - one ``operating-system`` component from the tree's ``os-release``;
    - ``xattr/NAME`` components as ``application``, ``bigfile/PATH`` components as
      ``file`` with their SHA-256 (read from the tree); ``chunkah/unclaimed`` is not
      listed, its size is a metadata property;
    - ``metadata.component`` is the image (``source_description``; its manifest
      digest as version when ``image_digest`` is given); ``metadata.timestamp`` is
      ``build_epoch``; ``serialNumber`` is derived from the content.

    Same ownership, description, epoch and digest: the same dict, and through
    :func:`sbom_json` the same bytes.
    """
    refs = _RefAllocator()
    components: list[dict[str, Any]] = []
    os_comp = _os_component(ownership.tree, refs)
    if os_comp is not None:
        components.append(os_comp)
    for comp in ownership.components():
        if comp.kind in PURL_TYPES:
            components.extend(_package_components(comp, refs))
        elif comp.kind == XATTR_KIND:
            components.append(_xattr_component(ownership, comp, refs))
        elif comp.kind == BIGFILE_KIND:
            file_comp = _file_component(ownership, comp, refs)
            if file_comp is not None:
                components.append(file_comp)
        # UNCLAIMED_KIND and unknown kinds: not components (see docs/sbom.md).

    subject: dict[str, Any] = {
        "type": "container",
        "bom-ref": refs("chunkah:image"),
        "name": source_description,
    }
    if image_digest:
        subject["version"] = image_digest
        alg, _, hexpart = image_digest.partition(":")
        if alg == "sha256":
            subject["hashes"] = [{"alg": "SHA-256", "content": hexpart}]
    unclaimed = sum(
        ownership.bytes_of(c.name) for c in ownership.components() if c.kind == UNCLAIMED_KIND
    )
    metadata: dict[str, Any] = {
        "timestamp": format_created(build_epoch),
        "tools": {
            "components": [
                {
                    "type": "application",
                    "name": "chunkah",
                    "version": __version__,
                }
            ]
        },
        "component": subject,
        "properties": [
            {"name": "chunkah:bytes:total", "value": str(ownership.total_bytes)},
            {"name": "chunkah:bytes:unclaimed", "value": str(unclaimed)},
        ],
    }
    bom: dict[str, Any] = {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC_VERSION,
        "version": 1,
        "metadata": metadata,
        "components": components,
    }
    serial = _serial_number(bom)
    # serialNumber goes right after specVersion, where readers expect it.
    return {
        "$schema": bom["$schema"],
        "bomFormat": bom["bomFormat"],
        "specVersion": bom["specVersion"],
        "serialNumber": serial,
        "version": 1,
        "metadata": metadata,
        "components": components,
    }


def sbom_json(bom: Mapping[str, Any]) -> bytes:
    """The bytes written for a BOM: UTF-8, 2-space indent, keys in document order,
    one trailing newline."""
    return (json.dumps(bom, indent=2, ensure_ascii=False) + "\n").encode()


# -- attaching to an image (OCI 1.1 referrers) --


def _subject(desc: Descriptor) -> dict[str, Any]:
    # Only what identifies the manifest: a tag in the subject would change the
    # artifact's digest whenever the image is re-tagged.
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def _manifest_of(source: BlobSource, desc: Descriptor) -> dict[str, Any] | None:
    if desc.media_type not in MANIFEST_TYPES or desc.size > MAX_MANIFEST_SIZE:
        return None
    try:
        obj = json.loads(read_blob(source, desc, max_size=MAX_MANIFEST_SIZE))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidImageError(f"manifest {desc.digest}: not valid JSON") from None
    return obj if isinstance(obj, dict) else None


def _artifact_type(manifest: Mapping[str, Any]) -> str | None:
    """``artifactType``, else the config media type, as the referrers API reports it."""
    value = manifest.get("artifactType")
    if isinstance(value, str):
        return value
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return None


def find_referrers(
    layout: BlobSource, digest: str, artifact_type: str | None = None
) -> list[Descriptor]:
    """The manifests of ``layout``'s ``index.json`` whose ``subject`` is ``digest``.

    What a registry's referrers API (``GET /v2/NAME/referrers/DIGEST``) would list:
    descriptors with ``artifactType`` (in ``extra``) and the manifest's
    annotations, filtered by ``artifact_type`` when given, sorted by digest.
    """
    found: dict[str, Descriptor] = {}
    for desc in layout.read_index().manifests:
        if desc.digest in found:
            continue
        manifest = _manifest_of(layout, desc)
        if manifest is None:
            continue
        subject = manifest.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            continue
        kind = _artifact_type(manifest)
        if artifact_type is not None and kind != artifact_type:
            continue
        annotations = manifest.get("annotations")
        found[desc.digest] = Descriptor(
            media_type=desc.media_type,
            digest=desc.digest,
            size=desc.size,
            annotations=dict(annotations) if isinstance(annotations, dict) else {},
            extra={"artifactType": kind} if kind else {},
        )
    return [found[d] for d in sorted(found)]


def referrers_tag(digest: str) -> str:
    """The distribution spec's referrers tag schema: ``sha256:HEX`` -> ``sha256-HEX``."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}"[:128]


_FALLBACK_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})$")


def attach_sbom(
    layout: OciLayout,
    subject: Descriptor,
    document: bytes,
    *,
    created: int | None = None,
    media_type: str = CYCLONEDX_MEDIA_TYPE,
    fallback_tag: bool = True,
) -> Descriptor:
    """Store ``document`` as an artifact referring to the image manifest ``subject``.

    The artifact is an OCI image manifest with ``artifactType`` = ``media_type``,
    the empty config and the document as its one layer, and ``subject`` = the
    image manifest.  It is added to ``index.json`` *without* a tag (its descriptor
    carries ``artifactType``), replacing an identical entry.  With
    ``fallback_tag`` an image index listing every referrer of ``subject`` is
    tagged ``sha256-HEX`` (the distribution spec's referrers tag schema), which
    lets ``skopeo copy --all oci:DIR:sha256-HEX docker://...`` push the SBOM to a
    registry without the referrers API.  Untagged SBOM artifacts and fallback
    tags whose subject left ``index.json`` are dropped.  Returns the artifact
    manifest's descriptor.
    """
    layer = layout.write_json_blob(document, media_type)
    layer = Descriptor(
        media_type=layer.media_type,
        digest=layer.digest,
        size=layer.size,
        annotations={_ANNOTATION_TITLE: SBOM_FILE_NAME},
    )
    layout.write_blob(_EMPTY_JSON, expected_digest=_EMPTY_DESCRIPTOR.digest)
    manifest = Manifest(
        config=_EMPTY_DESCRIPTOR,
        layers=(layer,),
        media_type=OCI_MANIFEST,
        annotations={_ANNOTATION_CREATED: format_created(created)} if created is not None else {},
        extra={"artifactType": media_type, "subject": _subject(subject)},
    )
    stored = layout.write_json_blob(manifest.to_json(), OCI_MANIFEST)
    desc = Descriptor(
        media_type=OCI_MANIFEST,
        digest=stored.digest,
        size=stored.size,
        extra={"artifactType": media_type},
    )
    index = layout.read_index()
    present = {d.digest for d in index.manifests}
    kept = [
        d
        for d in index.manifests
        if not (d.digest == desc.digest and not d.ref_name)
        and not _is_dangling(layout, d, present, media_type)
    ]
    layout.write_index(
        Index(
            manifests=(*kept, desc),
            media_type=index.media_type,
            annotations=index.annotations,
            extra=index.extra,
        )
    )
    if fallback_tag:
        referrers = find_referrers(layout, subject.digest)
        listing = Index(manifests=tuple(referrers), media_type=OCI_INDEX)
        layout.add_manifest(listing.to_json(), referrers_tag(subject.digest), media_type=OCI_INDEX)
    return desc


def _is_dangling(layout: OciLayout, desc: Descriptor, present: set[str], media_type: str) -> bool:
    """An untagged SBOM artifact, or a referrers fallback tag, whose subject left
    ``index.json`` (the image tag was rebuilt)."""
    tag = desc.annotations.get(ANNOTATION_REF_NAME)
    if tag:
        m = _FALLBACK_TAG.match(tag)
        if m is None or desc.media_type != OCI_INDEX:
            return False
        return f"{m[1]}:{m[2]}" not in present
    if desc.extra.get("artifactType") != media_type:
        return False
    manifest = _manifest_of(layout, desc)
    subject = manifest.get("subject") if manifest else None
    return isinstance(subject, dict) and subject.get("digest") not in present


def tree_sbom(
    tree: Tree,
    *,
    source_description: str,
    build_epoch: int,
    image_digest: str | None = None,
) -> bytes:
    """:func:`cyclonedx_sbom` of a tree's ownership, as :func:`sbom_json` bytes."""
    from chunkah.owners import assign_components

    ownership = assign_components(tree, build_epoch=build_epoch)
    return sbom_json(
        cyclonedx_sbom(
            ownership,
            source_description=source_description,
            build_epoch=build_epoch,
            image_digest=image_digest,
        )
    )


def attach_tree_sbom(
    layout: OciLayout,
    image: Descriptor,
    tree: Tree,
    *,
    name: str,
    build_epoch: int,
) -> Descriptor:
    """Build the CycloneDX SBOM of ``tree`` for the image manifest ``image`` (named
    ``name``, its digest as version) and attach it; what ``chunkah build --sbom`` does."""
    document = tree_sbom(
        tree, source_description=name, build_epoch=build_epoch, image_digest=image.digest
    )
    return attach_sbom(layout, image, document, created=build_epoch)


def created_epoch(created: str | None) -> int:
    """Epoch seconds of an image config's ``created`` (RFC 3339), else now."""
    if created:
        text = created.strip().replace("Z", "+00:00")
        with contextlib.suppress(ValueError):
            # Go writes nanoseconds; fromisoformat takes at most microseconds.
            text = re.sub(r"(\.\d{6})\d+", r"\1", text)
            return int(datetime.fromisoformat(text).timestamp())
    return int(time.time())
