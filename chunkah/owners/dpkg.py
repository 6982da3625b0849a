"""dpkg: ``var/lib/dpkg/status``, ``info/*.list``, ``*.md5sums``, diversions, alternatives.

Components are keyed by *source* package (``Source:`` when present, else
``Package:``), like chunkah groups rpm by SRPM: binaries built together change
together. Dates come from ``usr/share/doc/PKG/changelog.Debian.gz`` when the
image kept it (the newest entry is the date Debian builds use as
SOURCE_DATE_EPOCH, so it is the mtime clamp).
"""

from __future__ import annotations

import email.utils
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from chunkah.owners.canon import PathCanonicalizer, db_path_key
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import BinaryPackage, Claim, Component, Digest
from chunkah.owners.purl import make_purl
from chunkah.owners.source import os_release, read_tree_file, read_tree_gzip_head
from chunkah.owners.stability import stability_from_dates
from chunkah.tree.model import EntryType, Tree, normalize_path

__all__ = ["DpkgSource", "parse_changelog_dates", "parse_control_stanzas"]

ADMIN = b"var/lib/dpkg"
STATUS = ADMIN + b"/status"
DIVERSIONS = ADMIN + b"/diversions"
ALTERNATIVES = ADMIN + b"/alternatives"

_TRAILER = re.compile(rb"^ -- [^\n]*?>  ?([^\n]+)$", re.MULTILINE)
# Entries newest first; one year of history fits easily in this much text.
_CHANGELOG_HEAD = 512 << 10
_MD5 = re.compile(rb"^[0-9a-fA-F]{32}$")


@dataclass
class _Package:
    name: str
    arch: str
    version: str
    source: str
    source_version: str
    conffiles: dict[bytes, str] = field(default_factory=dict)


def parse_control_stanzas(data: bytes, path: bytes) -> Iterator[dict[str, str]]:
    """Split a deb822 file (dpkg ``status``) into field dicts; keys keep their case."""
    for stanza in re.split(rb"\n[ \t]*\n", data):
        fields: dict[str, str] = {}
        key: str | None = None
        for line in stanza.split(b"\n"):
            if not line.strip():
                continue
            if line[:1] in (b" ", b"\t"):
                if key is None:
                    raise DatabaseError(path, "continuation line before any field")
                fields[key] += "\n" + line.decode("utf-8", "surrogateescape")
                continue
            k, sep, v = line.partition(b":")
            if not sep or not k or b" " in k:
                raise DatabaseError(path, f"malformed line {line[:60]!r}")
            key = k.decode("ascii", "replace")
            fields[key] = v.strip().decode("utf-8", "surrogateescape")
        if fields:
            yield fields


def parse_changelog_dates(text: bytes) -> list[int]:
    """Unix times of every `` -- Maintainer <addr>  DATE`` trailer in a Debian changelog."""
    out = []
    for m in _TRAILER.finditer(text):
        parsed = email.utils.parsedate_tz(m.group(1).strip().decode("ascii", "replace"))
        if parsed is not None:
            try:
                out.append(int(email.utils.mktime_tz(parsed)))
            except (OverflowError, ValueError):
                continue
    return out


def _parse_source(fields: dict[str, str], name: str, version: str) -> tuple[str, str]:
    raw = fields.get("Source", "").strip()
    if not raw:
        return name, version
    src, _, rest = raw.partition(" ")
    rest = rest.strip()
    if rest.startswith("(") and rest.endswith(")"):
        return src, rest[1:-1].strip()
    return src, version


