"""Values of the OCI image spec: descriptors, manifests, indexes, image configs.

All are frozen dataclasses.  ``from_dict`` validates what a hostile layout could put
there; ``to_dict`` gives the JSON object; :func:`canonical_json` turns it into the
exact bytes we write, and those bytes define the digests.  Fields we do not model
are kept in ``extra`` and written back unchanged, so reading and re-writing a
foreign document loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import media_types as mt
from .errors import InvalidImageError

__all__ = [
    "ANNOTATION_REF_NAME",
    "Descriptor",
    "HistoryEntry",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "canonical_json",
    "parse_digest",
    "sha256_digest",
]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# Registered algorithms of the image spec and their hex lengths.
_DIGEST_RE = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")
_HEX_LEN = {"sha256": 64, "sha512": 128}


def canonical_json(obj: Any) -> bytes:
    """The bytes we write for a JSON document: sorted keys, no spaces, UTF-8.

    Deterministic for equal inputs, accepted by skopeo, podman, docker and umoci.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_digest(digest: str) -> tuple[str, str]:
    """Split and validate ``alg:hex``; only lowercase sha256/sha512 are accepted."""
    m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not m or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        raise InvalidImageError(f"invalid digest {digest!r} (expected sha256:<64 hex>)")
    return m.group(1), m.group(2)


def _parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidImageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidImageError(f"{what} is not a JSON object")
    return obj


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidImageError(f"{what} must map strings to strings")
    return dict(value)


def _opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidImageError(f"{what}: {key!r} must be a string")
    return value


