"""rpm: ``rpmdb.sqlite`` read in pure Python, components keyed by source RPM.

The ``Packages`` table holds one header blob per installed package
(:mod:`chunkah.owners.rpmheader`). Paths are ``DIRNAMES[DIRINDEXES[i]] +
BASENAMES[i]``; digests are ``FILEDIGESTS`` in the algorithm ``FILEDIGESTALGO``
names (MD5 when absent). The database is opened read-only and ``immutable`` so
nothing, not even a WAL or lock file, is written into the tree.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

from chunkah.owners import rpmheader as h
from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import BinaryPackage, Claim, Component, Digest
from chunkah.owners.purl import make_purl
from chunkah.owners.source import os_release
from chunkah.owners.stability import stability_from_dates
from chunkah.tree.model import EntryType, FileContent, Tree

__all__ = ["RPMDB_DIRS", "RpmPackage", "RpmSource", "parse_srpm_name", "read_rpmdb"]

RPMDB_DIRS = (b"usr/lib/sysimage/rpm", b"var/lib/rpm", b"usr/share/rpm")
_DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_RPMFILE_GHOST = 1 << 6
_WANTED = frozenset(
    {
        h.NAME,
        h.VERSION,
        h.RELEASE,
        h.EPOCH,
        h.BUILDTIME,
        h.ARCH,
        h.SOURCERPM,
        h.CHANGELOGTIME,
        h.OLDFILENAMES,
        h.DIRINDEXES,
        h.BASENAMES,
        h.DIRNAMES,
        h.FILESIZES,
        h.LONGFILESIZES,
        h.FILEMODES,
        h.FILEDIGESTS,
        h.FILEFLAGS,
        h.FILEDIGESTALGO,
    }
)


@dataclass(frozen=True)
class RpmFile:
    path: bytes  # absolute, as recorded
    mode: int
    size: int
    digest: str  # hex, "" for non-regular files
    ghost: bool


@dataclass(frozen=True)
class RpmPackage:
    """What chunkah needs from one installed package's header."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    sourcerpm: str
    buildtime: int
    changelog_times: tuple[int, ...]
    digest_algo: str
    files: tuple[RpmFile, ...]

    @property
    def evr(self) -> str:
        vr = f"{self.version}-{self.release}"
        return f"{self.epoch}:{vr}" if self.epoch else vr


def parse_srpm_name(srpm: str) -> tuple[str, str]:
    """``"python-dateutil-2.8.2-1.fc40.src.rpm"`` -> ``("python-dateutil", "2.8.2-1.fc40")``."""
    stem = srpm.removesuffix(".src.rpm").removesuffix(".nosrc.rpm")
    parts = stem.rsplit("-", 2)
    if len(parts) == 3 and parts[0]:
        return parts[0], f"{parts[1]}-{parts[2]}"
    return stem, ""


def _s(v: h.HeaderValue | None) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ""


def _ints(v: h.HeaderValue | None) -> tuple[int, ...]:
    return v if isinstance(v, tuple) else ()


def _strs(v: h.HeaderValue | None) -> list[bytes]:
    return v if isinstance(v, list) else []


