"""Deriving the config of an image we build: from an OCI config or ``podman/docker
inspect`` output, with label edits, architecture aliases and a reproducible
``created`` time.  Pure functions, no I/O beyond reading the base file.
"""

from __future__ import annotations

import json
import os
import platform as _platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import media_types as mt
from .errors import ConfigError, InvalidImageError
from .model import Descriptor, HistoryEntry, ImageConfig, Manifest, Platform, parse_digest

__all__ = [
    "LayerHistory",
    "apply_label_edits",
    "build_config",
    "build_manifest",
    "config_from_inspect",
    "format_created",
    "host_platform",
    "load_base_config",
    "normalize_arch",
    "parse_annotations",
    "parse_label_edits",
    "source_date_epoch",
]

# Kernel / distro spellings -> (GOARCH, variant).  The OCI spec uses Go's names.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv8": ("arm64", None),
    "armv8l": ("arm", "v7"),  # 32-bit userland on a 64-bit core
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "arm": ("arm", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "loongarch64": ("loong64", None),
    "loong64": ("loong64", None),
    "mips64el": ("mips64le", None),
    "mips64le": ("mips64le", None),
    "mips64": ("mips64", None),
    "mipsel": ("mipsle", None),
    "mipsle": ("mipsle", None),
    "mips": ("mips", None),
}
_VARIANTS = {"arm": {"v5", "v6", "v7", "v8"}, "arm64": {"v8", "v9"}}

# The execution parameters an OCI config may carry (image-spec config.md), plus the
# Docker extensions podman and docker keep.  Runtime-only inspect fields are dropped.
_CONFIG_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
)


def normalize_arch(arch: str) -> tuple[str, str | None]:
    """``(GOARCH, variant)`` for an architecture name or ``arch/variant``.

    >>> normalize_arch("x86_64"), normalize_arch("armv7l"), normalize_arch("arm64/v8")
    (('amd64', None), ('arm', 'v7'), ('arm64', None))
    """
    name, _, variant = arch.strip().lower().partition("/")
    try:
        goarch, alias_variant = _ARCH_ALIASES[name]
    except KeyError:
        known = ", ".join(sorted({a for a, _ in _ARCH_ALIASES.values()}))
        raise ConfigError(
            f"unknown architecture {arch!r} (use one of {known}, or an alias such as "
            "x86_64, aarch64, armv7l, i686; 'arm/v6' for a variant)"
        ) from None
    chosen = variant or alias_variant
    if chosen:
        if chosen not in _VARIANTS.get(goarch, set()):
            raise ConfigError(f"architecture {goarch!r} has no variant {chosen!r}")
        if goarch == "arm64" and chosen == "v8":
            chosen = None  # the default; the spec lets us omit it
    return goarch, chosen


def host_platform() -> Platform:
    """The platform of this machine (linux plus the normalised ``uname -m``)."""
    arch, variant = normalize_arch(_platform.machine() or "amd64")
    return Platform(architecture=arch, os="linux", variant=variant)


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int | None:
    """``SOURCE_DATE_EPOCH`` as an int, None when unset or empty."""
    value = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "")
    if not value.strip():
        return None
    try:
        epoch = int(value.strip())
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None
    if epoch < 0:
        raise ConfigError(f"SOURCE_DATE_EPOCH={value!r} is negative")
    return epoch


def format_created(epoch: int) -> str:
    """RFC 3339 UTC with a ``Z`` and no fraction, as Go writes a whole-second time."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_kv(items: Iterable[str], what: str) -> Iterator[tuple[str, str | None]]:
    for item in items:
        if "=" in item:
            key, _, value = item.partition("=")
            if not key:
                raise ConfigError(f"{what} {item!r}: empty key (write KEY=VALUE)")
            yield key, value
        elif item.endswith("-") and len(item) > 1:
            yield item[:-1], None
        else:
            raise ConfigError(f"{what} {item!r}: write KEY=VALUE to set or KEY- to remove")


def parse_label_edits(items: Iterable[str]) -> list[tuple[str, str | None]]:
    """``K=V`` sets label K, ``K-`` removes it; kept in order (later edits win)."""
    return list(_split_kv(items, "label"))


def parse_annotations(items: Iterable[str]) -> dict[str, str]:
    """``K=V`` items for manifest annotations (``K-`` is refused here)."""
    out: dict[str, str] = {}
    for key, value in _split_kv(items, "annotation"):
        if value is None:
            raise ConfigError(f"annotation {key}-: removal makes no sense for a new manifest")
        out[key] = value
    return out


def apply_label_edits(
    labels: Mapping[str, str], edits: Sequence[tuple[str, str | None]]
) -> dict[str, str]:
    """``labels`` with the edits applied (``None`` value = remove)."""
    out = dict(labels)
    for key, value in edits:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _clean_config(config: Any) -> dict[str, Any]:
    """Keep the execution parameters a config may carry; drop nulls and empties."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError("inspect JSON: 'Config' must be an object")
    out: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        value = config.get(key)
        if value in (None, "", [], {}):
            continue
        out[key] = value
    return out


