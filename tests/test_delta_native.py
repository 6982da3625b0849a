"""The delta kernels of the C core against their pure-Python twins and PyPI bsdiff4:
bsdiff's search over divsufsort's suffix array, and encoding 5's sparse diff block."""

from __future__ import annotations

import lzma
import random
import struct
import subprocess

import bsdiff4.core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.backends import block_module, run_python

from chunkah.delta import bsdiff, sparse
from chunkah.delta.encode import (
    BSDIFF_SPARSE_XZ,
    BSDIFF_XZ,
    GZIP_INNER,
    ZSTD_PATCH,
    ZSTD_PATCH_PARTS,
    DeltaError,
    apply_delta,
    encode,
    encode_best,
)


def mutate(rng: random.Random, data: bytes, edits: int) -> bytes:
    """Binary-like edits: byte flips at a stride (relocated pointers), inserts, deletes."""
    out = bytearray(data)
    for _ in range(edits):
        if not out:
            out += rng.randbytes(rng.randrange(1, 200))
            continue
        kind = rng.randrange(3)
        at = rng.randrange(len(out))
        if kind == 0:
            for k in range(at, min(len(out), at + rng.randrange(1, 400)), 8):
                out[k] = (out[k] + 1) & 0xFF
        elif kind == 1:
            out[at:at] = rng.randbytes(rng.randrange(1, 300))
        else:
            del out[at : at + rng.randrange(1, 300)]
    return bytes(out)


def structured(rng: random.Random, size: int) -> bytes:
    """Repetitive content (a small alphabet, repeated phrases): many equal suffix
    prefixes, where the binary search's shortcuts matter."""
    words = [rng.randbytes(rng.randrange(1, 12)) for _ in range(20)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) if rng.random() < 0.7 else bytes([rng.randrange(4)])
    return bytes(out[:size])


# --- bsdiff ----------------------------------------------------------------------------


def test_the_extension_is_built() -> None:
    assert bsdiff.BACKEND == "native", "make test's install step builds chunkah._native._delta"
    assert sparse._native is not None


def test_suffix_array_is_bsdiffs_index() -> None:
    data = b"mississippi\x00banana"
    sa = bsdiff.suffix_array(data)
    assert sa[0] == len(data)
    assert [int(i) for i in sa[1:]] == sorted(range(len(data)), key=lambda i: data[i:])
    assert bsdiff.suffix_array(b"").tolist() == [0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 3000),
    edits=st.integers(0, 12),
    kind=st.sampled_from(["random", "structured"]),
)
def test_native_search_matches_the_python_twin_and_bsdiff4(
    seed: int, size: int, edits: int, kind: str
) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(size) if kind == "random" else structured(rng, size)
    new = mutate(rng, old, edits)
    sa = bsdiff.suffix_array(old)
    triples, d, e = bsdiff._search_native(old, new, sa)
    py_triples, py_d, py_e = bsdiff._search_python(old, new, sa)
    assert triples.tolist() == py_triples and d == py_d and e == py_e
    made = bsdiff.diff(old, new)
    assert made == tuple(bsdiff4.core.diff(old, new))
    assert bsdiff4.core.patch(old, len(new), *made) == new


def test_native_search_matches_bsdiff4_on_a_large_binary_pair() -> None:
    rng = random.Random(3)
    old = structured(rng, 400_000)
    new = mutate(rng, old, 200)
    made = bsdiff.diff(old, new)
    assert made == tuple(bsdiff4.core.diff(old, new))
    assert len(made[0]) // 24 > 100  # many matches, not one long copy
    assert bsdiff4.core.patch(old, len(new), *made) == new


def test_control_triples_are_collected_across_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    old = rng.randbytes(50_000)
    new = mutate(rng, old, 40)
    whole = bsdiff.diff(old, new)
    monkeypatch.setattr(bsdiff, "_BATCH", 3)
    assert bsdiff.diff(old, new) == whole
    assert len(whole[0]) // 24 > 3


