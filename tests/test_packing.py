"""Packing: the pure planner, layer trees, and packed images judged by real tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.clamps import expected_clamps
from support.tools import skopeo_copy, umoci_unpack
from support.treediff import assert_trees_equal

from chunkah.owners import assign_components
from chunkah.packing import (
    NEW_LAYER,
    UNCLAIMED,
    ComponentInfo,
    PreviousLayer,
    component_infos,
    entry_clamps,
    fnv1a64,
    layer_trees,
    plan_history,
    plan_stateless,
    previous_plan,
)
from chunkah.tree import EntryType, read_dir

EPOCH = 1_700_000_000


def comps(n: int, *, seed: int = 0, unclaimed: bool = True) -> list[ComponentInfo]:
    import random

    rng = random.Random(seed)
    out = [
        ComponentInfo(
            f"dpkg/pkg{i:03d}",
            "1.0",
            int(rng.lognormvariate(12, 2)),
            rng.choice([0.0, 0.5, 0.9, 0.99]),
        )
        for i in range(n)
    ]
    if unclaimed:
        out.append(ComponentInfo(UNCLAIMED, "", 1_000_000, 0.0))
    return out


def test_fnv1a64_known_values() -> None:
    # Published FNV-1a 64-bit test vectors.
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), max_layers=st.integers(1, 130), seed=st.integers(0, 10_000))
def test_every_component_in_exactly_one_layer_within_budget(
    n: int, max_layers: int, seed: int
) -> None:
    infos = comps(n, seed=seed)
    plan = plan_stateless(infos, max_layers)
    assert 1 <= len(plan.layers) <= max_layers
    placed = [c for layer in plan.layers for c in layer.components]
    assert sorted(placed) == sorted(c.name for c in infos)
    assert len({layer.name for layer in plan.layers}) == len(plan.layers)
    assert plan == plan_stateless(list(reversed(infos)), max_layers), "input order must not matter"
    if max_layers > 1:
        # The catch-all is alone and last.
        assert plan.layers[-1].components == (UNCLAIMED,)


def test_few_components_get_a_layer_each_most_stable_first() -> None:
    infos = [
        ComponentInfo("dpkg/a", "1", 100, 0.5),
        ComponentInfo("dpkg/b", "1", 100, 0.99),
        ComponentInfo("dpkg/c", "1", 100, 0.0),
        ComponentInfo(UNCLAIMED, "", 10, 0.0),
    ]
    plan = plan_stateless(infos, 64)
    assert [layer.components for layer in plan.layers] == [
        ("dpkg/b",),
        ("dpkg/a",),
        ("dpkg/c",),
        (UNCLAIMED,),
    ]


def test_size_outliers_get_their_own_layers() -> None:
    infos = [ComponentInfo(f"dpkg/small{i}", "1", 1000 + i, 0.9) for i in range(100)]
    infos += [
        ComponentInfo("dpkg/perl", "1", 50_000_000, 0.9),
        ComponentInfo("dpkg/glibc", "1", 15_000_000, 0.9),
    ]
    plan = plan_stateless(infos, 20)
    assert ("dpkg/perl",) in [layer.components for layer in plan.layers]
    assert ("dpkg/glibc",) in [layer.components for layer in plan.layers]
    assert len(plan.layers) <= 20


def test_single_layer_mode() -> None:
    plan = plan_stateless(comps(10), 1)
    assert plan.mode == "single" and len(plan.layers) == 1 and len(plan.layers[0].components) == 11


def test_history_keeps_survivors_in_place_and_collects_new_ones() -> None:
    old = plan_stateless(comps(200, seed=1), 40)
    previous = [PreviousLayer(layer.name, layer.components) for layer in old.layers]
    infos = [c for c in comps(200, seed=1) if c.name != "dpkg/pkg007"]  # removed
    infos += [
        ComponentInfo("dpkg/brand-new", "1", 5000, 0.5),
        ComponentInfo("python/numpy", "2", 10**8, 0.9),
    ]
    plan = plan_history(infos, 40, previous)
    assert plan.mode == "history" and not plan.warnings
    before, after = old.layer_of(), plan.layer_of()
    for name, layer in after.items():
        if name in before:
            assert layer == before[name], f"{name} moved from {before[name]} to {layer}"
    assert after["dpkg/brand-new"] == after["python/numpy"] == NEW_LAYER
    assert "dpkg/pkg007" not in after
    # The next build keeps the new layer and adds to it.
    again = plan_history(
        [*infos, ComponentInfo("dpkg/another", "1", 1, 0.5)],
        40,
        [PreviousLayer(layer.name, layer.components) for layer in plan.layers],
    )
    assert again.layer_of()["dpkg/another"] == NEW_LAYER
    assert again.layer_of()["python/numpy"] == NEW_LAYER


def test_history_falls_back_to_stateless_with_a_warning() -> None:
    infos = comps(50)
    previous = [PreviousLayer(f"l{i}", (c.name,)) for i, c in enumerate(infos)]
    plan = plan_history(infos, 10, previous)
    assert plan.mode == "stateless"
    assert "more than --max-layers 10" in plan.warnings[0]
    assert (
        plan_history(infos, 10, [])
        .warnings[0]
        .startswith("the previous image has no chunkah layer plan")
    )


def test_previous_plan_from_annotations() -> None:
    plan = plan_stateless(comps(5), 64)
    versions = {c.name: c.version for c in comps(5)}
    annotations = [layer.annotations(versions) for layer in plan.layers]
    assert [p.components for p in previous_plan(annotations)] == [
        layer.components for layer in plan.layers
    ]
    assert previous_plan([{}]) == []
    with pytest.raises(Exception, match="malformed"):
        previous_plan([{"org.chunkah.layer": "x", "org.chunkah.layer.components": "{nope"}])


def test_layer_trees_cover_the_tree_with_consistent_parents(debian_tiny_rootfs) -> None:
    tree = read_dir(debian_tiny_rootfs.path)
    ownership = assign_components(tree, build_epoch=EPOCH)
    plan = plan_stateless(component_infos(ownership), 8)  # force bins on a 30-package tree
    layers = layer_trees(plan, tree, ownership, source_date_epoch=EPOCH)
    clamps = entry_clamps(tree, ownership, EPOCH)
    union: dict[bytes, object] = {}
    for lt in layers:
        for entry in lt.tree:
            # Parents present in the same layer.
            parent = entry.path.rpartition(b"/")[0]
            if entry.path:
                assert parent in lt.tree, f"{entry.path!r} lacks its parent in {lt.name}"
            # A path that appears in several layers is identical in each.
            if entry.path in union:
                assert union[entry.path] == entry, f"{entry.path!r} differs between layers"
            union[entry.path] = entry
            limit = clamps[entry.path]
            assert entry.mtime == min(tree[entry.path].mtime, limit)
        groups = lt.tree.hardlink_groups()
        for members in groups.values():
            assert len(members) > 1
    assert set(union) == set(tree.paths())
    # Hardlink sets are never split across layers.
    for members in tree.hardlink_groups().values():
        holders = {
            lt.name
            for lt in layers
            for m in members
            if m in lt.tree and lt.tree[m].type is EntryType.FILE
        }
        assert len(holders) == 1


def chunkah_build(*args: str) -> dict:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", "build", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.needs_root
def test_packed_debian_image_round_trips_through_registry(
    debian_minbase_rootfs, docker_registry, tmp_path
) -> None:
    src = debian_minbase_rootfs.path
    result = chunkah_build(str(src), "-o", f"oci:{tmp_path}/img:v1")
    assert 30 < len(result["layers"]) <= 64
    remote = docker_registry.ref("minbase-packed", "v1")
    skopeo_copy(f"oci:{tmp_path}/img:v1", remote, preserve_digests=True)
    skopeo_copy(remote, f"oci:{tmp_path}/gz:v1", "--dest-compress-format", "gzip")
    rootfs = umoci_unpack(tmp_path / "gz", "v1", tmp_path / "bundle")
    assert_trees_equal(src, rootfs, mtime_clamp=expected_clamps(src, EPOCH), ignore=(".",))


@pytest.mark.needs_root
def test_rebuilds_reuse_every_layer(debian_tiny_rootfs, tmp_path) -> None:
    src = str(debian_tiny_rootfs.path)
    first = chunkah_build(src, "-o", f"oci:{tmp_path}/a:v1")
    again = chunkah_build(src, "-o", f"oci:{tmp_path}/b:v1")
    history = chunkah_build(src, "-o", f"oci:{tmp_path}/c:v1", "--previous", f"oci:{tmp_path}/a:v1")
    digests = [layer["digest"] for layer in first["layers"]]
    assert [layer["digest"] for layer in again["layers"]] == digests
    assert sorted(layer["digest"] for layer in history["layers"]) == sorted(digests)
    assert first["manifest"]["digest"] == again["manifest"]["digest"]


def test_components_listed_in_layer_annotations(tmp_path) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    from example_tree import make_example_tree

    src = make_example_tree(tmp_path / "src", 1)
    result = chunkah_build(str(src), "-o", f"oci:{tmp_path}/img:v1")
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "chunkah", "inspect", f"oci:{tmp_path}/img:v1", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    names = [layer["annotations"]["org.chunkah.layer"] for layer in info["layers"]]
    assert names == [layer["name"] for layer in result["layers"]]
    listed = [
        json.loads(layer["annotations"]["org.chunkah.layer.components"]) for layer in info["layers"]
    ]
    assert all(isinstance(x, dict) and x for x in listed)
    # Big files are components of their own; history entries: one per layer.
    assert any(name.startswith("bigfile/") for name in names)
    assert len(info["history"]) == len(info["layers"])


def test_shared_directories_do_not_follow_any_package(debian_tiny_rootfs) -> None:
    """usr/bin holds files of many packages: its mtime must not move when one of
    them is updated, or every layer carrying usr/bin would change."""
    tree = read_dir(debian_tiny_rootfs.path)
    ownership = assign_components(tree, build_epoch=EPOCH)
    clamps = entry_clamps(tree, ownership, EPOCH)
    assert clamps[b"usr/bin"] == 0 and clamps[b"usr"] == 0 and clamps[b""] == 0
    # A directory only one package fills keeps that package's clamp.
    single = [
        p for p in tree.paths() if tree[p].type is EntryType.DIR and clamps[p] not in (0, None)
    ]
    assert single
    for p in single[:20]:
        owner = ownership.component_of(p).name
        kids = [q for q in tree.paths() if q.startswith(p + b"/")]
        assert {ownership.component_of(q).name for q in kids} <= {owner}