class DpkgSource:
    """Ownership from a Debian/Ubuntu dpkg database."""

    kind = "dpkg"

    def detect(self, tree: Tree) -> bool:
        return STATUS in tree

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        status = read_tree_file(tree, canon, STATUS)
        if status is None:
            return []
        packages = self._packages(status)
        components = self._components(tree, canon, packages, build_epoch)
        diversions = self._diversions(tree, canon)
        claims: list[Claim] = []
        owner: dict[bytes, Component] = {}
        info_files = self._info_files(tree, canon)
        for pkg in packages:
            comp = components[pkg.source]
            listed = self._list(tree, canon, pkg)
            if listed is None:
                continue
            md5 = self._md5sums(tree, canon, pkg)
            md5.update(pkg.conffiles)
            # The package's own control files (list, md5sums, maintainer
            # scripts) change exactly when the package does.
            for stem in {f"{pkg.name}:{pkg.arch}", pkg.name}:
                for p in info_files.get(stem.encode(), ()):
                    claims.append(Claim(path=p, component=comp, db_path=p))
            for raw in listed:
                db = db_path_key(raw)
                div = diversions.get(db)
                # Another package (or the admin, ":") diverted this path: the
                # file this package shipped lives at the divert-to path.
                target = div[0] if div is not None and div[1] != pkg.name else db
                path = canon.canonical(target)
                hexd = md5.get(db)
                claims.append(
                    Claim(
                        path=path,
                        component=comp,
                        digest=Digest("md5", hexd) if hexd else None,
                        db_path=target,
                    )
                )
                owner.setdefault(path, comp)
        claims.extend(self._alternatives(tree, canon, owner))
        return claims

    # --- the database files -------------------------------------------------

    def _packages(self, status: bytes) -> list[_Package]:
        out = []
        for f in parse_control_stanzas(status, STATUS):
            name = f.get("Package")
            if not name:
                raise DatabaseError(STATUS, "a stanza has no Package field")
            state = f.get("Status", "").split()
            if len(state) == 3 and state[2] == "not-installed":
                continue
            version = f.get("Version", "")
            src, src_version = _parse_source(f, name, version)
            pkg = _Package(name, f.get("Architecture", ""), version, src, src_version)
            for line in f.get("Conffiles", "").splitlines():
                parts = line.split()
                if len(parts) >= 2 and _MD5.match(parts[1].encode()):
                    pkg.conffiles[normalize_path(parts[0])] = parts[1].lower()
            out.append(pkg)
        out.sort(key=lambda p: (p.name, p.arch))
        return out

    def _components(
        self,
        tree: Tree,
        canon: PathCanonicalizer,
        packages: list[_Package],
        build_epoch: int,
    ) -> dict[str, Component]:
        osr = os_release(tree, canon)
        distro, codename = osr.get("ID") or "debian", osr.get("VERSION_CODENAME", "")
        by_source: dict[str, list[_Package]] = {}
        for p in packages:
            by_source.setdefault(p.source, []).append(p)
        comps = {}
        for src, members in by_source.items():
            versions = Counter(p.source_version for p in members)
            version = max(versions, key=lambda v: (versions[v], v))
            dates = self._dates(tree, canon, members)
            comps[src] = Component(
                name=f"dpkg/{src}",
                kind=self.kind,
                version=version,
                purl=make_purl(
                    "deb",
                    src,
                    version,
                    namespace=distro,
                    qualifiers={"arch": "source", "distro": codename},
                ),
                packages=tuple(sorted(BinaryPackage(p.name, p.version, p.arch) for p in members)),
                mtime_clamp=max(dates) if dates else None,
                stability=stability_from_dates(dates, build_epoch=build_epoch),
            )
        return comps

    def _dates(self, tree: Tree, canon: PathCanonicalizer, members: list[_Package]) -> list[int]:
        # Native packages (dpkg, apt, base-files) have only changelog.gz.
        for name in (b"changelog.Debian.gz", b"changelog.gz"):
            for p in members:
                doc = b"usr/share/doc/%s/" % p.name.encode()
                text = read_tree_gzip_head(tree, canon, doc + name, limit=_CHANGELOG_HEAD)
                if text is not None:
                    dates = parse_changelog_dates(text)
                    if dates:
                        return dates
        return []

    def _info_files(self, tree: Tree, canon: PathCanonicalizer) -> dict[bytes, list[bytes]]:
        """``info/STEM.EXT`` files by STEM (``libc6:amd64``, ``bash``)."""
        info = canon.resolve(ADMIN + b"/info") + b"/"
        out: dict[bytes, list[bytes]] = {}
        for p in tree.paths():
            if p.startswith(info):
                name = p[len(info) :]
                if b"/" not in name and b"." in name:
                    out.setdefault(name.rpartition(b".")[0], []).append(p)
        return out

    def _list(self, tree: Tree, canon: PathCanonicalizer, pkg: _Package) -> list[bytes] | None:
        for stem in (f"{pkg.name}:{pkg.arch}", pkg.name):
            data = read_tree_file(tree, canon, ADMIN + b"/info/" + stem.encode() + b".list")
            if data is not None:
                return [ln for ln in data.split(b"\n") if ln]
        return None

    def _md5sums(self, tree: Tree, canon: PathCanonicalizer, pkg: _Package) -> dict[bytes, str]:
        for stem in (f"{pkg.name}:{pkg.arch}", pkg.name):
            path = ADMIN + b"/info/" + stem.encode() + b".md5sums"
            data = read_tree_file(tree, canon, path)
            if data is None:
                continue
            out = {}
            for line in data.split(b"\n"):
                if not line:
                    continue
                hexd, sep, name = line.partition(b" ")
                if not sep or not _MD5.match(hexd):
                    raise DatabaseError(path, f"malformed line {line[:60]!r}")
                out[normalize_path(name.lstrip(b" *"))] = hexd.decode().lower()
            return out
        return {}

    def _diversions(self, tree: Tree, canon: PathCanonicalizer) -> dict[bytes, tuple[bytes, str]]:
        """Diverted path -> (divert-to path, diverting package or ':' for local)."""
        data = read_tree_file(tree, canon, DIVERSIONS)
        if not data:
            return {}
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if len(lines) % 3:
            raise DatabaseError(DIVERSIONS, "line count is not a multiple of 3")
        out = {}
        for i in range(0, len(lines), 3):
            out[normalize_path(lines[i])] = (
                normalize_path(lines[i + 1]),
                lines[i + 2].decode("utf-8", "replace"),
            )
        return out

    def _alternatives(
        self, tree: Tree, canon: PathCanonicalizer, owner: dict[bytes, Component]
    ) -> list[Claim]:
        """The alternatives' symlinks belong to the package of the chosen alternative.

        ``/usr/bin/awk -> /etc/alternatives/awk -> /usr/bin/mawk``: both links go
        to the component that owns ``usr/bin/mawk``. Links no package lists are
        otherwise unowned and regenerated by maintainer scripts.
        """
        out: list[Claim] = []
        prefix = ALTERNATIVES + b"/"
        for path in tree.paths():
            if not path.startswith(prefix) or b"/" in path[len(prefix) :]:
                continue
            entry = tree[path]
            if entry.type is not EntryType.FILE:
                continue
            data = read_tree_file(tree, canon, path, limit=1 << 20)
            if data is None:
                continue
            lines = data.split(b"\n")
            # mode, master link, then (slave name, slave link)* until a blank line.
            if len(lines) < 2:
                continue
            names_links = [(path[len(prefix) :], lines[1])]
            i = 2
            while i + 1 < len(lines) and lines[i]:
                names_links.append((lines[i], lines[i + 1]))
                i += 2
            master_comp: Component | None = None
            for name, link in names_links:
                if not name or not link:
                    continue
                alt_link = b"etc/alternatives/" + name
                alt = tree.get(alt_link)
                if alt is None or alt.type is not EntryType.SYMLINK:
                    continue
                target = alt.link_target
                if not target.startswith(b"/"):
                    target = b"etc/alternatives/" + target
                chosen = canon.canonical(target)
                comp = owner.get(chosen)
                if comp is None:
                    continue
                master_comp = master_comp or comp
                for p in (canon.canonical(link), alt_link):
                    if p not in owner:
                        out.append(Claim(path=p, component=comp, db_path=p))
            if master_comp is not None:
                out.append(Claim(path=path, component=master_comp, db_path=path))
        return out