def test_sign_magnitude_encoding() -> None:
    import numpy as np

    raw = bsdiff._sign_magnitude(np.array([0, 5, -5, -(1 << 40)], dtype=np.int64))
    values = struct.unpack("<4Q", raw)
    assert values == (0, 5, (1 << 63) | 5, (1 << 63) | (1 << 40))


# --- sparse diff block -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 70_000), st.integers(1, 255)), max_size=40),
    st.integers(0, 300),
)
def test_sparse_round_trip(tokens: list[tuple[int, int]], tail: int) -> None:
    dense = bytearray()
    for gap, value in tokens:
        dense += bytes(gap) + bytes([value])
    dense += bytes(tail)
    packed = sparse.pack(bytes(dense))
    assert sparse.expand(packed, len(dense)) == dense
    assert sparse.expand_python(packed, len(dense)) == dense
    if dense and not any(dense):
        assert packed == b""


def _same_outcome(tokens: bytes, size: int) -> str:
    """Both expanders give the same bytes, or the same error."""
    outcomes = []
    for fn in (sparse.expand, sparse.expand_python):
        try:
            outcomes.append(("ok", bytes(fn(tokens, size))))
        except sparse.SparseError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]
    return outcomes[0][0] if outcomes[0][0] == "ok" else str(outcomes[0][1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 400))
def test_sparse_expanders_agree_on_any_input(tokens: bytes, size: int) -> None:
    _same_outcome(tokens, size)


@pytest.mark.parametrize(
    ("tokens", "size", "message"),
    [
        (b"\x05", 10, "truncated"),
        (b"\xff", 1000, "truncated"),
        (b"\xff\x80", 1000, "truncated"),
        (b"\x09\x01", 9, "runs past"),
        (b"\x00\x01\x00\x01", 1, "runs past"),
        (b"\x00\x00", 4, "zero byte"),
        (b"\xff" + b"\xff" * 10 + b"\x01\x01", 1 << 20, "bad gap"),
        (b"\xff" + b"\xff" * 9 + b"\x7f\x01", 1 << 20, "bad gap"),
    ],
)
def test_sparse_rejects_malformed_streams(tokens: bytes, size: int, message: str) -> None:
    assert message in _same_outcome(tokens, size)


def test_long_gaps_use_the_escape() -> None:
    dense = bytes(254) + b"\x01" + bytes(255) + b"\x02" + bytes(255 + 300) + b"\x03"
    packed = sparse.pack(dense)
    assert packed[:2] == b"\xfe\x01"
    assert packed[2:5] == b"\xff\x00\x02"
    assert packed[5:] == b"\xff\xac\x02\x03"  # 300 = 0b10_0101100: 0xac 0x02
    assert sparse.expand(packed, len(dense)) == dense


# --- encoding 5 --------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 30_000), edits=st.integers(0, 15))
def test_sparse_encoding_round_trip(seed: int, size: int, edits: int) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(size)
    new = mutate(rng, old, edits)
    delta = encode(BSDIFF_SPARSE_XZ, old, new)
    assert apply_delta(BSDIFF_SPARSE_XZ, old, delta, len(new)) == new


def test_sparse_encoding_is_as_small_as_dense_xz_on_a_binary_patch() -> None:
    rng = random.Random(5)
    old = structured(rng, 600_000)
    new = mutate(rng, old, 300)
    sparse_delta = encode(BSDIFF_SPARSE_XZ, old, new)
    dense_delta = encode(BSDIFF_XZ, old, new)
    assert len(sparse_delta) <= 1.02 * len(dense_delta)
    encoding, best = encode_best(old, new)
    assert len(best) <= len(sparse_delta)
    assert apply_delta(encoding, old, best, len(new)) == new


def _sparse_delta(
    control: bytes, nd: int, tokens: bytes, extra: bytes, magic: bytes = b"CKSP"
) -> bytes:
    raw = struct.pack("<4sIQQQQ", magic, 0, len(control), nd, len(tokens), len(extra))
    raw += control + tokens + extra
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 2, "lp": 0, "pb": 1}]
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)


