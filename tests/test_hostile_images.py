"""Hostile images pushed to a real docker-registry and applied with ``chunkah update``.

Each case of ``support.hostile.corpus`` (path traversal, symlink and hardlink escapes,
device nodes, NUL and odd names, duplicates, zstd bombs, TOCs that lie, digest and
diff_id mismatches, oversized documents, index loops, unknown media types) is pushed
under its own repository and applied to a copy of a sysroot whose current deployment
is the benign base image.  An attack must end with its *specific* error (class,
exit code, message); nothing outside the staging area and the content-addressed
cache may change, the current deployment included.  The few benign oddities (names
in odd encodings, an absolute member name, a layer without ``./``) must deploy,
every byte inside the new deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import hostile
from support.faultproxy import Fault, proxy_thread
from support.registry import RunningRegistry
from test_registry_common import client

from chunkah.errors import ChunkahError
from chunkah.host.store import HostStore
from chunkah.host.sysroot import Sysroot
from chunkah.host.update import UpdateOptions, run_update

CANARIES = [Path("/etc/passwd-abs"), Path("/tmp/escape"), Path("/escape"), Path("/b")]


class Corpus:
    def __init__(self, registry: RunningRegistry, workdir: Path) -> None:
        self.registry = registry
        self.base = hostile.build_base(hostile.tiny_tree(workdir / "src"), workdir)
        self.cases = {c.name: c for c in hostile.corpus(self.base)}
        # The host: a sysroot whose current deployment is another image (different
        # content: the hostile layers are new to it and their chunks must be fetched).
        base_ref = registry.ref("hostile/host", "v1")
        other = hostile.tiny_tree(workdir / "host-src", seed=12)
        hostile.chunkah("build", str(other), "-o", base_ref, "--plain-http", "-q")
        self.template = workdir / "template"
        hostile.chunkah(*hostile.update_cmd(base_ref, self.template))
        self.pushed: dict[str, str] = {}

    def ref(self, name: str) -> str:
        if name not in self.pushed:
            ref = self.registry.ref(f"hostile/{name}", "v1")

            async def push() -> None:
                async with client() as c:
                    await hostile.push_case(c, ref, self.cases[name])

            asyncio.run(push())
            self.pushed[name] = ref
        return self.pushed[name]


@pytest.fixture(scope="module")
def corpus(docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(docker_registry, tmp_path_factory.mktemp("hostile"))


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (but ``skip``) with its type, mode, size, mtime, inode, link."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            if p in skip:
                continue
            st = os.lstat(p)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                link,
            )
    return out


def test_the_corpus_is_complete(corpus: Corpus) -> None:
    assert list(corpus.cases) == list(hostile.CASE_NAMES)
    attacks = [c for c in corpus.cases.values() if not c.ok]
    assert len(attacks) >= 30
    threats = {c.threat.split(" (")[0] for c in attacks}
    for needed in ("tar path traversal", "symlink escape", "hardlink outside the tree",
                   "device nodes", "NUL in a name", "duplicate paths", "zstd bomb",
                   "TOC: overlapping offsets", "TOC: out-of-blob offsets", "TOC: wrong sizes",
                   "TOC: wrong digests", "TOC: chunk lists not covering the file",
                   "TOC digest mismatch", "diff_id mismatch", "oversized manifest",
                   "oversized TOC", "index loops", "unknown media types"):  # fmt: skip
        assert any(needed in t for t in threats), needed


@pytest.mark.parametrize("name", hostile.CASE_NAMES)
def test_hostile_image(corpus: Corpus, tmp_path: Path, name: str) -> None:
    case = corpus.cases[name]
    ref = corpus.ref(name)
    # The sysroot sits two levels down, so a "../../x" escape would land where we look.
    sysroot = tmp_path / "a" / "b" / "sys"
    sysroot.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(corpus.template), str(sysroot)], check=True)
    allowed = {sysroot / "staging", sysroot / "cache", sysroot / "lock"}
    before = snapshot(tmp_path, allowed)
    current = os.readlink(sysroot / "current")

    def attempt(target: str) -> BaseException | None:
        store = HostStore(Sysroot.init(sysroot))
        try:
            with store.sysroot.lock():
                run_update(target, store, UpdateOptions(plain_http=True))
        except ChunkahError as exc:
            return exc
        return None

    if case.served_manifest is not None:
        body = case.served_manifest
        ctype = json.loads(body).get("mediaType", case.media_type)
        fault = Fault(
            "body", match="manifest", nth=None, body=body, headers={"Content-Type": ctype}
        )
        with proxy_thread(corpus.registry.url, [fault]) as proxy:
            error = attempt(ref.replace(corpus.registry.host, proxy.host))
    else:
        error = attempt(ref)

    for canary in CANARIES:
        assert not canary.exists(), canary
    if case.ok:
        assert error is None, f"{name}: {error!r}"
        new = os.readlink(sysroot / "current")
        assert new != current
        after = snapshot(tmp_path, allowed)
        # What changed is the new deployment, its /etc state and previous/current; the
        # old deployment and everything outside the sysroot are untouched.
        new_id = new.split("/")[1]
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        inside = f"a/b/sys/deployments/{new_id}", f"a/b/sys/state/etc/{new_id}"
        assert all(
            k.startswith(inside) or k in ("a/b/sys/current", "a/b/sys/previous", "a/b/sys",
                                          "a/b/sys/deployments", "a/b/sys/state/etc")
            for k in changed
        ), sorted(changed)[:10]  # fmt: skip
        return
    assert error is not None, f"{name}: the update went through"
    assert isinstance(error, case.error), f"{name}: {type(error).__name__}: {error}"
    assert error.exit_code == case.exit_code, (name, error.exit_code, str(error))
    assert re.search(case.message, str(error)), f"{name}: {error}"
    assert os.readlink(sysroot / "current") == current
    after = snapshot(tmp_path, allowed)
    assert after == before, sorted(
        k for k in set(before) | set(after) if before.get(k) != after.get(k)
    )[:10]
    assert list((sysroot / "staging").iterdir()) == []


def test_cli_reports_a_hostile_image(corpus: Corpus, tmp_path: Path) -> None:
    """The same attack through ``chunkah update`` as a user types it: exit code and message."""
    sysroot = tmp_path / "sys"
    shutil.copytree(corpus.template, sysroot, symlinks=True)
    for name, code in (("tar-dotdot", 2), ("toc-digest-mismatch", 4)):
        r = hostile.chunkah(*hostile.update_cmd(corpus.ref(name), sysroot), check=False)
        assert r.returncode == code, (name, r.returncode, r.stderr)
        assert r.stderr.startswith("chunkah: error: ")
        assert re.search(corpus.cases[name].message, r.stderr)
        assert "Traceback" not in r.stderr
