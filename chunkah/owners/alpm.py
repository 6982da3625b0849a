"""alpm (pacman): ``DBPath/local/*/desc``, ``files`` and ``mtree``, keyed by ``%BASE%``.

DBPath is read from ``etc/pacman.conf`` (default ``/var/lib/pacman/``). The
gzip'd ``mtree`` file, when present, gives each file's size and sha256 for
re-claiming moved files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import BinaryPackage, Claim, Component, Digest
from chunkah.owners.purl import make_purl
from chunkah.owners.source import os_release, read_tree_file, read_tree_gzip_head
from chunkah.owners.stability import stability_from_dates
from chunkah.tree.model import EntryType, Tree, normalize_path

__all__ = ["AlpmSource", "parse_alpm_sections", "parse_mtree"]

DEFAULT_DBPATH = b"var/lib/pacman"
_OCTAL = re.compile(rb"\\([0-7]{3})")


def parse_alpm_sections(data: bytes, path: bytes) -> dict[str, list[bytes]]:
    """``%KEY%`` headers followed by value lines, sections separated by blank lines."""
    out: dict[str, list[bytes]] = {}
    key: str | None = None
    for line in data.split(b"\n"):
        if not line:
            key = None
            continue
        if line.startswith(b"%") and line.endswith(b"%") and len(line) > 2:
            key = line[1:-1].decode("ascii", "replace")
            out[key] = []
        elif key is None:
            raise DatabaseError(path, f"value {line[:60]!r} outside any %SECTION%")
        else:
            out[key].append(line)
    return out


def parse_mtree(text: bytes) -> dict[bytes, tuple[int | None, str]]:
    """Path (normalised) -> (size, sha256 hex) for the ``type=file`` lines of an mtree."""
    out: dict[bytes, tuple[int | None, str]] = {}
    defaults: dict[bytes, bytes] = {}
    for line in text.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        fields = line.split()
        if not fields:
            continue
        if fields[0] == b"/set":
            for kv in fields[1:]:
                k, _, v = kv.partition(b"=")
                defaults[k] = v
            continue
        if fields[0].startswith(b"/"):
            continue
        attrs = dict(defaults)
        for kv in fields[1:]:
            k, _, v = kv.partition(b"=")
            attrs[k] = v
        if attrs.get(b"type") != b"file" or b"sha256digest" not in attrs:
            continue
        name = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), fields[0])
        size = attrs.get(b"size")
        out[normalize_path(name)] = (
            int(size) if size and size.isdigit() else None,
            attrs[b"sha256digest"].decode("ascii", "replace").lower(),
        )
    return out


@dataclass
class _Pkg:
    name: str
    version: str
    base: str
    arch: str
    builddate: int | None
    files: list[bytes]
    mtree: dict[bytes, tuple[int | None, str]]
    entry_paths: list[bytes]


def _first(sections: dict[str, list[bytes]], key: str) -> str:
    v = sections.get(key)
    return v[0].decode("utf-8", "replace") if v else ""


class AlpmSource:
    """Ownership from a pacman local database."""

    kind = "alpm"

    def _dbpath(self, tree: Tree, canon: PathCanonicalizer) -> bytes:
        try:
            conf = read_tree_file(tree, canon, b"etc/pacman.conf", limit=1 << 20)
        except DatabaseError:
            conf = None
        section = b""
        for line in (conf or b"").split(b"\n"):
            line = line.split(b"#", 1)[0].strip()
            if line.startswith(b"[") and line.endswith(b"]"):
                section = line[1:-1].strip()
            elif section == b"options":
                k, sep, v = line.partition(b"=")
                if sep and k.strip() == b"DBPath" and v.strip():
                    return normalize_path(v.strip())
        return DEFAULT_DBPATH

    def detect(self, tree: Tree) -> bool:
        canon = PathCanonicalizer(tree)
        local = canon.resolve(self._dbpath(tree, canon) + b"/local")
        e = tree.get(local)
        return e is not None and e.type is EntryType.DIR

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        dbpath = self._dbpath(tree, canon)
        local = canon.resolve(dbpath + b"/local")
        pkgs = []
        # local/NAME-VER-REL/ directories and everything inside each, in one pass.
        entries: dict[bytes, list[bytes]] = {}
        for q in tree.paths():
            if q.startswith(local + b"/"):
                top = q[len(local) + 1 :].split(b"/", 1)[0]
                entries.setdefault(local + b"/" + top, []).append(q)
        for d, inside in entries.items():
            if tree[d].type is not EntryType.DIR:
                continue
            desc_path = d + b"/desc"
            desc = read_tree_file(tree, canon, desc_path)
            if desc is None:
                continue
            s = parse_alpm_sections(desc, desc_path)
            name = _first(s, "NAME")
            if not name:
                raise DatabaseError(desc_path, "has no %NAME%")
            bd = _first(s, "BUILDDATE")
            files_path = d + b"/files"
            files_data = read_tree_file(tree, canon, files_path) or b""
            files = parse_alpm_sections(files_data, files_path).get("FILES", [])
            mtree_text = read_tree_gzip_head(tree, canon, d + b"/mtree", limit=64 << 20)
            pkgs.append(
                _Pkg(
                    name=name,
                    version=_first(s, "VERSION"),
                    base=_first(s, "BASE") or name,
                    arch=_first(s, "ARCH"),
                    builddate=int(bd) if bd.isdigit() else None,
                    files=files,
                    mtree=parse_mtree(mtree_text) if mtree_text else {},
                    entry_paths=inside,
                )
            )
        namespace = os_release(tree, canon).get("ID") or "arch"
        by_base: dict[str, list[_Pkg]] = {}
        for p in pkgs:
            by_base.setdefault(p.base, []).append(p)
        claims: list[Claim] = []
        for base in sorted(by_base):
            members = sorted(by_base[base], key=lambda p: (p.name, p.arch))
            dates = [p.builddate for p in members if p.builddate]
            comp = Component(
                name=f"alpm/{base}",
                kind=self.kind,
                version=members[0].version,
                purl=make_purl(
                    "alpm",
                    base,
                    members[0].version,
                    namespace=namespace,
                    qualifiers={"arch": members[0].arch},
                ),
                packages=tuple(BinaryPackage(p.name, p.version, p.arch) for p in members),
                mtime_clamp=max(dates) if dates else None,
                stability=stability_from_dates(dates, build_epoch=build_epoch),
            )
            for p in members:
                # The package's own database entry changes exactly when it does.
                for q in p.entry_paths:
                    claims.append(Claim(path=q, component=comp, db_path=q))
                for raw in p.files:
                    rel = normalize_path(raw)
                    m = p.mtree.get(rel)
                    claims.append(
                        Claim(
                            path=canon.canonical(rel),
                            component=comp,
                            digest=Digest("sha256", m[1]) if m else None,
                            size=m[0] if m else None,
                            db_path=rel,
                        )
                    )
        return claims
