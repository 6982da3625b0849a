"""Helpers for the sysroot tests (no tests here): stage a directory, deploy it, a tiny TOC.

Also a command line used by the crash tests to deploy in a child process::

    python tests/test_sysroot_support.py deploy SYSROOT SRC REF
    python tests/test_sysroot_support.py rollback SYSROOT
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from chunkah.host.deploy import collect_garbage, commit_deployment, copy_tree, link_or_copy
from chunkah.host.sysroot import Deployment, DeploymentMetadata, Sysroot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def example_tree(dest: Path, version: int) -> Path:
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    from example_tree import make_example_tree

    return make_example_tree(dest, version)


def metadata(ref: str, **kw: object) -> DeploymentMetadata:
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    return DeploymentMetadata(image_ref=ref, manifest_digest=digest, **kw)  # type: ignore[arg-type]


def _same_meta(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid, a.st_size, a.st_mtime_ns) == (
        b.st_mode,
        b.st_uid,
        b.st_gid,
        b.st_size,
        b.st_mtime_ns,
    )


def stage_tree(sysroot: Sysroot, src: Path, *, share: bool = True) -> Path:
    """Copy ``src`` into a staging directory the way an assembler would.

    With ``share``, regular files equal (content and metadata) to the current
    deployment's are hardlinked from it with ``link_or_copy``.
    """
    current = sysroot.current()
    with sysroot.stage() as staged:
        os.rmdir(staged)
        copy_tree(src, staged, sync=False)
        if share and current is not None:
            for dirpath, _dirs, files in os.walk(staged):
                for name in files:
                    path = Path(dirpath, name)
                    rel = path.relative_to(staged)
                    old = current.root / rel
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    try:
                        ost = os.lstat(old)
                    except FileNotFoundError:
                        continue
                    same = stat.S_ISREG(ost.st_mode) and _same_meta(st, ost)
                    if same and old.read_bytes() == path.read_bytes():
                        path.unlink()
                        link_or_copy(old, path)
            for dirpath, _dirs, _files in os.walk(staged):  # unlink/link touched them
                st = os.lstat(src / Path(dirpath).relative_to(staged))
                os.utime(dirpath, ns=(st.st_mtime_ns, st.st_mtime_ns))
    return staged


def deploy(sysroot: Sysroot, src: Path, ref: str, **kw: object) -> Deployment:
    with sysroot.lock():
        staged = stage_tree(sysroot, src)
        dep = commit_deployment(sysroot, staged, metadata(ref, **kw))
        collect_garbage(sysroot)
        return dep


def main(argv: list[str]) -> int:
    if argv[0] == "deploy":
        sysroot = Sysroot.init(argv[1])
        with sysroot.lock(wait=30):
            print("locked", flush=True)
            staged = stage_tree(sysroot, Path(argv[2]))
            commit_deployment(sysroot, staged, metadata(argv[3]))
            collect_garbage(sysroot)
        return 0
    if argv[0] == "rollback":
        from chunkah.host.deploy import rollback

        rollback(Sysroot.open(argv[1]))
        return 0
    if argv[0] == "hold-lock":
        sysroot = Sysroot.open(argv[1])
        with sysroot.lock():
            print("locked", flush=True)
            sys.stdin.read()  # until the parent closes our stdin
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
