"""Tar-to-tar binary deltas as near-ideal references: ``xdelta3 -9`` and ``zstd -19 --patch-from``.

Both encode the new version's canonical tar against the old one's (the workspace
writes both with ``tar --sort=name --format=pax``); the delta file is what a client
would download.  The client applies it to its old tar; the result must be the new
tar byte for byte (that is the tree check: same tar, same tree).  Nobody deploys
trees this way (the client would need the old tar, not the old tree), hence
"reference".
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import verdict

TIMEOUT = 7200.0


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _same(a: Path, b: Path) -> dict[str, Any]:
    if a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b):
        return verdict([], mtimes="compared (byte-identical tar)")
    return verdict([f"content differs for the decoded tar: {a} != {b}"], mtimes="—")


def _result(delta: Path, enc: Any, dec: Any, check: dict[str, Any]) -> dict[str, Any]:
    """What every reference delta reports: its size, both runs' time and memory, the check."""
    return {
        "bytes": delta.stat().st_size,
        "seconds": enc.seconds,
        "apply_seconds": dec.seconds,
        "encode_maxrss_mib": enc.maxrss_mib,
        "apply_maxrss_mib": dec.maxrss_mib,
        "ok": check["ok"],
        "tree": check,
    }


def measure_zstd_patch_from(
    old_tar: Path, new_tar: Path, *, level: int = 19, workdir: Path | None = None
) -> dict[str, Any]:
    """``zstd -LEVEL --long=31 --patch-from=OLD NEW``, then decode and compare.

    Returns ``bytes`` (the delta), ``seconds`` (encode), ``apply_seconds``,
    ``encode_maxrss_mib``, ``apply_maxrss_mib``, ``ok`` (decoded == new tar).
    """
    if shutil.which("zstd") is None:
        raise Unavailable("zstd is not installed")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        delta, back = Path(tmp) / "delta.zst", Path(tmp) / "new.tar"
        enc = run_measured(
            ["zstd", "-q", f"-{level}", "--long=31", f"--patch-from={old_tar}", new_tar,
             "-o", delta],
            timeout=TIMEOUT,
        ).check()  # fmt: skip
        dec = run_measured(
            ["zstd", "-q", "-d", "--long=31", f"--patch-from={old_tar}", delta, "-o", back],
            timeout=TIMEOUT,
        ).check()
        return _result(delta, enc, dec, _same(new_tar, back))


def measure_xdelta3(old_tar: Path, new_tar: Path, *, workdir: Path | None = None) -> dict[str, Any]:
    """``xdelta3 -e -9 -B 1 GiB -s OLD NEW``, then decode and compare (keys as above)."""
    if shutil.which("xdelta3") is None:
        raise Unavailable("xdelta3 is not installed (Debian package xdelta3)")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        delta, back = Path(tmp) / "delta.xd3", Path(tmp) / "new.tar"
        # The source window must cover the whole old tar, or matches far back are lost.
        window = str(max(1 << 30, old_tar.stat().st_size))
        enc = run_measured(
            ["xdelta3", "-e", "-9", "-B", window, "-s", old_tar, new_tar, delta],
            timeout=TIMEOUT,
        ).check()
        dec = run_measured(
            ["xdelta3", "-d", "-B", window, "-s", old_tar, delta, back], timeout=TIMEOUT
        ).check()
        return _result(delta, enc, dec, _same(new_tar, back))


def _as_result(r: dict[str, Any], what: str) -> dict[str, Any]:
    return {
        "bytes": r["bytes"],
        "requests": 1,
        "seconds": r["apply_seconds"],
        "maxrss_mib": r["apply_maxrss_mib"],
        "tree": r["tree"],
        "build": {"seconds": r["seconds"], "maxrss_mib": r["encode_maxrss_mib"]},
        "note": f"{what}: delta file size; decoded against the old tar",
    }


def _xdelta3(step: Step) -> dict[str, Any]:
    old, new = step.ws.tar(step.k), step.ws.tar(step.k + 1)
    return _as_result(measure_xdelta3(old, new, workdir=step.work), "xdelta3 -9")


def _zstd(step: Step) -> dict[str, Any]:
    old, new = step.ws.tar(step.k), step.ws.tar(step.k + 1)
    return _as_result(measure_zstd_patch_from(old, new, workdir=step.work), "zstd -19 --long=31")


STRATEGIES = [
    Strategy(
        "xdelta3",
        "xdelta3 -9, tar to tar (reference)",
        _xdelta3,
        wire="delta file size",
        quick=False,  # a reference, not a client; kept out of bench-quick's budget
    ),
    Strategy(
        "zstd-patch-from",
        "zstd -19 --long=31 --patch-from, tar to tar (reference)",
        _zstd,
        wire="delta file size",
        quick=False,  # -19 takes 20-45 s on the tiny tar: beyond bench-quick's budget
    ),
]