def config_from_inspect(data: Any) -> ImageConfig:
    """An OCI config from ``podman inspect`` / ``docker inspect`` output.

    Accepts the list those commands print (exactly one image) or its one object.
    Copies ``Config`` (execution parameters), ``Architecture``, ``Os``, ``Variant``,
    ``Author`` and podman's top-level ``Labels``; layers and history are not copied,
    since the image we build has its own.
    """
    if isinstance(data, list):
        if len(data) != 1:
            raise ConfigError(f"inspect JSON holds {len(data)} objects; inspect exactly one image")
        data = data[0]
    if not isinstance(data, dict) or ("Config" not in data and "Architecture" not in data):
        raise ConfigError("not podman/docker inspect JSON (no 'Config' or 'Architecture')")
    if "State" in data and "Image" in data and "RootFS" not in data:
        raise ConfigError("this is a container's inspect output; inspect the image instead")
    config = _clean_config(data.get("Config"))
    labels = data.get("Labels")  # podman repeats them at the top level
    if isinstance(labels, dict) and labels and "Labels" not in config:
        config["Labels"] = labels
    arch = data.get("Architecture") or "amd64"
    if not isinstance(arch, str):
        raise ConfigError("inspect JSON: 'Architecture' must be a string")
    goarch, variant = normalize_arch(arch)
    if isinstance(data.get("Variant"), str) and data["Variant"]:
        goarch, variant = normalize_arch(f"{goarch}/{data['Variant']}")
    author = data.get("Author")
    return ImageConfig(
        architecture=goarch,
        os=str(data.get("Os") or "linux"),
        variant=variant,
        author=author if isinstance(author, str) and author else None,
        config=config,
    )


def load_base_config(path: Path | str) -> ImageConfig:
    """Read a base config file: an OCI image config, or podman/docker inspect JSON."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "architecture" in data and "os" in data:
        try:
            return ImageConfig.from_dict(data)
        except InvalidImageError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    try:
        return config_from_inspect(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc} (expected an OCI image config or inspect output)") from None


@dataclass(frozen=True)
class LayerHistory:
    """What the caller knows about one layer it built, for ``rootfs`` and ``history``."""

    diff_id: str
    created_by: str | None = None
    comment: str | None = None


def build_config(
    base: ImageConfig | None,
    layers: Sequence[LayerHistory],
    *,
    labels: Sequence[tuple[str, str | None]] = (),
    arch: str | None = None,
    os_name: str | None = None,
    created: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> ImageConfig:
    """The config of a new image: ``base``'s execution parameters, our layers.

    ``created`` (epoch seconds) defaults to ``SOURCE_DATE_EPOCH``, else now; the
    same time goes into each history entry.  ``arch`` takes aliases (see
    :func:`normalize_arch`); without it the base's, else the host's, is used.
    """
    if created is None:
        created = source_date_epoch(environ)
    if created is None:
        created = int(datetime.now(UTC).timestamp())
    stamp = format_created(created)
    if base is None:
        host = host_platform()
        base = ImageConfig(architecture=host.architecture, os="linux", variant=host.variant)
    if arch is not None:
        goarch, variant = normalize_arch(arch)
    else:
        goarch, variant = base.architecture, base.variant
    for layer in layers:
        parse_digest(layer.diff_id)
    config = dict(base.config)
    new_labels = apply_label_edits(base.labels, labels)
    if new_labels:
        config["Labels"] = new_labels
    else:
        config.pop("Labels", None)
    # Keys describing the base image's build would lie about ours.
    extra = {
        k: v
        for k, v in base.extra.items()
        if k not in {"container", "container_config", "docker_version"}
    }
    return replace(
        base,
        architecture=goarch,
        variant=variant,
        os=os_name or base.os,
        created=stamp,
        config=config,
        diff_ids=tuple(layer.diff_id for layer in layers),
        history=tuple(
            HistoryEntry(created=stamp, created_by=layer.created_by, comment=layer.comment)
            for layer in layers
        ),
        extra=extra,
    )


def build_manifest(
    config: Descriptor,
    layers: Sequence[Descriptor],
    *,
    annotations: Mapping[str, str] | None = None,
    docker: bool = False,
) -> Manifest:
    """An OCI (or Docker v2 schema 2) manifest for a config and layer blobs."""
    return Manifest(
        config=config,
        layers=tuple(layers),
        media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        annotations=dict(annotations or {}),
    )
