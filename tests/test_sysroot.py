"""The sysroot: layout, cache, lock, commit / rollback / commit again, /etc and /var, gc, status."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.handmade import HandmadeTree
from support.treediff import assert_trees_equal, diff_trees
from test_sysroot_support import deploy, example_tree, metadata, stage_tree

from chunkah.errors import StateError, VerificationError
from chunkah.format.toc import CdcSettings, TocBuilder, encode_toc_frame
from chunkah.host.deploy import (
    collect_garbage,
    commit_deployment,
    copy_tree,
    fsync_tree,
    link_or_copy,
    rollback,
)
from chunkah.host.sysroot import LayerRecord, Sysroot, status

SUPPORT = Path(__file__).with_name("test_sysroot_support.py")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("images")
    return example_tree(base / "v1", 1), example_tree(base / "v2", 2)


@pytest.fixture
def sysroot(tmp_path: Path) -> Sysroot:
    return Sysroot.init(tmp_path / "sysroot")


def current_tree(sysroot: Sysroot) -> Path:
    link = sysroot.path / "current"
    assert link.is_symlink()
    return link.resolve()


# --- layout and cache -------------------------------------------------------------------


def test_init_is_idempotent_and_open_checks(tmp_path: Path) -> None:
    with pytest.raises(StateError) as err:
        Sysroot.open(tmp_path)
    assert err.value.exit_code == 5 and "not a chunkah sysroot" in str(err.value)
    s = Sysroot.init(tmp_path / "s")
    Sysroot.init(tmp_path / "s")
    Sysroot.open(tmp_path / "s")
    for rel in ("deployments", "state/etc", "cache/chunks/sha256", "cache/tocs/sha256", "staging"):
        assert (s.path / rel).is_dir(), rel
    assert json.loads((s.path / "sysroot.json").read_text()) == {"schema": 1}
    assert s.current() is None and s.previous() is None


def test_chunk_cache(sysroot: Sysroot) -> None:
    data = b"chunk data" * 100
    raw = hashlib.sha256(data).digest()
    assert not sysroot.cache_has(raw) and sysroot.cache_get(raw) is None
    path = sysroot.cache_put(raw, data)
    hx = raw.hex()
    assert path == sysroot.path / "cache/chunks/sha256" / hx[:2] / hx
    assert path.read_bytes() == data
    for key in (raw, hx, "sha256:" + hx):
        assert sysroot.cache_get(key) == path and sysroot.cache_has(key)
    assert sysroot.cache_put(hx, data) == path  # already there
    with pytest.raises(VerificationError):
        sysroot.cache_put(hashlib.sha256(b"other").digest(), data)
    assert not sysroot.cache_has(hashlib.sha256(b"other").digest())
    assert list((sysroot.cache_dir / "tmp").iterdir()) == []


def test_toc_store(sysroot: Sysroot, tmp_path: Path) -> None:
    blob = b"toc bytes"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    p = sysroot.toc_put(digest, blob)
    assert p.read_bytes() == blob and sysroot.toc_path(digest) == p
    other = tmp_path / "t"
    other.write_bytes(b"other toc")
    d2 = "sha256:" + hashlib.sha256(b"other toc").hexdigest()
    assert sysroot.toc_put(d2, other).read_bytes() == b"other toc"
    with pytest.raises(VerificationError):
        sysroot.toc_put("sha256:" + "0" * 64, blob)


# --- lock --------------------------------------------------------------------------------


def test_second_lock_from_another_process_fails_clearly(sysroot: Sysroot) -> None:
    holder = subprocess.Popen(
        [sys.executable, str(SUPPORT), "hold-lock", str(sysroot.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(StateError) as err:
            sysroot.lock()
        msg = str(err.value)
        assert f"another update (pid {holder.pid}) is running" in msg and " since " in msg
        t0 = time.monotonic()
        with pytest.raises(StateError, match=r"waited 0\.3 s"):
            sysroot.lock(wait=0.3)
        assert time.monotonic() - t0 >= 0.3
        report = status(sysroot)  # read-only: works while the lock is held
        assert report["update_running"]["pid"] == holder.pid
        assert report["current"] is None
        json.dumps(report)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert status(sysroot)["update_running"] is None
    with sysroot.lock():  # free again
        with sysroot.lock():  # re-entrant within one Sysroot
            assert sysroot.locked
        assert sysroot.locked
    assert not sysroot.locked


def test_lock_waits_for_a_holder_that_finishes(sysroot: Sysroot) -> None:
    holder = subprocess.Popen(
        [sys.executable, str(SUPPORT), "hold-lock", str(sysroot.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    assert holder.stdin is not None
    holder.stdin.close()  # it releases soon
    with sysroot.lock(wait=20):
        assert sysroot.lock_holder() is not None
    holder.wait(10)


def test_writes_need_the_lock(sysroot: Sysroot, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="needs the sysroot lock"):
        commit_deployment(sysroot, tmp_path, metadata("x"))
    with pytest.raises(StateError, match="needs the sysroot lock"), sysroot.stage():
        pass
    with pytest.raises(StateError, match="needs the sysroot lock"):
        collect_garbage(sysroot)


def test_staged_tree_must_be_in_staging(sysroot: Sysroot, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    with sysroot.lock(), pytest.raises(StateError, match="directly in"):
        commit_deployment(sysroot, tmp_path / "elsewhere", metadata("x"))
    assert (tmp_path / "elsewhere").is_dir()


def test_leftovers_of_crashed_runs_are_removed_by_the_next_lock(sysroot: Sysroot) -> None:
    (sysroot.staging_dir / "tree-crashed" / "usr").mkdir(parents=True)
    (sysroot.staging_dir / "tree-crashed" / "usr" / "f").write_bytes(b"x" * 10000)
    (sysroot.cache_dir / "tmp" / "put-123").write_bytes(b"half a chunk")
    os.symlink("deployments/x/root", sysroot.path / ".current.tmp-99")
    with sysroot.lock():
        assert list(sysroot.staging_dir.iterdir()) == []
        assert list((sysroot.cache_dir / "tmp").iterdir()) == []
        assert not os.path.lexists(sysroot.path / ".current.tmp-99")


# --- deploy, roll back, deploy again ----------------------------------------------------


def test_commit_rollback_commit(sysroot: Sysroot, images: tuple[Path, Path]) -> None:
    v1, v2 = images
    d1 = deploy(sysroot, v1, "example:v1")
    assert os.readlink(sysroot.path / "current") == f"deployments/{d1.id}/root"
    assert_trees_equal(v1, current_tree(sysroot))  # exactly the image, nothing else
    assert sorted(os.listdir(d1.path)) == ["deployment.json", "root"]
    assert sysroot.previous() is None
    doc = json.loads((d1.path / "deployment.json").read_text())
    assert doc["image_ref"] == "example:v1" and doc["id"] == d1.id
    assert doc["manifest_digest"] == metadata("example:v1").manifest_digest
    assert_trees_equal(v1 / "etc", sysroot.etc_dir(d1.id))
    assert_trees_equal(v1 / "var", sysroot.var_dir)

    d2 = deploy(sysroot, v2, "example:v2")
    assert_trees_equal(v2, current_tree(sysroot))
    assert sysroot.current() == d2 and sysroot.previous() == d1
    assert_trees_equal(v1, d1.root)  # the previous deployment is intact
    # Unchanged files are shared with the previous deployment (same inode).
    busybox = "usr/bin/busybox"
    assert os.stat(d1.root / busybox).st_ino == os.stat(d2.root / busybox).st_ino
    libssl = "usr/lib/x86_64-linux-gnu/libssl.so.3"
    assert os.stat(d1.root / libssl).st_ino != os.stat(d2.root / libssl).st_ino

    assert rollback(sysroot) == d1
    assert_trees_equal(v1, current_tree(sysroot))
    assert sysroot.current() == d1 and sysroot.previous() == d2
    assert rollback(sysroot) == d2  # roll forward
    assert_trees_equal(v2, current_tree(sysroot))

    d3 = deploy(sysroot, v1, "example:v1")  # deploy again (a downgrade, say)
    assert_trees_equal(v1, current_tree(sysroot))
    assert sysroot.current() == d3 and sysroot.previous() == d2
    assert sysroot.deployment_ids() == [d2.id, d3.id]  # gc kept current + previous only
    assert sorted(os.listdir(sysroot.state_dir / "etc")) == [d2.id, d3.id]
    assert list(sysroot.staging_dir.iterdir()) == []
    assert not os.path.lexists(sysroot.journal_path)


def test_rollback_without_previous(sysroot: Sysroot, images: tuple[Path, Path]) -> None:
    with pytest.raises(StateError, match="no deployment yet"):
        rollback(sysroot)
    deploy(sysroot, images[0], "v1")
    with pytest.raises(StateError, match="no previous deployment"):
        rollback(sysroot)


def test_etc_edits_survive_an_update_and_conflicts_are_reported(
    sysroot: Sysroot, images: tuple[Path, Path]
) -> None:
    v1, v2 = images
    d1 = deploy(sysroot, v1, "v1")
    etc1 = sysroot.etc_dir(d1.id)
    (etc1 / "example.conf").write_bytes(b"listen = 0.0.0.0\n")  # image leaves it alone
    (etc1 / "local.conf").write_bytes(b"mine\n")  # added by the admin
    (etc1 / "local.conf").chmod(0o600)
    os.symlink("example.conf", etc1 / "alias.conf")

    d2 = deploy(sysroot, v2, "v2")
    etc2 = sysroot.etc_dir(d2.id)
    assert (etc2 / "example.conf").read_bytes() == b"listen = 0.0.0.0\n"
    assert (etc2 / "local.conf").read_bytes() == b"mine\n"
    assert (etc2 / "local.conf").stat().st_mode & 0o777 == 0o600
    assert os.readlink(etc2 / "alias.conf") == "example.conf"
    assert (etc2 / "os-release").read_bytes() == (v2 / "etc/os-release").read_bytes()
    assert d2.etc_conflicts == () and d2.etc_merged_from == d1.id
    assert_trees_equal(v2, current_tree(sysroot))  # the tree keeps the pristine /etc
    # The old deployment's /etc state is untouched, for rollback.
    assert (etc1 / "os-release").read_bytes() == (v1 / "etc/os-release").read_bytes()

    # The admin edits a file that the next image changes too: a conflict, admin wins.
    (etc2 / "os-release").write_bytes(b'NAME="My OS"\n')
    d3 = deploy(sysroot, v1, "v1-again")
    etc3 = sysroot.etc_dir(d3.id)
    assert (etc3 / "os-release").read_bytes() == b'NAME="My OS"\n'
    assert (etc3 / "local.conf").read_bytes() == b"mine\n"
    report = status(sysroot)
    assert [c["path"] for c in report["etc_conflicts"]] == ["/etc/os-release"]
    assert report["etc_conflicts"][0]["kind"] == "both-changed"
    assert report["current"]["etc_conflicts"] == report["etc_conflicts"]

    # Rolling back brings back that deployment's /etc as it was.
    rollback(sysroot)
    assert sysroot.etc_dir(sysroot.current().id) == etc2  # type: ignore[union-attr]
    assert status(sysroot)["etc_conflicts"] == []


def test_var_is_created_once_and_never_overwritten(
    sysroot: Sysroot, images: tuple[Path, Path], tmp_path: Path
) -> None:
    v1, v2 = images
    deploy(sysroot, v1, "v1")
    (sysroot.var_dir / "lib/example/state.db").write_bytes(b"data")
    v2b = tmp_path / "v2b"
    subprocess.run(["cp", "-a", str(v2), str(v2b)], check=True)
    (v2b / "var/lib/example/shipped").write_bytes(b"new image content in /var")
    (v2b / "var/cache").mkdir()
    snapshot = tmp_path / "var-before"
    subprocess.run(["cp", "-a", str(sysroot.var_dir), str(snapshot)], check=True)
    deploy(sysroot, v2b, "v2b")
    assert diff_trees(snapshot, sysroot.var_dir) == []
    assert not (sysroot.var_dir / "lib/example/shipped").exists()
    assert (current_tree(sysroot) / "var/lib/example/shipped").exists()  # in the image tree


# --- gc ------------------------------------------------------------------------------------


def _toc_blob(chunks: list[bytes]) -> bytes:
    b = TocBuilder(CdcSettings(min_size=1024, avg_size=4096, max_size=16384))
    frame = b.add_frame(0, 0, 10, 10 * len(chunks))  # one frame, chunks of 10 bytes
    for i, c in enumerate(chunks):
        b.add_chunk(i * 10, 10, hashlib.sha256(c).digest(), 0, frame)
    return encode_toc_frame(b.finish(tar_size=10 * len(chunks), diff_id=bytes(32)))[0]


def test_gc_keeps_current_and_previous_and_their_chunks(
    sysroot: Sysroot, images: tuple[Path, Path]
) -> None:
    v1, v2 = images
    chunks = [b"chunk-%d" % i for i in range(5)]
    for c in chunks:
        with sysroot.lock():
            sysroot.cache_put(hashlib.sha256(c).digest(), c)
    tocs = [_toc_blob(chunks[0:2]), _toc_blob(chunks[1:3]), _toc_blob(chunks[2:4])]
    deps = []
    for i, (toc, tree) in enumerate(zip(tocs, (v1, v2, v1), strict=True)):
        digest = "sha256:" + hashlib.sha256(toc).hexdigest()
        layer = LayerRecord(
            digest=f"sha256:{i:064x}", diff_id=f"sha256:{i:064x}", toc_digest=digest
        )
        with sysroot.lock():
            staged = stage_tree(sysroot, tree)
            meta = metadata(f"img{i}", layers=(layer,), tocs={digest: toc})
            deps.append(commit_deployment(sysroot, staged, meta))
            if i < 2:
                continue
            report = collect_garbage(sysroot)
    assert report.deployments_removed == (deps[0].id,)
    assert report.etc_states_removed == (deps[0].id,)
    assert report.tocs_removed == 1
    assert report.chunks_removed == 2  # chunk 0 (first image only) and chunk 4 (nobody's)
    assert report.chunks_kept_reason is None
    assert report.bytes_freed > 0
    json.dumps(report.to_json())
    have = [sysroot.cache_has(hashlib.sha256(c).digest()) for c in chunks]
    assert have == [False, True, True, True, False]
    assert sysroot.deployment_ids() == [deps[1].id, deps[2].id]
    assert_trees_equal(v1, current_tree(sysroot))
    assert_trees_equal(v2, deps[1].root)


def test_gc_keeps_chunks_when_it_cannot_read_a_toc(
    sysroot: Sysroot, images: tuple[Path, Path]
) -> None:
    blob = b"a zstd:chunked TOC"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    layer = LayerRecord(
        "sha256:" + "1" * 64, "sha256:" + "2" * 64, toc_digest=digest, toc_format="zstd:chunked"
    )
    assert LayerRecord.from_json(layer.to_json()) == layer
    deploy(sysroot, images[0], "v1", layers=(layer,), tocs={digest: blob})
    with sysroot.lock():
        sysroot.cache_put(hashlib.sha256(b"c").digest(), b"c")
        report = collect_garbage(sysroot)
        assert report.chunks_removed == 0 and "zstd:chunked" in (report.chunks_kept_reason or "")
        report = collect_garbage(sysroot, chunk_refs=lambda path, fmt: [])
        assert report.chunks_removed == 1 and report.tocs_removed == 0


def test_status_reports_deployments_and_disk_use(
    sysroot: Sysroot, images: tuple[Path, Path]
) -> None:
    v1, v2 = images
    d1 = deploy(sysroot, v1, "example:v1")
    d2 = deploy(sysroot, v2, "example:v2")
    report = status(sysroot)
    json.dumps(report)
    assert report["current"]["id"] == d2.id and report["previous"]["id"] == d1.id
    assert report["current"]["image_ref"] == "example:v2"
    assert report["current"]["manifest_digest"] == d2.manifest_digest
    assert report["current"]["created"].endswith("Z")
    assert report["update_running"] is None and report["pending_switch"] is False
    disk = report["disk"]
    size_v1 = sum(p.stat().st_size for p in v1.rglob("*") if p.is_file() and not p.is_symlink())
    # v2 shares most files with v1 by hardlinks: far less than two full copies.
    assert size_v1 <= disk["deployments"] < 1.6 * size_v1
    assert disk["staging"] == 0
    assert disk["total"] == sum(v for k, v in disk.items() if k != "total")


# --- copy helpers ---------------------------------------------------------------------------


def test_copy_tree_keeps_every_entry_type(handmade_tree: HandmadeTree, tmp_path: Path) -> None:
    copy_tree(handmade_tree.root, tmp_path / "copy")
    assert_trees_equal(handmade_tree.root, tmp_path / "copy")


def test_a_handmade_tree_deploys_exactly(
    sysroot: Sysroot, handmade_tree: HandmadeTree, images: tuple[Path, Path]
) -> None:
    deploy(sysroot, images[0], "v1")
    with sysroot.lock():
        staged = stage_tree(sysroot, handmade_tree.root)
        fsync_tree(staged)
        commit_deployment(sysroot, staged, metadata("handmade"), files_synced=True)
    assert_trees_equal(handmade_tree.root, current_tree(sysroot))
    assert sysroot.previous() is not None


def test_link_or_copy_falls_back_to_a_full_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"content")
    src.chmod(0o4750)
    os.chown(src, 1234, 5678)
    os.setxattr(src, "user.component", b"pkg")
    os.utime(src, (1_600_000_000, 1_600_000_000))
    assert link_or_copy(src, tmp_path / "linked") is True
    assert os.stat(tmp_path / "linked").st_ino == os.stat(src).st_ino

    def no_link(*args: object, **kw: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert link_or_copy(src, tmp_path / "copied") is False
    assert os.stat(tmp_path / "copied").st_ino != os.stat(src).st_ino
    monkeypatch.undo()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    os.rename(tmp_path / "copied", b / "f")
    os.link(src, a / "f")
    assert_trees_equal(a, b, ignore=["."])
