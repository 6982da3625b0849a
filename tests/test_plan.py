"""The update planner: pure, no I/O; tested on hand-made layer indexes."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkah.host.index import ChunkRef, FrameRef, IndexEntry, LayerIndex
from chunkah.host.plan import (
    Inventory,
    PlanError,
    flatten,
    inventory_from_indexes,
    plan_update,
)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def d(path: bytes, **kw) -> IndexEntry:
    return IndexEntry(path=path, type="dir", mode=0o755, uid=0, gid=0, mtime=1, size=0, **kw)


def f(
    path: bytes,
    chunks: list[bytes],
    *,
    frames: list[int] | None = None,
    mode: int = 0o644,
    mtime: int = 1,
) -> IndexEntry:
    refs = tuple(
        ChunkRef(sha(c), len(c), frames[i] if frames else i, 0) for i, c in enumerate(chunks)
    )
    content = b"".join(chunks)
    return IndexEntry(
        path=path,
        type="file",
        mode=mode,
        uid=0,
        gid=0,
        mtime=mtime,
        size=len(content),
        sha256=sha(content),
        chunks=refs,
    )


def layer(
    digest: str, entries: list[IndexEntry], nframes: int = 8, frame_size: int = 100
) -> LayerIndex:
    frames = [FrameRef(i * frame_size, frame_size, 1000) for i in range(nframes)]
    return LayerIndex(
        digest=digest,
        diff_id=digest,
        blob_size=nframes * frame_size,
        media_type="x",
        kind="chunkah",
        entries=entries,
        frames=frames,
        toc_bytes=50,
    )


def test_whiteouts_opaque_dirs_and_replacement():
    lower = layer(
        "sha256:a",
        [
            d(b""),
            d(b"etc"),
            f(b"etc/a", [b"A"]),
            f(b"etc/b", [b"B"]),
            d(b"opt"),
            f(b"opt/x", [b"X"]),
            f(b"keep", [b"K"]),
        ],
    )
    upper = layer(
        "sha256:b",
        [
            d(b""),
            d(b"etc"),
            IndexEntry(b"etc/.wh.a", "file", 0, 0, 0, 0, 0),
            d(b"opt"),
            IndexEntry(b"opt/.wh..wh..opq", "file", 0, 0, 0, 0, 0),
            f(b"opt/y", [b"Y"]),
            d(b"keep"),
        ],
    )
    final = flatten([lower, upper])
    assert sorted(final) == [b"", b"etc", b"etc/b", b"keep", b"opt", b"opt/y"]
    assert final[b"keep"][1].type == "dir"  # a directory replaced the file


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [
                d(b""),
                IndexEntry(b"a", "symlink", 0o777, 0, 0, 1, 0, link=b"/etc"),
                f(b"a/passwd", [b"x"]),
            ],
            "parent is a symlink",
        ),
        ([d(b""), f(b"missing/f", [b"x"])], "parent directory is not in the image"),
        ([d(b""), IndexEntry(b"h", "hardlink", 0o644, 0, 0, 1, 1, link=b"nowhere")], "hardlink"),
    ],
)
def test_hostile_trees_are_refused(entries, message):
    with pytest.raises(PlanError, match=message):
        plan_update([layer("sha256:a", entries)], Inventory())


def test_fresh_install_fetches_everything_in_coalesced_ranges():
    entries = [
        d(b""),
        f(b"a", [b"a1", b"a2"], frames=[0, 1]),
        f(b"b", [b"b1"], frames=[5]),
        f(b"e", []),
    ]
    plan = plan_update([layer("sha256:a", entries)], Inventory())
    assert [s.action for s in plan.files] == ["build", "build", "empty"]
    # Frames 0 and 1 are adjacent (one range); frame 5 is 300 bytes away, within the merge gap.
    assert [(r.offset, r.length, r.frames) for r in plan.fetch] == [(0, 600, (0, 1, 5))]
    far = plan_update([layer("sha256:a", entries, frame_size=100_000)], Inventory())
    assert [(r.offset, r.frames) for r in far.fetch] == [(0, (0, 1)), (500_000, (5,))]


def test_update_reuses_local_files_chunks_and_cache():
    old = layer(
        "sha256:old",
        [
            d(b""),
            f(b"same", [b"S"]),
            f(b"moved-from", [b"M"]),
            f(b"big", [b"c1", b"c2", b"c3"]),
            f(b"meta", [b"Q"], mode=0o644),
        ],
    )
    new = layer(
        "sha256:new",
        [
            d(b""),
            f(b"same", [b"S"]),  # identical: hardlink
            f(b"moved-to", [b"M"]),  # same content elsewhere: hardlink
            f(b"big", [b"c1", b"c9", b"c3"], frames=[0, 1, 2]),  # one chunk changed
            f(b"meta", [b"Q"], mode=0o755),  # same content, new mode: copy
            f(b"fresh", [b"N1", b"N2"], frames=[6, 7]),
        ],
    )
    inv = inventory_from_indexes([old], cached=frozenset([sha(b"N1")]))
    plan = plan_update([new], inv)
    by_path = {s.entry.path: s for s in plan.files}
    assert by_path[b"same"].action == "link" and by_path[b"same"].local == b"same"
    assert by_path[b"moved-to"].action == "link" and by_path[b"moved-to"].local == b"moved-from"
    assert by_path[b"meta"].action == "copy"
    big = by_path[b"big"]
    assert big.action == "build"
    assert [c.source for c in big.chunks] == ["local", "fetch", "local"]
    assert big.chunks[2].local.offset == 4  # after c1 and c2 in the old file
    assert [c.source for c in by_path[b"fresh"].chunks] == ["cache", "fetch"]
    fetched_frames = sorted(fr for r in plan.fetch for fr in r.frames)
    assert fetched_frames == [1, 7]
    summary = plan.summary([new])
    assert summary["expected_bytes"] == summary["fetch_bytes"] + 50
    assert summary["files"] == {"link": 2, "copy": 1, "build": 2}


def test_unchanged_image_fetches_nothing():
    img = layer("sha256:a", [d(b""), f(b"x", [b"1", b"2"]), f(b"y", [b"3"])])
    plan = plan_update([img], inventory_from_indexes([img]))
    assert plan.fetch == () and plan.unchanged_layers == (0,)
    assert plan.summary([img])["expected_bytes"] == 0


def test_chunks_that_do_not_add_up_are_refused():
    bad = IndexEntry(
        b"x",
        "file",
        0o644,
        0,
        0,
        1,
        10,
        sha256=sha(b"0123456789"),
        chunks=(ChunkRef(sha(b"0"), 3, 0),),
    )
    with pytest.raises(PlanError, match="add up"):
        plan_update([layer("sha256:a", [d(b""), bad])], Inventory())


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(1, 500)),
        min_size=1,
        max_size=60,
        unique_by=lambda t: t[0],
    ),
    gap=st.integers(0, 2000),
)
def test_coalescing_covers_every_frame_once(frames, gap):
    from chunkah.host.plan import _coalesce

    frames = sorted((o, s, i) for i, (o, s) in enumerate(frames))
    ranges = _coalesce(0, frames, gap)
    covered = [i for r in ranges for i in r.frames]
    assert sorted(covered) == sorted(i for _, _, i in frames)
    for r in ranges:
        for o, s, i in frames:
            if i in r.frames:
                assert r.offset <= o and o + s <= r.offset + r.length
    for a, b in itertools.pairwise(ranges):
        assert b.offset - (a.offset + a.length) > gap or b.offset < a.offset + a.length


def test_one_local_inode_backs_one_new_path():
    """Two new files with the same content and metadata must not both hardlink the same
    local file: that would create a hardlink set the image does not have."""
    old = layer("sha256:old", [d(b""), f(b"a", [b"same"]), f(b"b", [b"other"])])
    new = layer(
        "sha256:new", [d(b""), f(b"a", [b"same"]), f(b"copy-of-a", [b"same"]), f(b"b", [b"other"])]
    )
    plan = plan_update([new], inventory_from_indexes([old]))
    by_path = {s.entry.path: s for s in plan.files}
    assert by_path[b"a"].action == "link" and by_path[b"a"].local == b"a"
    assert by_path[b"copy-of-a"].action == "copy" and by_path[b"copy-of-a"].local == b"a"
    assert by_path[b"b"].action == "link"
