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

from chunkah.host.deploy import (
    apply_dir_metadata,
    collect_garbage,
    commit_deployment,
    copy_entry,
    link_or_copy,
)
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
    deployment's are hardlinked from it with ``link_or_copy`` instead of copied.
    """
    current = sysroot.current() if share else None
    with sysroot.stage() as staged:
        dirs = [(os.fsencode(src), os.fsencode(staged), os.lstat(src))]
        groups: dict[tuple[int, int], Path] = {}
        for dirpath, dirnames, files in os.walk(src):
            rel_dir = Path(dirpath).relative_to(src)
            for name in dirnames + files:
                s = Path(dirpath, name)
                d = staged / rel_dir / name
                st = os.lstat(s)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(d, 0o700)
                    dirs.append((os.fsencode(s), os.fsencode(d), st))
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:  # keep hardlink groups
                    key = (st.st_dev, st.st_ino)
                    if key in groups:
                        os.link(groups[key], d)
                        continue
                    groups[key] = d
                if current is not None and stat.S_ISREG(st.st_mode):
                    old = current.root / rel_dir / name
                    try:
                        ost = os.lstat(old)
                    except FileNotFoundError:
                        ost = None
                    same = ost is not None and stat.S_ISREG(ost.st_mode) and _same_meta(st, ost)
                    if same and old.read_bytes() == s.read_bytes():
                        link_or_copy(old, d)
                        continue
                copy_entry(os.fsencode(s), os.fsencode(d), st)
        for bs, bd, st in reversed(dirs):
            apply_dir_metadata(bs, bd, st)
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