def package_from_header(blob: bytes) -> RpmPackage:
    """Decode one header blob; raises :class:`rpmheader.HeaderError` when malformed."""
    t = h.parse_header(blob, _WANTED)
    name = _s(t.get(h.NAME))
    if not name:
        raise h.HeaderError("header has no NAME")
    basenames = _strs(t.get(h.BASENAMES))
    if basenames:
        dirnames = _strs(t.get(h.DIRNAMES))
        dirindexes = _ints(t.get(h.DIRINDEXES))
        if len(dirindexes) != len(basenames):
            raise h.HeaderError(
                f"{name}: {len(basenames)} BASENAMES but {len(dirindexes)} DIRINDEXES"
            )
        try:
            paths = [dirnames[d] + b for d, b in zip(dirindexes, basenames, strict=True)]
        except IndexError:
            raise h.HeaderError(f"{name}: a DIRINDEXES value points past DIRNAMES") from None
    else:
        paths = _strs(t.get(h.OLDFILENAMES))
    n = len(paths)

    def per_file(v: tuple[int, ...] | list[bytes], what: str) -> None:
        if v and len(v) != n:
            raise h.HeaderError(f"{name}: {what} has {len(v)} values for {n} files")

    sizes = _ints(t.get(h.LONGFILESIZES)) or _ints(t.get(h.FILESIZES))
    modes = _ints(t.get(h.FILEMODES))
    digests = _strs(t.get(h.FILEDIGESTS))
    flags = _ints(t.get(h.FILEFLAGS))
    for v, what in (
        (sizes, "FILESIZES"),
        (modes, "FILEMODES"),
        (digests, "FILEDIGESTS"),
        (flags, "FILEFLAGS"),
    ):
        per_file(v, what)
    algo_ids = _ints(t.get(h.FILEDIGESTALGO))
    algo = _DIGEST_ALGOS.get(algo_ids[0] if algo_ids else 1, "")
    files = tuple(
        RpmFile(
            path=p,
            mode=modes[i] if modes else 0,
            size=sizes[i] if sizes else 0,
            digest=digests[i].decode("ascii", "replace").lower() if digests else "",
            ghost=bool(flags[i] & _RPMFILE_GHOST) if flags else False,
        )
        for i, p in enumerate(paths)
    )
    epoch = _ints(t.get(h.EPOCH))
    buildtime = _ints(t.get(h.BUILDTIME))
    return RpmPackage(
        name=name,
        epoch=epoch[0] if epoch else None,
        version=_s(t.get(h.VERSION)),
        release=_s(t.get(h.RELEASE)),
        arch=_s(t.get(h.ARCH)),
        sourcerpm=_s(t.get(h.SOURCERPM)),
        buildtime=buildtime[0] if buildtime else 0,
        changelog_times=_ints(t.get(h.CHANGELOGTIME)),
        digest_algo=algo,
        files=files,
    )


def read_rpmdb(
    db_file: str | os.PathLike[str], *, shown_as: bytes | str, immutable: bool = True
) -> list[RpmPackage]:
    """Every package in an ``rpmdb.sqlite`` on disk, in ``hnum`` order.

    ``shown_as`` is the path error messages use (the path inside the tree).
    ``immutable`` opens without any locking or WAL (nothing is written next to
    the file); pass False for a private copy whose WAL must be replayed.
    """
    uri = "file:" + quote(os.fspath(db_file)) + "?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(shown_as, f"cannot be opened as SQLite: {exc}") from exc
    out = []
    try:
        rows = con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum")
        for hnum, blob in rows:
            if not isinstance(blob, bytes):
                raise DatabaseError(shown_as, f"Packages row {hnum} holds no header blob")
            try:
                pkg = package_from_header(blob)
            except h.HeaderError as exc:
                raise DatabaseError(shown_as, f"Packages row {hnum}: {exc}") from exc
            if pkg.name == "gpg-pubkey":  # imported keys, not software
                continue
            out.append(pkg)
    except sqlite3.Error as exc:
        raise DatabaseError(shown_as, f"is not a readable rpmdb: {exc}") from exc
    finally:
        con.close()
    return out