def _extra(obj: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


@dataclass(frozen=True)
class Platform:
    """Where an image runs: ``os``/``architecture``[/``variant``] as in Go's GOOS/GOARCH."""

    architecture: str
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, obj: Any) -> Platform:
        if not isinstance(obj, dict):
            raise InvalidImageError("platform must be a JSON object")
        arch = _opt_str(obj, "architecture", "platform")
        os_ = _opt_str(obj, "os", "platform")
        if not arch or not os_:
            raise InvalidImageError("platform needs 'architecture' and 'os'")
        feats = obj.get("os.features") or []
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            raise InvalidImageError("platform 'os.features' must be a list of strings")
        return cls(
            architecture=arch,
            os=os_,
            variant=_opt_str(obj, "variant", "platform") or None,
            os_version=_opt_str(obj, "os.version", "platform") or None,
            os_features=tuple(feats),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


@dataclass(frozen=True)
class Descriptor:
    """A typed pointer to a blob: media type, digest, size (+ annotations, platform)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_digest(self.digest)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InvalidImageError(f"descriptor {self.digest}: invalid size {self.size!r}")

    @property
    def ref_name(self) -> str | None:
        """The tag stored in ``org.opencontainers.image.ref.name``, if any."""
        return self.annotations.get(ANNOTATION_REF_NAME)

    @classmethod
    def from_dict(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidImageError("descriptor must be a JSON object")
        media_type = _opt_str(obj, "mediaType", "descriptor")
        digest = obj.get("digest")
        size = obj.get("size")
        if not media_type or not isinstance(digest, str) or not isinstance(size, int):
            raise InvalidImageError("descriptor needs 'mediaType', 'digest' and 'size'")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidImageError("descriptor 'urls' must be a list of strings")
        platform = obj.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=_str_map(obj.get("annotations"), "descriptor annotations"),
            platform=Platform.from_dict(platform) if platform is not None else None,
            urls=tuple(urls),
            extra=_extra(obj, {"mediaType", "digest", "size", "annotations", "platform", "urls"}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(mediaType=self.media_type, digest=self.digest, size=self.size)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.urls:
            out["urls"] = list(self.urls)
        return out


def _descriptors(value: Any, what: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise InvalidImageError(f"{what} must be a list")
    return tuple(Descriptor.from_dict(d) for d in value)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mt.OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """Parse and validate; ``media_type`` is the descriptor's, used if the body has none."""
        obj = _parse_json_object(data, "manifest")
        if obj.get("schemaVersion") != 2:
            raise InvalidImageError(
                f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r} (need 2)"
            )
        body_type = _opt_str(obj, "mediaType", "manifest")
        kind = body_type or media_type or mt.OCI_MANIFEST
        if kind not in mt.MANIFEST_TYPES:
            raise InvalidImageError(f"not an image manifest: media type {kind!r}")
        if "config" not in obj or "layers" not in obj:
            raise InvalidImageError("manifest needs 'config' and 'layers'")
        return cls(
            config=Descriptor.from_dict(obj["config"]),
            layers=_descriptors(obj["layers"], "manifest 'layers'"),
            media_type=kind,
            annotations=_str_map(obj.get("annotations"), "manifest annotations"),
            extra=_extra(obj, {"schemaVersion", "mediaType", "config", "layers", "annotations"}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            schemaVersion=2,
            mediaType=self.media_type,
            config=self.config.to_dict(),
            layers=[d.to_dict() for d in self.layers],
        )
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class Index:
    """An image index / Docker manifest list, and the ``index.json`` of a layout."""

    manifests: tuple[Descriptor, ...] = ()
    media_type: str | None = mt.OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes, media_type: str | None = None) -> Index:
        obj = _parse_json_object(data, "index")
        if obj.get("schemaVersion") != 2:
            raise InvalidImageError(
                f"unsupported index schemaVersion {obj.get('schemaVersion')!r} (need 2)"
            )
        kind = _opt_str(obj, "mediaType", "index") or media_type
        if kind is not None and kind not in mt.INDEX_TYPES:
            raise InvalidImageError(f"not an image index: media type {kind!r}")
        return cls(
            manifests=_descriptors(obj.get("manifests", []), "index 'manifests'"),
            media_type=kind,
            annotations=_str_map(obj.get("annotations"), "index annotations"),
            extra=_extra(obj, {"schemaVersion", "mediaType", "manifests", "annotations"}),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["schemaVersion"] = 2
        if self.media_type:
            out["mediaType"] = self.media_type
        out["manifests"] = [d.to_dict() for d in self.manifests]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class HistoryEntry:
    """One ``history`` item of an image config."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    @classmethod
    def from_dict(cls, obj: Any) -> HistoryEntry:
        if not isinstance(obj, dict):
            raise InvalidImageError("config history entries must be JSON objects")
        return cls(
            created=_opt_str(obj, "created", "history"),
            created_by=_opt_str(obj, "created_by", "history"),
            author=_opt_str(obj, "author", "history"),
            comment=_opt_str(obj, "comment", "history"),
            empty_layer=bool(obj.get("empty_layer", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("created", "created_by", "author", "comment"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An OCI image config (``application/vnd.oci.image.config.v1+json``).

    ``config`` is the execution-parameters object (``User``, ``Env``, ``Cmd``,
    ``Labels`` ...) kept as plain JSON; ``extra`` holds unmodelled top-level keys.
    """

    architecture: str
    os: str = "linux"
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    diff_ids: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        labels = self.config.get("Labels") or {}
        return dict(labels) if isinstance(labels, dict) else {}

    @property
    def platform(self) -> Platform:
        return Platform(architecture=self.architecture, os=self.os, variant=self.variant)

    @classmethod
    def from_dict(cls, obj: Any) -> ImageConfig:
        if not isinstance(obj, dict):
            raise InvalidImageError("image config is not a JSON object")
        arch = _opt_str(obj, "architecture", "image config")
        os_ = _opt_str(obj, "os", "image config")
        if not arch or not os_:
            raise InvalidImageError("image config needs 'architecture' and 'os'")
        rootfs = obj.get("rootfs") or {"type": "layers", "diff_ids": []}
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise InvalidImageError("image config 'rootfs' must have type 'layers'")
        diff_ids = rootfs.get("diff_ids") or []
        if not isinstance(diff_ids, list):
            raise InvalidImageError("image config 'rootfs.diff_ids' must be a list")
        for d in diff_ids:
            parse_digest(d)
        history = obj.get("history") or []
        if not isinstance(history, list):
            raise InvalidImageError("image config 'history' must be a list")
        config = obj.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidImageError("image config 'config' must be a JSON object")
        if "Labels" in config and config["Labels"] is not None:
            _str_map(config["Labels"], "config labels")
        return cls(
            architecture=arch,
            os=os_,
            variant=_opt_str(obj, "variant", "image config") or None,
            created=_opt_str(obj, "created", "image config"),
            author=_opt_str(obj, "author", "image config"),
            config=config,
            diff_ids=tuple(diff_ids),
            history=tuple(HistoryEntry.from_dict(h) for h in history),
            extra=_extra(
                obj,
                {
                    "architecture",
                    "os",
                    "variant",
                    "created",
                    "author",
                    "config",
                    "rootfs",
                    "history",
                },
            ),
        )

    @classmethod
    def from_json(cls, data: bytes) -> ImageConfig:
        return cls.from_dict(_parse_json_object(data, "image config"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(architecture=self.architecture, os=self.os)
        if self.variant:
            out["variant"] = self.variant
        if self.created is not None:
            out["created"] = self.created
        if self.author is not None:
            out["author"] = self.author
        out["config"] = dict(self.config)
        out["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        if self.history:
            out["history"] = [h.to_dict() for h in self.history]
        return out

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


def descriptors_for_tag(index: Index, tag: str) -> list[Descriptor]:
    """The entries of ``index`` carrying ``tag`` as their ref.name annotation."""
    return [d for d in index.manifests if d.ref_name == tag]
