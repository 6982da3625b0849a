"""Real Debian bookworm root filesystems built with ``mmdebstrap``, cached.

Recipes: ``TINY`` (a custom variant of 33 packages, docs, man pages and
locales excluded; most tests, about 40 MB), ``MINBASE`` (``--variant=minbase``,
about 180 MB) and ``LARGE`` (minbase plus python3, perl, gcc, git, ...: about
450 MB and 12,500 entries, for benchmarks; no fixture builds it).  All are built with
``SOURCE_DATE_EPOCH=1700000000``.

Cache layout, under ``$CHUNKAH_TEST_CACHE`` (default ``~/.cache/chunkah-tests``)::

    debian/<name>-<key>/rootfs.tar    mmdebstrap's tarball, as built (with dev/ nodes)
    debian/<name>-<key>/rootfs/       that tarball extracted as root, dev/ emptied
    debian/<name>-<key>/recipe.json   the recipe, the build time, the package list

``<key>`` hashes the exact recipe (suite, variant, options, sources, epoch,
mmdebstrap version), so changing the recipe builds a new entry.  A build runs
in a temporary directory in the cache and is renamed into place, so an entry
that exists is complete.  An ``fcntl.flock`` per key makes two pytest-xdist
workers (or two test runs) build it once.

Special files: the extracted ``rootfs/`` keeps ``dev/``, ``proc/``, ``sys/`` as
empty directories but removes everything inside ``dev/`` (device nodes and
``/proc/self/fd`` symlinks), so the directory is a valid build source without
``--skip-special-files``.  Tests that want device nodes use ``rootfs.tar`` or
the hand-made tree.  The cached tree is shared: never modify it; copy it first
(``copy_tree``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tools import ToolError, mmdebstrap, run

SOURCE_DATE_EPOCH = 1700000000
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

_EXCLUDE_DOCS = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
TINY_PACKAGES = (
    "dpkg,dash,bash,coreutils,diffutils,sed,grep,findutils,debianutils,base-files,"
    "base-passwd,tar,gzip,libc-bin,mawk,liblzma5,libpcre2-8-0,zlib1g,libssl3,openssl"
)


@dataclass(frozen=True)
class DebianRecipe:
    """Everything that decides what ``mmdebstrap`` builds."""

    name: str
    suite: str = "bookworm"
    options: tuple[str, ...] = ()
    sources: tuple[str, ...] = (f"deb {MIRROR} bookworm main",)
    source_date_epoch: int = SOURCE_DATE_EPOCH

    def key(self) -> str:
        """A short hash of the recipe and the mmdebstrap version."""
        blob = json.dumps({**asdict(self), "mmdebstrap": _mmdebstrap_version()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


TINY = DebianRecipe(
    name="tiny",
    options=(
        "--variant=custom",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *_EXCLUDE_DOCS,
        f"--include={TINY_PACKAGES}",
    ),
)
MINBASE = DebianRecipe(name="minbase", options=("--variant=minbase",))
#: minbase plus toolchains and interpreters: a 300+ MB tree for benchmarks.
LARGE = DebianRecipe(
    name="large",
    options=("--variant=minbase", "--include=python3,perl,gcc,git,openssh-client,curl"),
)
RECIPES = {r.name: r for r in (TINY, MINBASE, LARGE)}


@dataclass(frozen=True)
class DebianRootfs:
    """A cached build: ``path`` is the rootfs directory, ``tar`` mmdebstrap's tarball."""

    recipe: DebianRecipe
    path: Path
    tar: Path
    build_seconds: float  # how long the (first) build took, from recipe.json
    cached: bool  # True when this call found it in the cache
    packages: tuple[str, ...] = field(default=())


def cache_root() -> Path:
    """``$CHUNKAH_TEST_CACHE`` or ``~/.cache/chunkah-tests``."""
    env = os.environ.get("CHUNKAH_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "chunkah-tests"


_MMDEBSTRAP_VERSION: str | None = None


def _mmdebstrap_version() -> str:
    global _MMDEBSTRAP_VERSION
    if _MMDEBSTRAP_VERSION is None:
        _MMDEBSTRAP_VERSION = run(["mmdebstrap", "--version"], timeout=30).stdout.decode().strip()
    return _MMDEBSTRAP_VERSION


@contextmanager
def file_lock(path: Path, timeout: float = 1800.0) -> Iterator[None]:
    """An exclusive ``flock`` on *path*, waited for up to *timeout* seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout:g}s for lock {path}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def extract_rootfs_tar(tar: Path, dest: Path) -> None:
    """Extract as root with owners, modes, xattrs; then empty ``dev/``."""
    dest.mkdir()
    run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--same-owner",
            "-xpf",
            tar,
            "-C",
            dest,
        ],
        timeout=600,
    )
    dev = dest / "dev"
    if dev.is_dir() and not dev.is_symlink():
        for entry in os.scandir(dev):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _installed_packages(rootfs: Path) -> tuple[str, ...]:
    status = rootfs / "var/lib/dpkg/status"
    names = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                names.append(line.split(": ", 1)[1].strip())
    return tuple(sorted(names))


def build_rootfs(recipe: DebianRecipe, cache: Path | None = None) -> DebianRootfs:
    """Return the cached rootfs for *recipe*, building it first if needed."""
    base = (cache or cache_root()) / "debian"
    base.mkdir(parents=True, exist_ok=True)
    key = recipe.key()
    final = base / f"{recipe.name}-{key}"
    cached = True
    with file_lock(base / f".{recipe.name}-{key}.lock"):
        if not final.is_dir():
            if os.geteuid() != 0:
                raise ToolError(
                    f"building the Debian rootfs {recipe.name!r} needs root "
                    f"(mmdebstrap, real owners and modes); not cached in {base}"
                )
            cached = False
            _build_into(recipe, base, final)
    meta = json.loads((final / "recipe.json").read_text())
    return DebianRootfs(
        recipe=recipe,
        path=final / "rootfs",
        tar=final / "rootfs.tar",
        build_seconds=float(meta["build_seconds"]),
        cached=cached,
        packages=tuple(meta["packages"]),
    )


def _build_into(recipe: DebianRecipe, base: Path, final: Path) -> None:
    # We hold the lock: leftovers of an interrupted build of this key are stale.
    for stale in base.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        start = time.monotonic()
        tar = tmp / "rootfs.tar"
        mmdebstrap(
            recipe.suite,
            tar,
            recipe.sources,
            *recipe.options,
            source_date_epoch=recipe.source_date_epoch,
        )
        extract_rootfs_tar(tar, tmp / "rootfs")
        seconds = time.monotonic() - start
        meta = {
            **asdict(recipe),
            "key": recipe.key(),
            "mmdebstrap": _mmdebstrap_version(),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "packages": list(_installed_packages(tmp / "rootfs")),
        }
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_tree(src: Path, dst: Path) -> Path:
    """``cp -a SRC DST``: a private copy (owners, modes, xattrs, hardlinks kept)."""
    run(["cp", "-a", "--", src, dst], timeout=600)
    return dst


__all__ = [
    "LARGE",
    "MINBASE",
    "RECIPES",
    "TINY",
    "DebianRecipe",
    "DebianRootfs",
    "build_rootfs",
    "cache_root",
    "copy_tree",
    "extract_rootfs_tar",
    "file_lock",
]
