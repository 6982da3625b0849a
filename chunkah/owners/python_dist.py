"""Python distributions: every ``*.dist-info/RECORD`` in the tree.

RECORD paths are relative to the directory that holds the ``.dist-info``
(site-packages, ``dist-packages``, a ``pip --target`` directory); entries such
as ``../../bin/tool`` reach outside it. The sha256 digests are urlsafe base64
without padding. Component names are ``python/`` + the PEP 503 normalised
project name.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import re
from collections.abc import Iterable

from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import BinaryPackage, Claim, Component, Digest
from chunkah.owners.purl import make_purl
from chunkah.owners.source import read_tree_file
from chunkah.owners.stability import DEFAULT_PACKAGE_STABILITY
from chunkah.tree.model import EntryType, Tree

__all__ = ["PythonDistSource", "canonical_project_name", "parse_record"]

_SUFFIX = b".dist-info/RECORD"
_HASHES = {"sha256", "sha384", "sha512", "sha224", "sha1", "md5"}


def canonical_project_name(name: str) -> str:
    """PEP 503: lower case, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_record(data: bytes, path: bytes) -> list[tuple[str, Digest | None, int | None]]:
    """``(relative path, digest, size)`` for every row of a RECORD file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatabaseError(path, f"is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    out: list[tuple[str, Digest | None, int | None]] = []
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise DatabaseError(path, f"is not CSV: {exc}") from exc
    for n, row in enumerate(rows, 1):
        if not row or not row[0]:
            continue
        digest = None
        if len(row) > 1 and row[1]:
            algo, sep, b64 = row[1].partition("=")
            if not sep or algo not in _HASHES:
                raise DatabaseError(path, f"row {n}: unknown hash {row[1][:40]!r}")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DatabaseError(path, f"row {n}: bad base64 digest") from exc
            if len(raw) != hashlib.new(algo).digest_size:
                raise DatabaseError(path, f"row {n}: {algo} digest has {len(raw)} bytes")
            digest = Digest(algo, raw.hex())
        size = None
        if len(row) > 2 and row[2]:
            if not row[2].isdigit():
                raise DatabaseError(path, f"row {n}: size {row[2][:20]!r} is not a number")
            size = int(row[2])
        out.append((row[0], digest, size))
    return out


def _name_version(tree: Tree, canon: PathCanonicalizer, dist_info: bytes) -> tuple[str, str]:
    meta = read_tree_file(tree, canon, dist_info + b"/METADATA", limit=16 << 20)
    name = version = ""
    if meta:
        for line in meta.split(b"\n"):
            if not line.strip():
                break  # end of the header block
            if line.startswith(b"Name:"):
                name = line[5:].strip().decode("utf-8", "replace")
            elif line.startswith(b"Version:"):
                version = line[8:].strip().decode("utf-8", "replace")
    if not name:
        stem = dist_info.rsplit(b"/", 1)[-1].removesuffix(b".dist-info").decode("utf-8", "replace")
        name, _, version = stem.partition("-")
    return name, version


class PythonDistSource:
    """Ownership from installed Python distributions (wheels installed by pip and friends)."""

    kind = "python"

    def _records(self, tree: Tree) -> list[bytes]:
        return [p for p in tree.paths() if p.endswith(_SUFFIX) and tree[p].type is EntryType.FILE]

    def detect(self, tree: Tree) -> bool:
        return any(p.endswith(_SUFFIX) for p in tree.paths())

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        claims: list[Claim] = []
        dists: dict[str, list[tuple[bytes, str, str]]] = {}
        for rec in self._records(tree):
            dist_info = rec[: -len(b"/RECORD")]
            name, version = _name_version(tree, canon, dist_info)
            dists.setdefault(canonical_project_name(name), []).append((rec, name, version))
        for key in sorted(dists):
            members = dists[key]
            comp = Component(
                name=f"python/{key}",
                kind=self.kind,
                version=members[0][2],
                purl=make_purl("pypi", key, members[0][2]),
                packages=tuple(sorted({BinaryPackage(n, v) for _, n, v in members})),
                mtime_clamp=None,
                stability=DEFAULT_PACKAGE_STABILITY,
            )
            for rec, _, _ in members:
                site = rec[: -len(_SUFFIX)].rpartition(b"/")[0]
                data = read_tree_file(tree, canon, rec)
                if data is None:
                    continue
                claims.append(Claim(path=rec, component=comp, db_path=rec))
                for rel, digest, size in parse_record(data, rec):
                    raw = rel.encode("utf-8", "surrogateescape")
                    db = raw if raw.startswith(b"/") else (site + b"/" + raw if site else raw)
                    claims.append(
                        Claim(
                            path=canon.canonical(db),
                            component=comp,
                            digest=digest,
                            size=size,
                            db_path=db,
                        )
                    )
        return claims