@contextmanager
def _on_disk(tree: Tree, canon: PathCanonicalizer, path: bytes) -> Iterator[tuple[str, bool]]:
    """A host path of the tree's database and whether it may be opened ``immutable``.

    A plain file with an empty (or no) write-ahead log is used in place. Otherwise
    the database, and its WAL when it has one, are copied to a private
    directory, so SQLite can replay the log without writing into the tree.
    """
    entry = tree.get(canon.resolve(path))
    if entry is None or entry.type is not EntryType.FILE or entry.content is None:
        raise DatabaseError(path, "is not a regular file")
    wal = tree.get(canon.resolve(path + b"-wal"))
    has_wal = wal is not None and wal.type is EntryType.FILE and wal.size > 0
    if isinstance(entry.content, FileContent) and not has_wal:
        yield os.fsdecode(entry.content.path), True
        return
    with tempfile.TemporaryDirectory(prefix="chunkah-rpmdb-") as tmp:
        dst = os.path.join(tmp, "rpmdb.sqlite")
        todo = [(entry, dst)]
        if has_wal and wal is not None:
            todo.append((wal, dst + "-wal"))
        for e, name in todo:
            assert e.content is not None
            with e.content.open() as src, open(name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        yield dst, not has_wal


class RpmSource:
    """Ownership from an rpm database (sqlite backend)."""

    kind = "rpm"

    def _db_path(self, tree: Tree, canon: PathCanonicalizer) -> bytes | None:
        for d in RPMDB_DIRS:
            p = d + b"/rpmdb.sqlite"
            e = tree.get(canon.resolve(p))
            if e is not None and e.type is EntryType.FILE:
                return p
        return None

    def detect(self, tree: Tree) -> bool:
        canon = PathCanonicalizer(tree)
        if self._db_path(tree, canon) is not None:
            return True
        # An older Berkeley DB or ndb database: say so instead of ignoring it.
        return any(
            canon.resolve(d + n) in tree
            for d in RPMDB_DIRS
            for n in (b"/Packages", b"/Packages.db")
        )

    def claim(self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int) -> Iterable[Claim]:
        path = self._db_path(tree, canon)
        if path is None:
            raise DatabaseError(
                RPMDB_DIRS[1] + b"/Packages",
                "is a Berkeley DB or ndb rpmdb; only the sqlite backend is read "
                "(convert it with rpmdb --rebuilddb --define '_db_backend sqlite')",
            )
        with _on_disk(tree, canon, path) as (db_file, immutable):
            packages = read_rpmdb(db_file, shown_as=path, immutable=immutable)
        namespace = os_release(tree, canon).get("ID", "")
        db_dirs = {canon.resolve(d) for d in RPMDB_DIRS}
        by_source: dict[str, list[RpmPackage]] = {}
        for pkg in packages:
            src = parse_srpm_name(pkg.sourcerpm)[0] if pkg.sourcerpm else pkg.name
            by_source.setdefault(src, []).append(pkg)
        claims: list[Claim] = []
        for src in sorted(by_source):
            members = sorted(by_source[src], key=lambda p: (p.name, p.arch, p.evr))
            comp = self._component(src, members, namespace, build_epoch)
            for pkg in members:
                for f in pkg.files:
                    p = canon.canonical(f.path)
                    if p in db_dirs or any(p.startswith(d + b"/") for d in db_dirs):
                        continue  # the database itself changes every build
                    regular = (f.mode & 0o170000) == 0o100000
                    claims.append(
                        Claim(
                            path=p,
                            component=comp,
                            digest=Digest(pkg.digest_algo, f.digest)
                            if regular and f.digest and pkg.digest_algo
                            else None,
                            size=f.size if regular else None,
                            db_path=f.path,
                        )
                    )
        return claims

    def _component(
        self, src: str, members: list[RpmPackage], namespace: str, build_epoch: int
    ) -> Component:
        first = members[0]
        srpm_version = parse_srpm_name(first.sourcerpm)[1] if first.sourcerpm else ""
        version = srpm_version or f"{first.version}-{first.release}"
        if first.epoch:
            version = f"{first.epoch}:{version}"
        changelog = sorted({t for p in members for t in p.changelog_times})
        buildtimes = [p.buildtime for p in members if p.buildtime]
        dates = changelog or buildtimes
        bare_version = version.partition(":")[2] if first.epoch else version
        return Component(
            name=f"rpm/{src}",
            kind=self.kind,
            version=version,
            purl=make_purl(
                "rpm",
                src,
                bare_version,
                namespace=namespace,
                qualifiers={"arch": "src", "epoch": str(first.epoch) if first.epoch else ""},
            ),
            packages=tuple(BinaryPackage(p.name, p.evr, p.arch) for p in members),
            mtime_clamp=max(buildtimes) if buildtimes else None,
            stability=stability_from_dates(dates, build_epoch=build_epoch),
        )
