"""apk (Alpine): ``lib/apk/db/installed``, components keyed by origin (``o:``).

One stanza per package, blank-line separated; ``F:`` sets the current
directory, ``R:`` names a file in it and the following ``Z:`` its checksum
(``Q1`` + base64 SHA-1, ``Q2`` + base64 SHA-256).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field

from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import BinaryPackage, Claim, Component, Digest
from chunkah.owners.purl import make_purl
from chunkah.owners.source import os_release, read_tree_file
from chunkah.owners.stability import stability_from_dates
from chunkah.tree.model import Tree

__all__ = ["INSTALLED", "ApkPackage", "ApkSource", "parse_installed"]

INSTALLED = b"lib/apk/db/installed"


@dataclass
class ApkPackage:
    name: str = ""
    version: str = ""
    arch: str = ""
    origin: str = ""
    build_time: int | None = None
    dirs: list[bytes] = field(default_factory=list)
    files: list[tuple[bytes, Digest | None]] = field(default_factory=list)


def _checksum(value: bytes) -> Digest | None:
    algo = {b"Q1": "sha1", b"Q2": "sha256"}.get(value[:2])
    if algo is None:
        return None
    try:
        return Digest(algo, base64.b64decode(value[2:], validate=True).hex())
    except (binascii.Error, ValueError):
        return None


def parse_installed(data: bytes, path: bytes = INSTALLED) -> list[ApkPackage]:
    """Every package stanza of an apk ``installed`` database."""
    out: list[ApkPackage] = []
    pkg: ApkPackage | None = None
    cur_dir = b""
    for line in data.split(b"\n"):
        if not line:
            if pkg is not None:
                out.append(pkg)
            pkg, cur_dir = None, b""
            continue
        if len(line) < 2 or line[1:2] != b":":
            raise DatabaseError(path, f"malformed line {line[:60]!r}")
        key, value = line[:1], line[2:]
        if pkg is None:
            pkg = ApkPackage()
        if key == b"P":
            pkg.name = value.decode("utf-8", "replace")
        elif key == b"V":
            pkg.version = value.decode("utf-8", "replace")
        elif key == b"A":
            pkg.arch = value.decode("utf-8", "replace")
        elif key == b"o":
            pkg.origin = value.decode("utf-8", "replace")
        elif key == b"t":
            pkg.build_time = int(value) if value.isdigit() else None
        elif key == b"F":
            cur_dir = value
            pkg.dirs.append(value)
        elif key == b"R":
            pkg.files.append((cur_dir + b"/" + value if cur_dir else value, None))
        elif key == b"Z" and pkg.files:
            name, _ = pkg.files[-1]
            pkg.files[-1] = (name, _checksum(value))
    if pkg is not None:
        out.append(pkg)
    for p in out:
        if not p.name:
            raise DatabaseError(path, "a package stanza has no P: (name) line")
    return out


class ApkSource:
    """Ownership from an Alpine apk database."""

    kind = "apk"

    def detect(self, tree: Tree) -> bool:
        return INSTALLED in tree

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        data = read_tree_file(tree, canon, INSTALLED)
        if data is None:
            return []
        namespace = os_release(tree, canon).get("ID") or "alpine"
        by_origin: dict[str, list[ApkPackage]] = {}
        for p in parse_installed(data):
            by_origin.setdefault(p.origin or p.name, []).append(p)
        claims: list[Claim] = []
        for origin in sorted(by_origin):
            members = sorted(by_origin[origin], key=lambda p: (p.name, p.arch))
            dates = [p.build_time for p in members if p.build_time]
            first = members[0]
            comp = Component(
                name=f"apk/{origin}",
                kind=self.kind,
                version=first.version,
                purl=make_purl(
                    "apk",
                    origin,
                    first.version,
                    namespace=namespace,
                    qualifiers={"arch": first.arch},
                ),
                packages=tuple(BinaryPackage(p.name, p.version, p.arch) for p in members),
                mtime_clamp=max(dates) if dates else None,
                stability=stability_from_dates(dates, build_epoch=build_epoch),
            )
            for p in members:
                for d in p.dirs:
                    claims.append(Claim(path=canon.canonical(d), component=comp, db_path=d))
                for f, digest in p.files:
                    claims.append(
                        Claim(path=canon.canonical(f), component=comp, digest=digest, db_path=f)
                    )
        return claims
