"""Host updates end to end through the CLI, against a real docker-registry.

Images are built with `chunkah build`, pushed with skopeo, and hosts run
`chunkah update/rollback/status`; every deployed tree is judged by diff_trees
against the source tree (mtimes per the packing clamp rule).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.clamps import expected_clamps
from support.debian import copy_tree
from support.tools import skopeo_copy
from support.treediff import assert_trees_equal

EPOCH = 1_700_000_000
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from example_tree import make_example_tree  # noqa: E402


def chunkah(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"chunkah {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def update(ref: str, sysroot: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(
        chunkah(
            "update", ref, "--sysroot", str(sysroot), "--plain-http", "--json", *extra, env=env
        ).stdout
    )


def assert_deployed(sysroot: Path, src: Path, which: str = "current") -> None:
    root = os.path.realpath(sysroot / which)
    assert_trees_equal(src, root, mtime_clamp=expected_clamps(src, EPOCH))


@pytest.fixture(scope="module")
def example_images(docker_registry, tmp_path_factory):
    """The built-in example image, v1 and v2, built by chunkah and pushed."""
    tmp = tmp_path_factory.mktemp("example")
    refs = {}
    for v in (1, 2):
        src = make_example_tree(tmp / f"src{v}", v)
        chunkah("build", str(src), "-o", f"oci:{tmp}/img:v{v}")
        ref = docker_registry.ref("example", f"v{v}")
        skopeo_copy(f"oci:{tmp}/img:v{v}", ref, preserve_digests=True)
        refs[v] = (ref, src)
    return refs


def test_update_rollback_update(example_images, tmp_path, docker_registry):
    (ref1, src1), (ref2, src2) = example_images[1], example_images[2]
    sysroot = tmp_path / "sys"
    first = update(ref1, sysroot)
    assert_deployed(sysroot, src1)
    assert first["plan"]["files"].get("build", 0) > 0

    mark = docker_registry.access_offset()
    second = update(ref2, sysroot)
    assert_deployed(sysroot, src2)
    assert_deployed(sysroot, src1, "previous")
    # Only what changed came over the wire: far less than a full pull.
    plan = second["plan"]
    assert plan["files"]["link"] >= 30
    blob_bytes = sum(e.bytes for e in docker_registry.access_entries(since=mark) if e.is_blob)
    assert blob_bytes == second["fetched_bytes"] - sum(
        e.bytes for e in docker_registry.access_entries(since=mark) if not e.is_blob
    )
    assert blob_bytes < plan["full_pull_bytes"] / 3
    assert blob_bytes <= plan["expected_bytes"] + 16384  # + the config blob

    status = json.loads(chunkah("status", "--sysroot", str(sysroot), "--json").stdout)
    assert status["current"]["id"] == second["deployment"]

    chunkah("rollback", "--sysroot", str(sysroot))
    assert_deployed(sysroot, src1)
    assert_deployed(sysroot, src2, "previous")
    update(ref2, sysroot)
    assert_deployed(sysroot, src2)


def test_unchanged_image_fetches_only_manifest_and_config(
    example_images, tmp_path, docker_registry
):
    ref2, src2 = example_images[2]
    sysroot = tmp_path / "sys"
    update(ref2, sysroot)
    mark = docker_registry.access_offset()
    again = update(ref2, sysroot)
    assert again["unchanged"] is True
    entries = docker_registry.access_entries(since=mark)
    # One manifest GET and the config blob: no layer bytes at all.
    layer_digests = {row["digest"] for row in again["plan"]["layers"]}
    assert not [e for e in entries if any(d.split(":")[1] in e.path for d in layer_digests)]
    assert_deployed(sysroot, src2)


def test_etc_edits_survive_and_var_is_state(example_images, tmp_path):
    (ref1, _src1), (ref2, src2) = example_images[1], example_images[2]
    sysroot = tmp_path / "sys"
    first = update(ref1, sysroot)
    etc = sysroot / "state/etc" / first["deployment"]
    (etc / "example.conf").write_text("# the admin's own\nlisten = 0.0.0.0\n")
    (etc / "admin-added").write_text("mine\n")
    var = sysroot / "state/var"
    assert (var / "lib/example").is_dir()
    (var / "lib/example/data.db").write_text("state")

    second = update(ref2, sysroot)
    new_etc = sysroot / "state/etc" / second["deployment"]
    assert (new_etc / "example.conf").read_text().startswith("# the admin's own")
    assert (new_etc / "admin-added").read_text() == "mine\n"
    # A file the admin did not touch follows the new image.
    assert (new_etc / "os-release").read_text() == (src2 / "etc/os-release").read_text()
    assert (var / "lib/example/data.db").read_text() == "state"
    # The deployment itself is exactly the image.
    assert_deployed(sysroot, src2)


def test_plan_json_before_any_download(example_images, tmp_path, docker_registry):
    (ref1, _), (ref2, _) = example_images[1], example_images[2]
    sysroot = tmp_path / "sys"
    update(ref1, sysroot)
    mark = docker_registry.access_offset()
    plan = json.loads(
        chunkah("plan", ref2, "--sysroot", str(sysroot), "--plain-http", "--json").stdout
    )["plan"]
    changed = [row for row in plan["layers"] if not row["unchanged"]]
    assert changed and all(row["components"] for row in changed)
    assert plan["expected_bytes"] == plan["fetch_bytes"] + plan["toc_bytes"]
    # Planning fetched TOCs (small ranges), never layer content.
    got = sum(e.bytes for e in docker_registry.access_entries(since=mark) if e.is_blob)
    assert got <= plan["toc_bytes"] + 64 * 1024
    human = chunkah("plan", ref2, "--sysroot", str(sysroot), "--plain-http").stdout
    assert "to download:" in human


@pytest.mark.parametrize(
    "point", ["fetched-1", "assembled", "synced", "moved", "journaled", "switched"]
)
def test_kill9_then_rerun(example_images, tmp_path, point):
    (ref1, src1), (ref2, src2) = example_images[1], example_images[2]
    sysroot = tmp_path / "sys"
    update(ref1, sysroot)
    crashed = chunkah(
        "update",
        ref2,
        "--sysroot",
        str(sysroot),
        "--plain-http",
        "--json",
        env={"CHUNKAH_TEST_CRASH_AT": point},
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr
    # Whatever moment it died at, current is one whole image.
    current = os.path.realpath(sysroot / "current")
    try:
        assert_trees_equal(src1, current, mtime_clamp=expected_clamps(src1, EPOCH))
    except AssertionError:
        assert point == "switched"
        assert_trees_equal(src2, current, mtime_clamp=expected_clamps(src2, EPOCH))
    update(ref2, sysroot)
    assert_deployed(sysroot, src2)


def test_second_update_waits_or_fails_clearly(example_images, tmp_path):
    ref1, _ = example_images[1]
    sysroot = tmp_path / "sys"
    update(ref1, sysroot)
    from chunkah.host.sysroot import Sysroot

    holder = Sysroot.open(sysroot)
    with holder.lock():
        busy = chunkah("update", ref1, "--sysroot", str(sysroot), "--plain-http", check=False)
        assert busy.returncode == 5
        assert "another update" in busy.stderr
        status = chunkah("status", "--sysroot", str(sysroot), "--json")
        assert json.loads(status.stdout)["current"] is not None
        refused = chunkah("rollback", "--sysroot", str(sysroot), check=False)
        assert refused.returncode == 5


@pytest.mark.needs_root
def test_debian_update_with_changed_removed_and_added_files(
    debian_tiny_rootfs, docker_registry, tmp_path
):
    v1 = debian_tiny_rootfs.path
    v2 = tmp_path / "v2"
    copy_tree(v1, v2)
    bash = v2 / "usr/bin/bash"
    data = bytearray(bash.read_bytes())
    data[100_000:100_400] = os.urandom(400)  # a rebuilt binary: a few chunks change
    bash.write_bytes(bytes(data))
    os.utime(bash, (EPOCH - 10, EPOCH - 10))
    (v2 / "usr/bin/gzip").unlink()
    (v2 / "usr/share/new-file").write_text("added in v2\n")
    os.utime(v2 / "usr/share/new-file", (EPOCH - 10, EPOCH - 10))
    refs = {}
    for name, src in (("v1", v1), ("v2", v2)):
        chunkah("build", str(src), "-o", f"oci:{tmp_path}/img:{name}")
        refs[name] = docker_registry.ref("debian-tiny-host", name)
        skopeo_copy(f"oci:{tmp_path}/img:{name}", refs[name], preserve_digests=True)
    sysroot = tmp_path / "sys"
    update(refs["v1"], sysroot)
    assert_deployed(sysroot, v1)
    result = update(refs["v2"], sysroot)
    assert_deployed(sysroot, v2)
    plan = result["plan"]
    assert plan["chunks"].get("local", 0) > 0  # bash's unchanged chunks came from v1's copy
    assert plan["fetch_bytes"] < 1_000_000


@pytest.mark.needs_root
@pytest.mark.parametrize("kind", ["zstd:chunked", "gzip"])
def test_updates_from_images_made_by_other_tools(
    kind, debian_tiny_rootfs, docker_registry, tmp_path
):
    """zstd:chunked layers written by skopeo (their TOC) and plain gzip layers (whole
    download, still verified) both deploy the exact tree; a second version reuses
    what the host has."""
    v1 = debian_tiny_rootfs.path
    v2 = tmp_path / "v2"
    copy_tree(v1, v2)
    ls = v2 / "usr/bin/ls"
    data = bytearray(ls.read_bytes())
    data[20_000:20_100] = os.urandom(100)
    ls.write_bytes(bytes(data))
    os.utime(ls, (EPOCH - 5, EPOCH - 5))
    blob_cache = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
    refs = {}
    for name, src in (("v1", v1), ("v2", v2)):
        chunkah(
            "build",
            str(src),
            "-o",
            f"oci:{tmp_path}/img:{name}",
            "--max-layers",
            "1",
            "--compression",
            "gzip",
        )
        refs[name] = docker_registry.ref(f"foreign-{kind.replace(':', '-')}", name)
        if kind == "zstd:chunked":
            blob_cache.unlink(missing_ok=True)
            skopeo_copy(
                f"oci:{tmp_path}/img:{name}", refs[name], "--dest-compress-format", "zstd:chunked"
            )
        else:
            skopeo_copy(f"oci:{tmp_path}/img:{name}", refs[name], preserve_digests=True)
    sysroot = tmp_path / "sys"
    first = update(refs["v1"], sysroot)
    assert_trees_equal(v1, os.path.realpath(sysroot / "current"), mtime_clamp=EPOCH)
    second = update(refs["v2"], sysroot)
    assert_trees_equal(v2, os.path.realpath(sysroot / "current"), mtime_clamp=EPOCH)
    kinds = {row["kind"] for row in second["plan"]["layers"]}
    if kind == "zstd:chunked":
        assert kinds == {"zstd:chunked"}
        # Only the changed file's chunks were fetched, by range.
        assert second["plan"]["fetch_bytes"] < first["plan"]["fetch_bytes"] / 10
        assert second["plan"]["files"]["link"] > 500
    else:
        assert kinds == {"whole"}
        assert second["plan"]["whole_layer_bytes"] > 0
