"""What the strategies of one series share: canonical tars, images, a registry, a web server.

Everything is built lazily, once, and kept under the workspace's root (by default
``$CHUNKAH_TEST_CACHE/bench-suite/<series>``), so a resumed suite run reuses it.
Images are keyed by the content of ``chunkah/`` (``code_state()``): a code change
rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.debian import file_lock
from support.registry import AccessEntry, RunningRegistry, start_registry
from support.tools import skopeo_copy

from .process import run_measured

REPO = Path(__file__).resolve().parent.parent.parent
EPOCH = 1_700_000_000
BUILD_TIMEOUT = 3600.0
BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")

#: Image kinds: ``chunkah build`` arguments (history-aware adds ``--previous``).
IMAGE_KINDS: dict[str, tuple[str, ...]] = {
    "chunked": (),  # the defaults: packed layers, chunked zstd + TOC
    "gzip-1": ("--compression", "gzip", "--max-layers", "1"),  # one gzip layer
    "zstd-stateless": ("--compression", "zstd"),  # packed layers, plain zstd
    "zstd-history": ("--compression", "zstd"),  # + --previous (the version before)
}


def code_state() -> str:
    """A hash of the files under chunkah/ as they are on disk (the code measured)."""
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "chunkah"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.split()
    h = hashlib.sha256()
    for name in sorted(names):
        path = REPO / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:12]


def chunkah_cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "chunkah", *(os.fspath(a) for a in args)]


@dataclass(frozen=True)
class Image:
    """One image in an OCI layout, with how it was built."""

    root: Path
    tag: str
    build: dict[str, Any]  # seconds, maxrss_mib, bytes (blobs), layers

    @property
    def manifest(self) -> dict[str, Any]:
        index = json.loads((self.root / "index.json").read_text())
        desc = index["manifests"][0]
        doc: dict[str, Any] = json.loads(self.blob(desc["digest"]).read_bytes())
        return doc

    def blob(self, digest: str) -> Path:
        algo, hexdigest = digest.split(":", 1)
        return self.root / "blobs" / algo / hexdigest

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"])


@dataclass
class Wire:
    """Requests a server logged for one operation, summed."""

    requests: int
    bytes: int
    by_kind: dict[str, list[int]]  # "GET manifest" -> [requests, bytes]
    statuses: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "by_kind": self.by_kind,
            "statuses": self.statuses,
        }


def wire_of(entries: list[AccessEntry], config_digests: set[str]) -> Wire:
    by_kind: dict[str, list[int]] = {}
    statuses: dict[str, int] = {}
    for e in entries:
        if e.is_manifest:
            kind = "manifest"
        elif e.is_blob and e.path.rsplit("/", 1)[-1] in config_digests:
            kind = "config"
        elif e.is_blob:
            kind = f"layer {e.status}"
        else:
            kind = "other"
        slot = by_kind.setdefault(f"{e.method} {kind}", [0, 0])
        slot[0] += 1
        slot[1] += e.bytes
        statuses[str(e.status)] = statuses.get(str(e.status), 0) + 1
    return Wire(len(entries), sum(e.bytes for e in entries), by_kind, statuses)


class Workspace:
    """Shared artifacts of one series: ``tar(k)``, ``image(kind, k)``, ``ref(kind, k)``."""

    def __init__(
        self, root: Path, series: str, trees: list[Path], keys: list[str], code: str | None = None
    ) -> None:
        self.root = root
        self.series = series
        self.trees = trees
        self.keys = keys  # series.py's recipe keys, one per version
        # *code*: use the images an earlier code state built (client-side re-runs).
        self.code = code or code_state()
        self._registry: RunningRegistry | None = None
        self._pushed: dict[tuple[str, int], str] = {}
        self._configs: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)

    # --- canonical tars -------------------------------------------------------------

    def tar(self, k: int) -> Path:
        """Version k's tree as one tar (sorted, pax, xattrs, numeric owners, no atime)."""
        path = self.root / "tars" / f"{self.keys[k]}.tar"
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                self._write_tar(k, path)
        return path

    def _write_tar(self, k: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        run_measured(
            ["tar", "--sort=name", "--format=pax", "--pax-option=delete=atime,delete=ctime",
             "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
             "-C", self.trees[k], "-cf", tmp, "."],
            timeout=BUILD_TIMEOUT,
        ).check()  # fmt: skip
        os.rename(tmp, path)

    # --- images ---------------------------------------------------------------------

    def image(self, kind: str, k: int) -> Image:
        """Version k built as *kind* (see IMAGE_KINDS), built once per chunkah code state."""
        tag = f"v{k + 1}"
        name = f"{kind}-{self.keys[k]}"
        if kind == "zstd-history":
            # The chain starts at the first version this run has (the quick profile's v2).
            name += f"-after-{self.keys[k - 1] if self._has_previous(k) else 'none'}"
        out = self.root / "images" / self.code / name
        stamp = out / "build.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out.parent / f".{out.name}.lock"):
            if not stamp.exists():
                self._build(kind, k, out, tag)
        img = Image(out, tag, json.loads(stamp.read_text()))
        self._configs.add(str(img.manifest["config"]["digest"]))
        return img

    def _has_previous(self, k: int) -> bool:
        return k > 0 and self.trees[k - 1].is_dir()

    def _build(self, kind: str, k: int, out: Path, tag: str) -> None:
        stamp = out / "build.json"
        shutil.rmtree(out, ignore_errors=True)
        if kind == "zstd-chunked":
            build = self._zstd_chunked(out, k, tag)
        else:
            args = list(IMAGE_KINDS[kind])
            if kind == "zstd-history" and self._has_previous(k):
                prev = self.image(kind, k - 1)
                args += ["--previous", f"oci:{prev.root}:{prev.tag}"]
            m = run_measured(
                chunkah_cmd("build", self.trees[k], "-o", f"oci:{out}:{tag}", "-q", *args),
                timeout=BUILD_TIMEOUT,
                env={"SOURCE_DATE_EPOCH": str(EPOCH)},
            ).check()
            build = {"seconds": m.seconds, "maxrss_mib": m.maxrss_mib, "tool": "chunkah build"}
        img = Image(out, tag, build)
        build["bytes"] = sum(int(layer["size"]) for layer in img.layers)
        build["layers"] = len(img.layers)
        stamp.write_text(json.dumps(build, indent=2) + "\n")

    def _zstd_chunked(self, out: Path, k: int, tag: str) -> dict[str, Any]:
        """The single-layer gzip image converted by ``skopeo --dest-compress-format zstd:chunked``."""
        src = self.image("gzip-1", k)
        BLOB_INFO_CACHE.unlink(missing_ok=True)  # or skopeo reuses an earlier conversion
        m = run_measured(
            ["skopeo", "--insecure-policy", "copy", "--dest-compress-format", "zstd:chunked",
             f"oci:{src.root}:{src.tag}", f"oci:{out}:{tag}"],
            timeout=BUILD_TIMEOUT,
        ).check()  # fmt: skip
        return {
            "seconds": src.build["seconds"] + m.seconds,
            "maxrss_mib": max(src.build["maxrss_mib"], m.maxrss_mib),
            "tool": "chunkah build --compression gzip --max-layers 1, then skopeo copy "
            "--dest-compress-format zstd:chunked",
        }

    # --- registry -------------------------------------------------------------------

    @property
    def registry(self) -> RunningRegistry:
        if self._registry is None:
            # One registry per process: concurrent runs must not share an access log.
            self._registry = start_registry(self.root / f"registry-{os.getpid()}")
        return self._registry

    def ref(self, kind: str, k: int) -> str:
        """``docker://`` reference of image(kind, k) in the registry (pushed once)."""
        if (kind, k) not in self._pushed:
            img = self.image(kind, k)
            ref = self.registry.ref(f"{self.series}/{kind}", f"{img.tag}-{self.code}")
            skopeo_copy(
                f"oci:{img.root}:{img.tag}", ref, preserve_digests=True, timeout=BUILD_TIMEOUT
            )
            self._pushed[kind, k] = ref
        return self._pushed[kind, k]

    def mark(self) -> int:
        return self.registry.access_offset()

    def wire_since(self, mark: int) -> Wire:
        return wire_of(self.registry.access_entries(mark), self._configs)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.stop()
            shutil.rmtree(self._registry.workdir, ignore_errors=True)
            self._registry = None
            self._pushed.clear()


_CLAMPS: dict[Path, Any] = {}


def clamps_for(tree: Path) -> Any:
    """Expected mtimes of *tree* after a chunkah build (cached per tree)."""
    if tree not in _CLAMPS:
        from support.clamps import expected_clamps

        _CLAMPS[tree] = expected_clamps(tree, EPOCH)
    return _CLAMPS[tree]
