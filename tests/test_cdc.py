"""FastCDC: both backends against each other, against pyfastcdc, and the chunking properties."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC
from support.backends import block_module, run_python

from chunkah import cdc

BACKENDS = {"native": cdc._NativeBackend(), "python": cdc._PythonBackend()}


def backend_cut(name: str, data: bytes, **kw: int) -> np.ndarray:
    params = cdc.make_params(**kw)
    return BACKENDS[name].cut(params, memoryview(data), True)


def reference_ends(
    data: bytes, *, min_size: int, avg_size: int, max_size: int, normalization: int, seed: int
) -> list[int]:
    chunker = FastCDC(
        avg_size, min_size=min_size, max_size=max_size, normalized_chunking=normalization, seed=seed
    )
    ends, pos = [], 0
    for chunk in chunker.cut_buf(data):
        pos += chunk.length
        ends.append(pos)
    return ends


@st.composite
def valid_params(draw: st.DrawFn) -> dict[str, int]:
    avg = draw(st.integers(256, 16384))
    mn = draw(st.integers(64, min(avg, 4096)))
    mx = draw(st.integers(max(avg, 1024), 65536))
    return {
        "min_size": mn,
        "avg_size": avg,
        "max_size": mx,
        "normalization": draw(st.integers(0, 3)),
        # pyfastcdc's Cython core takes a signed 64-bit seed.
        "seed": draw(st.one_of(st.just(0), st.integers(1, 2**63 - 1))),
    }


@st.composite
def chunk_inputs(draw: st.DrawFn) -> bytes:
    """Random bytes, or low-entropy data (zeros, short repeats) where gear hashes collide."""
    size = draw(st.integers(0, 300_000))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["random", "zeros", "repeat", "text"]))
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if kind == "zeros":
        return bytes(size)
    if kind == "repeat":
        unit = rng.integers(0, 256, draw(st.integers(1, 97)), dtype=np.uint8).tobytes()
        return (unit * (size // len(unit) + 1))[:size]
    words = [b"lib", b"usr", b"share", b"\n", b" ", b"the", b"chunk", b"0", b"=", b"#"]
    return b"".join(words[i] for i in rng.integers(0, len(words), size // 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=chunk_inputs(), params=valid_params())
def test_backends_match_pyfastcdc(data: bytes, params: dict[str, int]) -> None:
    expected = reference_ends(data, **params)
    for name in BACKENDS:
        got = backend_cut(name, data, **params).tolist()
        assert got == expected, f"{name} backend differs from pyfastcdc for {params}"


@pytest.mark.parametrize("normalization", [0, 1, 2, 3])
@pytest.mark.parametrize("avg_size", [256, 1000, 4096, 16384, 65536, 1 << 20])
def test_every_normalization_and_size_matches_pyfastcdc(normalization: int, avg_size: int) -> None:
    data = (
        np.random.default_rng(avg_size + normalization)
        .integers(0, 256, max(3 << 20, avg_size * 16), dtype=np.uint8)
        .tobytes()
    )
    params = {
        "min_size": max(64, avg_size // 4),
        "avg_size": avg_size,
        "max_size": max(1024, avg_size * 4),
        "normalization": normalization,
        "seed": 0,
    }
    expected = reference_ends(data, **params)
    assert len(expected) > 2
    for name in BACKENDS:
        assert backend_cut(name, data, **params).tolist() == expected, name


@settings(max_examples=100, deadline=None)
@given(data=chunk_inputs(), params=valid_params())
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_chunks_cover_input_and_respect_bounds(
    name: str, data: bytes, params: dict[str, int]
) -> None:
    ends = backend_cut(name, data, **params)
    assert ends.dtype == np.uint64
    if not data:
        assert len(ends) == 0
        return
    assert int(ends[-1]) == len(data)
    sizes = np.diff(np.concatenate([[0], ends.astype(np.int64)]))
    assert (sizes > 0).all()
    # A cut never lands before min_size rounded down to even (FastCDC-2020 hashes in pairs).
    assert (sizes[:-1] >= (params["min_size"] // 2) * 2).all()
    assert (sizes <= params["max_size"]).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    edit_at=st.floats(0.05, 0.6),
    edit=st.sampled_from(["flip", "insert", "delete"]),
    edit_len=st.integers(1, 5000),
)
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_locality_and_resynchronisation(
    name: str, seed: int, edit_at: float, edit: str, edit_len: int
) -> None:
    params = {"min_size": 512, "avg_size": 2048, "max_size": 8192, "normalization": 1, "seed": 0}
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 400_000, dtype=np.uint8).tobytes()
    p = int(len(data) * edit_at)
    patch = rng.integers(0, 256, edit_len, dtype=np.uint8).tobytes()
    if edit == "flip":
        edited = data[:p] + bytes(b ^ 0xFF for b in data[p : p + edit_len]) + data[p + edit_len :]
        delta, edit_end = 0, p + edit_len
    elif edit == "insert":
        edited = data[:p] + patch + data[p:]
        delta, edit_end = edit_len, p + edit_len
    else:
        edited = data[:p] + data[p + edit_len :]
        delta, edit_end = -edit_len, p
    before = backend_cut(name, data, **params).tolist()
    after = backend_cut(name, edited, **params).tolist()
    # Locality: a chunk is decided by its own bytes plus the byte at its end.
    assert [e for e in before if e < p] == [e for e in after if e < p]
    # Resynchronisation: past the edit the boundaries are the old ones, shifted.
    shifted = {e + delta for e in before if e + delta > edit_end}
    tail = [e for e in after if e > edit_end]
    common = [e for e in tail if e in shifted]
    assert common, "chunking never re-synchronised after the edit"
    first = tail.index(common[0])
    assert tail[first:] == sorted(e for e in shifted if e >= common[0])
    assert first <= 8, f"re-synchronised only after {first} chunks"


class TrickleReader(io.RawIOBase):
    """A file object that returns short reads, to exercise the streaming refill loop."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class ReadOnly:
    """Has only read(): the streaming form must not need readinto."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._f.read(n)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=chunk_inputs(),
    params=valid_params(),
    read_size=st.integers(1, 200_000),
    step=st.integers(1, 300_000),
    reader=st.sampled_from(["bytesio", "trickle", "read-only"]),
)
def test_streaming_equals_whole_buffer(
    data: bytes, params: dict[str, int], read_size: int, step: int, reader: str
) -> None:
    whole = cdc.cut_points(data, **params)
    fileobj = {
        "bytesio": io.BytesIO(data),
        "trickle": TrickleReader(data, step),
        "read-only": ReadOnly(data),
    }[reader]
    streamed = [a for a in cdc.stream_cut_points(fileobj, read_size=read_size, **params)]  # type: ignore[arg-type]
    joined = np.concatenate(streamed) if streamed else np.empty(0, dtype=np.uint64)
    assert joined.tolist() == whole.tolist()


def test_iter_chunks_yields_the_bytes() -> None:
    data = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    params = {"min_size": 1024, "avg_size": 4096, "max_size": 16384}
    pieces = [
        (off, bytes(view))
        for off, view in cdc.iter_chunks(io.BytesIO(data), read_size=50_000, **params)
    ]
    assert b"".join(p for _, p in pieces) == data
    offsets = [0, *cdc.cut_points(data, **params).tolist()[:-1]]
    assert [off for off, _ in pieces] == offsets


def test_streaming_memory_is_bounded() -> None:
    """The streaming buffer never exceeds read_size + max_size, whatever the input size."""
    params = {"min_size": 1024, "avg_size": 4096, "max_size": 16384}
    seen: list[int] = []
    real_cut = cdc._backend.cut

    def spy(p: cdc.CdcParams, view: memoryview, eof: bool) -> np.ndarray:
        seen.append(view.nbytes)
        return real_cut(p, view, eof)

    cdc._backend.cut = spy  # type: ignore[method-assign]
    try:
        data = io.BytesIO(bytes(np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)))
        total = sum(len(a) for a in cdc.stream_cut_points(data, read_size=65536, **params))
    finally:
        del cdc._backend.cut  # type: ignore[attr-defined]
    assert total > 100
    assert max(seen) <= 65536 + 16384


def test_accepts_every_buffer_type() -> None:
    data = np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8)
    params = {"min_size": 256, "avg_size": 1024, "max_size": 4096}
    expected = cdc.cut_points(data.tobytes(), **params).tolist()
    for buf in (bytearray(data.tobytes()), memoryview(data.tobytes()), data, data.view(np.uint32)):
        assert cdc.cut_points(buf, **params).tolist() == expected
    assert cdc.cut_points(b"", **params).tolist() == []
    assert cdc.cut_points(b"x", **params).tolist() == [1]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"min_size": 32, "avg_size": 1024, "max_size": 4096},
            "min_size=32 is out of range: allowed 64",
        ),
        ({"min_size": 64, "avg_size": 128, "max_size": 4096}, "avg_size=128 is out of range"),
        (
            {"min_size": 64, "avg_size": 1024, "max_size": 1 << 30},
            "max_size=1073741824 is out of range",
        ),
        (
            {"min_size": 4096, "avg_size": 1024, "max_size": 8192},
            "min_size <= avg_size <= max_size",
        ),
        ({"min_size": 64, "avg_size": 8192, "max_size": 4096}, "min_size <= avg_size <= max_size"),
        (
            {"min_size": 64, "avg_size": 1024, "max_size": 4096, "normalization": 4},
            "use 0, 1, 2 or 3",
        ),
        (
            {"min_size": 64, "avg_size": 1024, "max_size": 4096, "seed": -1},
            "seed=-1 is out of range",
        ),
        ({"min_size": 64, "avg_size": 1024, "max_size": 4096, "seed": 2**64}, "seed="),
    ],
)
def test_bad_parameters_say_what_is_allowed(kw: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cdc.cut_points(b"abc", **kw)


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="buffer protocol"):
        cdc.cut_points("text", min_size=64, avg_size=256, max_size=1024)
    with pytest.raises(TypeError, match="buffer protocol"):
        cdc.cut_points([1, 2, 3], min_size=64, avg_size=256, max_size=1024)
    with pytest.raises(TypeError, match="min_size must be an int"):
        cdc.cut_points(b"x", min_size=64.0, avg_size=256, max_size=1024)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="C-contiguous"):
        cdc.cut_points(memoryview(bytes(100))[::2], min_size=64, avg_size=256, max_size=1024)
    with pytest.raises(TypeError, match="binary file object"):
        list(cdc.stream_cut_points(42, min_size=64, avg_size=256, max_size=1024))  # type: ignore[arg-type]


BLOCK_NATIVE = block_module("chunkah._native._fastcdc")


def test_backend_selection() -> None:
    assert cdc.BACKEND == "native", "the C extension must be built by `make test`'s install step"
    assert run_python("import chunkah.cdc as c; print(c.BACKEND)").stdout.strip() == "native"
    forced = run_python("import chunkah.cdc as c; print(c.BACKEND)", CHUNKAH_BACKEND="python")
    assert forced.stdout.strip() == "python"
    bad = run_python("import chunkah.cdc", CHUNKAH_BACKEND="fortran")
    assert bad.returncode != 0 and "use 'native' or 'python'" in bad.stderr


def test_missing_extension_falls_back_with_warning_unless_forced() -> None:
    fallback = run_python(BLOCK_NATIVE + "import chunkah.cdc as c; print(c.BACKEND)")
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.strip() == "python"
    assert "using the slower Python twin" in fallback.stderr
    forced = run_python(BLOCK_NATIVE + "import chunkah.cdc", CHUNKAH_BACKEND="native")
    assert forced.returncode != 0
    assert "CHUNKAH_BACKEND=native but the C extension" in forced.stderr