def test_hostile_sparse_deltas_fail_cleanly() -> None:
    old = b"0123456789" * 10
    new = old[:50] + b"X" + old[51:]
    good = encode(BSDIFF_SPARSE_XZ, old, new)
    assert apply_delta(BSDIFF_SPARSE_XZ, old, good, len(new)) == new
    control = bsdiff._sign_magnitude(__import__("numpy").array([100, 0, 0]))
    cases = {
        "bad magic": _sparse_delta(control, 100, b"\x32\x08", b"", magic=b"CKBD"),
        "diff longer than the file": _sparse_delta(control, 10_000, b"", b""),
        "tokens past the block": _sparse_delta(control, 100, b"\x64\x08", b""),
        "truncated tokens": _sparse_delta(control, 100, b"\xff", b""),
        "control not triples": _sparse_delta(control[:20], 100, b"", b""),
        "control past the file": _sparse_delta(
            bsdiff._sign_magnitude(__import__("numpy").array([200, 0, 0])), 100, b"", b""
        ),
        "truncated stream": good[: len(good) // 2],
    }
    for name, delta in cases.items():
        with pytest.raises(DeltaError):
            apply_delta(BSDIFF_SPARSE_XZ, old, delta, len(new))
            pytest.fail(name)
    # a stream that decompresses past the bound (a bomb) is refused before it is all read
    bomb = lzma.compress(bytes(50 << 20), format=lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 2, "lp": 0, "pb": 1}])  # fmt: skip
    with pytest.raises(DeltaError, match="larger than its file allows"):
        apply_delta(BSDIFF_SPARSE_XZ, old, bomb, len(new))


def test_gzip_inner_accepts_the_sparse_inner_encoding() -> None:
    import gzip
    import shutil

    if shutil.which("gzip") is None:
        pytest.fail("gzip is a Debian essential package: it must be on PATH")
    rng = random.Random(6)
    old_raw = structured(rng, 200_000)
    new_raw = mutate(rng, old_raw, 50)
    old = subprocess.run(
        ["gzip", "-n", "-6"], input=old_raw, capture_output=True, check=True
    ).stdout
    new = subprocess.run(
        ["gzip", "-n", "-6"], input=new_raw, capture_output=True, check=True
    ).stdout
    delta = encode(GZIP_INNER, old, new)
    assert delta[5] in (BSDIFF_SPARSE_XZ, 1, 2, 3)  # the inner encoding byte
    assert apply_delta(GZIP_INNER, old, delta, len(new)) == new
    forced = (
        delta[:5]
        + bytes([BSDIFF_SPARSE_XZ])
        + delta[6:24]
        + encode(BSDIFF_SPARSE_XZ, old_raw, new_raw)
    )
    assert apply_delta(GZIP_INNER, old, forced, len(new)) == new
    assert gzip.decompress(new) == new_raw


BLOCK_NATIVE = block_module("chunkah._native._delta")

PROBE = """
import random
from chunkah.delta import bsdiff, sparse
rng = random.Random(1)
old = rng.randbytes(3000)
new = old[:1000] + b"xyz" + old[1100:]
made = bsdiff.diff(old, new)
tokens = sparse.pack(made[1])
assert sparse.expand(tokens, len(made[1])) == made[1]
print(bsdiff.BACKEND, sparse._native is not None, made[0].hex()[:32])
"""


def test_backends_make_the_same_patch() -> None:
    runs = {
        "native": run_python(PROBE),
        "python": run_python(PROBE, CHUNKAH_BACKEND="python"),
        "bsdiff4": run_python(BLOCK_NATIVE + PROBE),
    }
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr)
    outs = {name: run.stdout.split() for name, run in runs.items()}
    assert outs["native"][:2] == ["native", "True"]
    assert outs["python"][:2] == ["python", "False"]
    assert outs["bsdiff4"][:2] == ["bsdiff4", "False"]
    assert len({o[2] for o in outs.values()}) == 1
    forced = run_python(BLOCK_NATIVE + PROBE, CHUNKAH_BACKEND="native")
    assert forced.returncode != 0 and "CHUNKAH_BACKEND=native but the C extension" in forced.stderr


