#!/usr/bin/env python3
"""Image series for the layer benchmarks: successive versions of one tree, built and cached.

    python benchmarks/series.py --list
    python benchmarks/series.py tiny [--json] [--offline] [--verify-offline]

Each series is a list of versions; each version is a rootfs directory, built once
and cached (keyed by its exact recipe) under ``$CHUNKAH_TEST_CACHE`` or
``~/.cache/chunkah-tests``, subdirectory ``series/``.  Debian versions are built
with ``mmdebstrap`` (needs root) and keep the ``.deb`` files they were built from,
so a series can be rebuilt offline once the mirror has moved on; Python versions
are ``pip install --target`` trees of wheels kept in ``series/wheels/``.  Every
build uses ``SOURCE_DATE_EPOCH=1700000000``.  benchmarks/series.md describes the
series, the exact package changes per step and the cache layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import debian  # noqa: E402
from support.tools import ToolError, mmdebstrap, run  # noqa: E402

SOURCE_DATE_EPOCH = debian.SOURCE_DATE_EPOCH
M = debian.MIRROR
S = debian.SECURITY_MIRROR
POINT = (f"deb {M} bookworm main",)
UPDATES = (f"deb {M} bookworm main", f"deb {M} bookworm-updates main")
SECURITY = (*UPDATES, f"deb {S} bookworm-security main")
#: sid's (and forky's) Release files look expired from this mirror.
NO_VALID_UNTIL = '--aptopt=Acquire::Check-Valid-Until "false"'

#: openssl in bookworm-updates, older than the 12.15 point release's 3.0.20-1~deb12u2.
OLD_OPENSSL = "3.0.17-1~deb12u2"

APP_PACKAGES = "python3,nginx,git,curl,openssl,tzdata"
OS_PACKAGES = "systemd,linux-image-amd64"


def _tiny(name: str, sources: tuple[str, ...], extra: str = "") -> debian.DebianRecipe:
    include = debian.TINY_PACKAGES + (f",{extra}" if extra else "")
    options = tuple(
        f"--include={include}" if o.startswith("--include=") else o for o in debian.TINY.options
    )
    return debian.DebianRecipe(name=name, options=options, sources=sources)


def _minbase(
    name: str, sources: tuple[str, ...], include: str = "", suite: str = "bookworm", *extra: str
) -> debian.DebianRecipe:
    options = ("--variant=minbase", *((f"--include={include}",) if include else ()), *extra)
    return debian.DebianRecipe(name=name, suite=suite, options=options, sources=sources)


@dataclass(frozen=True)
class DebianVersion:
    """One version of a Debian series: an mmdebstrap recipe."""

    label: str
    recipe: debian.DebianRecipe
    note: str = ""

    def key(self) -> str:
        return self.recipe.key()


@dataclass(frozen=True)
class WheelVersion:
    """One version of a Python series: wheels installed with ``pip install --target``."""

    label: str
    requirements: tuple[str, ...]
    note: str = ""
    python_version: str = "3.11"
    platform: str = "manylinux_2_28_x86_64"
    prefix: str = "usr/lib/python3/dist-packages"
    source_date_epoch: int = SOURCE_DATE_EPOCH

    def key(self) -> str:
        # pip writes the interpreter's path into the entry-point scripts' shebangs.
        blob = json.dumps(
            {**asdict(self), "note": None, "pip": _pip_version(), "python": sys.executable},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


Version = DebianVersion | WheelVersion


@dataclass(frozen=True)
class Series:
    name: str
    description: str
    versions: tuple[Version, ...]


def _numpy(n: int) -> WheelVersion:
    return WheelVersion(label=f"2.4.{n}", requirements=(f"numpy==2.4.{n}",))


# The Python stack: pandas' runtime dependencies pinned beside it (installed --no-deps).
_PYSTACK_COMMON = ("python-dateutil==2.9.0.post0", "six==1.17.0", "tzdata==2025.2")

SERIES: dict[str, Series] = {
    s.name: s
    for s in (
        Series(
            "tiny",
            "33-package bookworm custom variant: older openssl -> point release -> +updates/+security",
            (
                DebianVersion(
                    "v1",
                    _tiny(
                        "series-tiny-v1",
                        UPDATES,
                        f"libssl3={OLD_OPENSSL},openssl={OLD_OPENSSL}",
                    ),
                    f"point release with openssl/libssl3 {OLD_OPENSSL} from bookworm-updates",
                ),
                DebianVersion("v2", _tiny("series-tiny-v2", POINT), "bookworm point release"),
                DebianVersion(
                    "v3", _tiny("series-tiny-v3", SECURITY), "point release + updates + security"
                ),
            ),
        ),
        Series(
            "minbase",
            "bookworm --variant=minbase: point release -> +updates/+security",
            (
                DebianVersion("v1", _minbase("series-minbase-v1", POINT), "point release"),
                DebianVersion("v2", _minbase("series-minbase-v2", SECURITY), "+updates +security"),
            ),
        ),
        Series(
            "app",
            f"bookworm minbase + {APP_PACKAGES}: point release -> +updates/+security",
            (
                DebianVersion(
                    "v1", _minbase("series-app-v1", POINT, APP_PACKAGES), "point release"
                ),
                DebianVersion(
                    "v2", _minbase("series-app-v2", SECURITY, APP_PACKAGES), "+updates +security"
                ),
            ),
        ),
        Series(
            "os",
            f"bookworm minbase + {OS_PACKAGES}: point release -> +security (kernel ABI bump)",
            (
                DebianVersion("v1", _minbase("series-os-v1", POINT, OS_PACKAGES), "point release"),
                DebianVersion(
                    "v2", _minbase("series-os-v2", SECURITY, OS_PACKAGES), "+updates +security"
                ),
            ),
        ),
        Series(
            "trixie-sid",
            "--variant=minbase: trixie -> sid",
            (
                DebianVersion(
                    "trixie",
                    _minbase("series-trixie", (f"deb {M} trixie main",), "", "trixie"),
                    "trixie point release",
                ),
                DebianVersion(
                    "sid",
                    _minbase("series-sid", (f"deb {M} sid main",), "", "sid", NO_VALID_UNTIL),
                    "unstable",
                ),
            ),
        ),
        Series(
            "numpy",
            "numpy 2.4.0 .. 2.4.6 wheels (cp311 manylinux_2_28) under usr/lib/python3/dist-packages",
            tuple(_numpy(n) for n in range(7)),
        ),
        Series(
            "pystack",
            "numpy + scipy + pandas (+ their pure-Python deps): a patch update of all three",
            (
                WheelVersion(
                    "v1",
                    ("numpy==2.4.5", "scipy==1.17.0", "pandas==3.0.5", *_PYSTACK_COMMON),
                ),
                WheelVersion(
                    "v2",
                    ("numpy==2.4.6", "scipy==1.17.1", "pandas==3.0.6", *_PYSTACK_COMMON),
                ),
            ),
        ),
    )
}


@dataclass(frozen=True)
class BuiltVersion:
    """A version in the cache: ``path`` is the rootfs directory to build images from."""

    series: str
    label: str
    key: str
    path: Path
    entry: Path
    packages: dict[str, str]  # package (or distribution) -> version
    build_seconds: float
    built_from: str  # "mirror", "frozen debs", "wheels"
    cached: bool
    bytes: int  # regular file bytes
    files: int  # regular files


# --- cache -----------------------------------------------------------------------


def series_root(cache: Path | None = None) -> Path:
    return (cache or debian.cache_root()) / "series"


def _entry(version: Version, series: str, cache: Path | None) -> Path:
    return series_root(cache) / series / f"{version.label}-{version.key()}"


def _debs_dir(version: DebianVersion, series: str, cache: Path | None) -> Path:
    return series_root(cache) / series / f"debs-{version.label}-{version.key()}"


def _tree_stats(root: Path) -> tuple[int, int]:
    total = count = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
                count += 1
    return total, count


def _dpkg_versions(rootfs: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    text = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields and "installed" in fields.get("Status", ""):
            versions[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(versions.items()))


def _dist_versions(site: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    for info in sorted(site.glob("*.dist-info")):
        name = version = ""
        for line in (info / "METADATA").read_text(errors="replace").splitlines():
            if line.startswith("Name: "):
                name = line[6:].strip()
            elif line.startswith("Version: "):
                version = line[9:].strip()
            elif not line:
                break
        versions[name] = version
    return versions


def build_version(
    series: str, version: Version, *, cache: Path | None = None, offline: bool = False
) -> BuiltVersion:
    """Return the cached tree of *version*, building it first if needed.

    Debian versions are built from the mirror, or from their frozen ``.deb`` files
    when *offline* is set (or when the frozen files exist and the entry does not:
    the mirror may no longer have those versions).
    """
    final = _entry(version, series, cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    cached = True
    with debian.file_lock(final.parent / f".{final.name}.lock"):
        if not final.is_dir():
            cached = False
            for stale in final.parent.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
            tmp.mkdir()
            try:
                if isinstance(version, DebianVersion):
                    meta = _build_debian(version, tmp, _debs_dir(version, series, cache), offline)
                else:
                    meta = _build_wheels(version, tmp, series_root(cache) / "wheels")
                (tmp / "version.json").write_text(json.dumps(meta, indent=2) + "\n")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    meta = json.loads((final / "version.json").read_text())
    return BuiltVersion(
        series=series,
        label=version.label,
        key=version.key(),
        path=final / "rootfs",
        entry=final,
        packages=meta["packages"],
        build_seconds=meta["build_seconds"],
        built_from=meta["built_from"],
        cached=cached,
        bytes=meta["bytes"],
        files=meta["files"],
    )


def build_series(
    name: str, *, cache: Path | None = None, offline: bool = False
) -> list[BuiltVersion]:
    return [build_version(name, v, cache=cache, offline=offline) for v in SERIES[name].versions]


# --- Debian ----------------------------------------------------------------------


def _write_packages_index(debs: Path) -> None:
    """A flat apt repository index (``Packages``) for the ``.deb`` files in *debs*.

    What ``apt-ftparchive packages .`` writes, from ``dpkg-deb -f`` (no apt-utils needed).
    """
    stanzas = []
    for deb in sorted(debs.glob("*.deb")):
        control = run(["dpkg-deb", "-f", deb], timeout=60).stdout.decode().rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    (debs / "Packages").write_text("\n".join(stanzas))


def _offline_recipe(version: DebianVersion, debs: Path) -> debian.DebianRecipe:
    """The recipe that rebuilds *version* from its frozen debs.

    apt sees only the flat repository in *debs*; a customize hook puts back the
    ``etc/apt/sources.list`` the mirror build wrote (kept in *debs* when freezing),
    so both builds give the same tarball.
    """
    r = version.recipe
    restore = f"--customize-hook=upload {debs / 'sources.list'} /etc/apt/sources.list"
    return replace(
        r, options=(*r.options, restore), sources=(f"deb [trusted=yes] copy://{debs} ./",)
    )


def _build_debian(version: DebianVersion, tmp: Path, debs: Path, offline: bool) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise ToolError(f"building Debian version {version.label!r} needs root (mmdebstrap)")
    frozen = (debs / "Packages").is_file()
    if offline and not frozen:
        raise ToolError(f"no frozen .deb files for {version.label!r} in {debs}")
    start = time.monotonic()
    tar = tmp / "rootfs.tar"
    if offline or frozen:
        recipe = _offline_recipe(version, debs)
        mmdebstrap(
            recipe.suite,
            tar,
            recipe.sources,
            *recipe.options,
            source_date_epoch=recipe.source_date_epoch,
        )
        built_from = "frozen debs"
    else:
        grab = tmp / "debs"
        grab.mkdir()
        r = version.recipe
        mmdebstrap(
            r.suite,
            tar,
            r.sources,
            *r.options,
            "--skip=download/empty",
            "--skip=essential/unlink",
            f"--customize-hook=sync-out /var/cache/apt/archives {grab}",
            source_date_epoch=r.source_date_epoch,
        )
        for junk in grab.iterdir():
            if not junk.name.endswith(".deb"):
                shutil.rmtree(junk) if junk.is_dir() else junk.unlink()
        _write_packages_index(grab)
        run(["tar", "-xf", tar, "-C", grab, "./etc/apt/sources.list"], timeout=60)
        os.rename(grab / "etc/apt/sources.list", grab / "sources.list")
        shutil.rmtree(grab / "etc")
        shutil.rmtree(debs, ignore_errors=True)
        os.rename(grab, debs)
        built_from = "mirror"
    debian.extract_rootfs_tar(tar, tmp / "rootfs")
    # Emptying dev/ stamped it with the current time; mmdebstrap's tar has it at the epoch.
    epoch = version.recipe.source_date_epoch
    os.utime(tmp / "rootfs/dev", (epoch, epoch), follow_symlinks=False)
    size, files = _tree_stats(tmp / "rootfs")
    return {
        "label": version.label,
        "recipe": asdict(version.recipe),
        "key": version.key(),
        "built_from": built_from,
        "debs": str(debs),
        "rootfs_tar_sha256": _sha256_file(tar),
        "build_seconds": round(time.monotonic() - start, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bytes": size,
        "files": files,
        "packages": _dpkg_versions(tmp / "rootfs"),
    }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_offline(name: str, *, cache: Path | None = None) -> list[dict[str, Any]]:
    """Rebuild each Debian version of *name* from its frozen debs; compare rootfs.tar digests."""
    report = []
    for version in SERIES[name].versions:
        if not isinstance(version, DebianVersion):
            continue
        built = build_version(name, version, cache=cache)
        debs = _debs_dir(version, name, cache)
        recipe = _offline_recipe(version, debs)
        with tempfile.TemporaryDirectory(dir=series_root(cache)) as tmp:
            tar = Path(tmp) / "rootfs.tar"
            start = time.monotonic()
            mmdebstrap(recipe.suite, tar, recipe.sources, *recipe.options)
            seconds = time.monotonic() - start
            digest = _sha256_file(tar)
        expected = json.loads((built.entry / "version.json").read_text())["rootfs_tar_sha256"]
        report.append(
            {
                "label": version.label,
                "identical": digest == expected,
                "offline_sha256": digest,
                "cached_sha256": expected,
                "seconds": round(seconds, 1),
            }
        )
    return report


# --- Python wheels ----------------------------------------------------------------

_PIP_VERSION: str | None = None


def _pip_version() -> str:
    global _PIP_VERSION
    if _PIP_VERSION is None:
        out = _pip(["--version"], timeout=60).stdout.decode()
        _PIP_VERSION = out.split()[1]
    return _PIP_VERSION


def _pip(args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    argv = [sys.executable, "-m", "pip", *args]
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=timeout, env=env, umask=0o022, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        raise ToolError(
            f"exit status {proc.returncode}: {' '.join(argv)}\n{proc.stderr.decode()[-4000:]}"
        )
    return proc


def _clamp_mtimes(root: Path, epoch: int) -> None:
    """pip writes the current time: set every mtime to *epoch*, children before parents."""
    for dirpath, dirs, names in os.walk(root, topdown=False):
        for name in names + dirs:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def _build_wheels(version: WheelVersion, tmp: Path, wheels: Path) -> dict[str, Any]:
    start = time.monotonic()
    wheels.mkdir(parents=True, exist_ok=True)
    target_opts = [
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        version.python_version,
        "--platform",
        version.platform,
        "--implementation",
        "cp",
    ]
    # Download into the shared wheel store first (a no-op when present), then install
    # only from that store: the wheels are the frozen form of the series.
    _pip(["download", "--dest", str(wheels), *target_opts, *version.requirements], timeout=900)
    rootfs = tmp / "rootfs"
    site = rootfs / version.prefix
    site.mkdir(parents=True)
    os.chmod(rootfs, 0o755)
    _pip(
        [
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-compile",
            "--target",
            str(site),
            *target_opts,
            *version.requirements,
        ],
        timeout=900,
    )
    for dirpath, dirs, _names in os.walk(rootfs):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o755)
    _clamp_mtimes(rootfs, version.source_date_epoch)
    size, files = _tree_stats(rootfs)
    return {
        "label": version.label,
        "recipe": asdict(version),
        "key": version.key(),
        "built_from": "wheels",
        "wheels": str(wheels),
        "build_seconds": round(time.monotonic() - start, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bytes": size,
        "files": files,
        "packages": _dist_versions(site),
    }


# --- description ------------------------------------------------------------------


def package_changes(old: dict[str, str], new: dict[str, str]) -> dict[str, Any]:
    """Packages whose version changed, added, removed between two versions."""
    return {
        "changed": {
            p: [old[p], new[p]] for p in sorted(old.keys() & new.keys()) if old[p] != new[p]
        },
        "added": {p: new[p] for p in sorted(new.keys() - old.keys())},
        "removed": {p: old[p] for p in sorted(old.keys() - new.keys())},
    }


def describe(name: str, built: list[BuiltVersion]) -> dict[str, Any]:
    versions = []
    for i, b in enumerate(built):
        doc: dict[str, Any] = {
            "label": b.label,
            "path": str(b.path),
            "key": b.key,
            "bytes": b.bytes,
            "files": b.files,
            "packages": len(b.packages),
            "build_seconds": b.build_seconds,
            "built_from": b.built_from,
            "cached": b.cached,
            "note": SERIES[name].versions[i].note,
        }
        if i:
            doc["changes"] = package_changes(built[i - 1].packages, b.packages)
        versions.append(doc)
    return {"series": name, "description": SERIES[name].description, "versions": versions}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("series", nargs="?", choices=sorted(SERIES))
    ap.add_argument("--list", action="store_true", help="list the series")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--offline", action="store_true", help="build Debian versions from frozen debs")
    ap.add_argument(
        "--verify-offline",
        action="store_true",
        help="rebuild from the frozen debs and compare with the cached tarballs",
    )
    args = ap.parse_args(argv)
    if args.list or not args.series:
        if args.json:
            doc = {
                n: {"description": s.description, "versions": [v.label for v in s.versions]}
                for n, s in SERIES.items()
            }
            print(json.dumps(doc, indent=2))
        else:
            for n, s in SERIES.items():
                print(f"{n:11} {len(s.versions)} versions  {s.description}")
        return 0
    try:
        built = build_series(args.series, offline=args.offline)
        report = verify_offline(args.series) if args.verify_offline else None
    except ToolError as exc:
        print(f"series: {exc}", file=sys.stderr)
        return 1
    doc = describe(args.series, built)
    if report is not None:
        doc["offline_rebuild"] = report
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for v in doc["versions"]:
            print(v["path"])
        if report is not None:
            for r in report:
                state = "identical" if r["identical"] else "DIFFERENT"
                print(f"offline rebuild {r['label']}: {state} ({r['seconds']} s)", file=sys.stderr)
    if report is not None and not all(r["identical"] for r in report):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