# --- encoding 6 --------------------------------------------------------------------------


def test_parts_encoding_round_trip_and_runs_the_parts_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess as sp

    from chunkah.delta import encode as encode_mod

    started: list[float] = []
    real_popen = sp.Popen

    def popen(*args: object, **kwargs: object) -> sp.Popen[bytes]:
        started.append(__import__("time").monotonic())
        return real_popen(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(encode_mod.subprocess, "Popen", popen)
    rng = random.Random(8)
    old = structured(rng, 3 << 20)
    new = mutate(rng, old, 400)
    delta = encode(ZSTD_PATCH_PARTS, old, new, level=9)
    assert len(started) == 2  # one zstd process per part
    magic, count = struct.unpack_from("<4sI", delta)
    assert (magic, count) == (b"CKZP", 2)
    sizes = [struct.unpack_from("<QQ", delta, 8 + 16 * i) for i in range(2)]
    assert sum(c for _, c in sizes) == len(new) and abs(sizes[0][1] - sizes[1][1]) <= 1
    assert apply_delta(ZSTD_PATCH_PARTS, old, delta, len(new)) == new
    assert len(delta) < len(encode(ZSTD_PATCH, b"", new, level=9))  # the old file helped


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_parts_encoding_of_tiny_files(size: int) -> None:
    old = b"abcdef" * 10
    new = old[:size]
    delta = encode(ZSTD_PATCH_PARTS, old, new, level=3)
    assert struct.unpack_from("<4sI", delta)[1] == max(1, min(2, size))
    assert apply_delta(ZSTD_PATCH_PARTS, old, delta, len(new)) == new


def test_hostile_parts_deltas_fail_cleanly() -> None:
    rng = random.Random(9)
    old = structured(rng, 200_000)
    new = mutate(rng, old, 30)
    delta = encode(ZSTD_PATCH_PARTS, old, new, level=3)
    header = 8 + 16 * 2
    first_frame, first_content = struct.unpack_from("<QQ", delta, 8)
    cases = {
        "bad magic": b"CKZX" + delta[4:],
        "no parts": delta[:4] + struct.pack("<I", 0) + delta[8:],
        "too many parts": delta[:4] + struct.pack("<I", 1 << 20) + delta[8:],
        "truncated table": delta[:20],
        "truncated frames": delta[:-10],
        "sizes that do not add up": delta[:8]
        + struct.pack("<QQ", first_frame, first_content + 5)
        + delta[24:],
        "parts swapped sizes": delta[:8]
        + struct.pack("<QQ", first_frame, first_content - 1)
        + struct.pack(
            "<QQ", *struct.unpack_from("<QQ", delta, 24)[:1], len(new) - first_content + 1
        )
        + delta[header:],
        "a frame that is not zstd": delta[:header] + b"\x00" * (len(delta) - header),
    }
    for name, bad in cases.items():
        with pytest.raises(DeltaError):
            apply_delta(ZSTD_PATCH_PARTS, old, bad, len(new))
            pytest.fail(name)
    with pytest.raises(DeltaError):  # more than the file allows
        apply_delta(ZSTD_PATCH_PARTS, old, delta, len(new) - 1)


def test_encode_best_splits_a_big_far_file_over_two_processes() -> None:
    rng = random.Random(10)
    old = rng.randbytes(17 << 20)
    new = bytearray(old)
    for at in range(0, len(new), 4096):  # a rebuild: a fifth of every page differs
        new[at : at + 800] = rng.randbytes(800)
    encoding, delta = encode_best(old, bytes(new), level=10)
    assert encoding == ZSTD_PATCH_PARTS
    assert apply_delta(encoding, old, delta, len(new)) == new
