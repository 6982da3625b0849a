"""FastCDC-2020 content-defined chunking.

Two backends give bit-identical cut points: a C core built with CFFI
(``chunkah._native``) and a pure-Python twin that vectorises the gear hash with
numpy.  ``BACKEND`` names the one in use; ``CHUNKAH_BACKEND=native|python`` forces
one.  Cut points match fastcdc-rs v2020 and PyPI ``pyfastcdc`` 0.3 for the same
parameters, so chunk boundaries interoperate with those implementations.

The public calls:

- :func:`cut_points` - end offsets of every chunk of a buffer, one backend call.
- :func:`stream_cut_points` - the same over a binary file object, bounded memory.
- :func:`iter_chunks` - the chunks of a file object as ``(offset, data)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from chunkah import _cdc_python
from chunkah._cdc_tables import GEAR, MASKS
from chunkah._native import wanted_backend

__all__ = [
    "AVG_SIZE_RANGE",
    "BACKEND",
    "MAX_SIZE_RANGE",
    "MIN_SIZE_RANGE",
    "CdcParams",
    "cut_points",
    "iter_chunks",
    "stream_cut_points",
]

# The ranges fastcdc-rs and pyfastcdc accept; outside them the mask table runs out.
MIN_SIZE_RANGE = (64, 1 << 20)
AVG_SIZE_RANGE = (256, 4 << 20)
MAX_SIZE_RANGE = (1024, 16 << 20)
_U64 = (1 << 64) - 1

Offsets = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class CdcParams:
    """Validated chunking parameters and the tables derived from them."""

    min_size: int
    avg_size: int
    max_size: int
    normalization: int = 1
    seed: int = 0
    mask_s: int = field(init=False, repr=False, compare=False)
    mask_l: int = field(init=False, repr=False, compare=False)
    gear: npt.NDArray[np.uint64] = field(init=False, repr=False, compare=False)
    gear_ls: npt.NDArray[np.uint64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_params(self.min_size, self.avg_size, self.max_size, self.normalization, self.seed)
        # Rounded log2, as fastcdc-rs: (avg as f64).log2().round().
        bits = math.floor(math.log2(self.avg_size) + 0.5)
        gear = np.array(GEAR, dtype=np.uint64)
        if self.seed:
            gear ^= np.uint64(self.seed)
        gear.flags.writeable = False
        gear_ls = gear << np.uint64(1)
        gear_ls.flags.writeable = False
        object.__setattr__(self, "mask_s", MASKS[bits + self.normalization])
        object.__setattr__(self, "mask_l", MASKS[bits - self.normalization])
        object.__setattr__(self, "gear", gear)
        object.__setattr__(self, "gear_ls", gear_ls)

    @property
    def max_chunks_per_byte(self) -> float:
        """Upper bound on chunks per input byte (a cut never lands before even(min_size))."""
        return 1.0 / max(2, (self.min_size // 2) * 2)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_params(
    min_size: int, avg_size: int, max_size: int, normalization: int, seed: int
) -> None:
    sizes = {"min_size": min_size, "avg_size": avg_size, "max_size": max_size}
    ranges = {"min_size": MIN_SIZE_RANGE, "avg_size": AVG_SIZE_RANGE, "max_size": MAX_SIZE_RANGE}
    for name, value in sizes.items():
        low, high = ranges[name]
        if not low <= _check_int(name, value) <= high:
            raise ValueError(f"{name}={value} is out of range: allowed {low}..{high} bytes")
    if not min_size <= avg_size <= max_size:
        raise ValueError(
            f"sizes must satisfy min_size <= avg_size <= max_size, "
            f"got {min_size} / {avg_size} / {max_size}"
        )
    if _check_int("normalization", normalization) not in (0, 1, 2, 3):
        raise ValueError(f"normalization={normalization} is not allowed: use 0, 1, 2 or 3")
    if not 0 <= _check_int("seed", seed) <= _U64:
        raise ValueError(f"seed={seed} is out of range: allowed 0..2**64-1")


@lru_cache(maxsize=64)
def _params(
    min_size: int, avg_size: int, max_size: int, normalization: int, seed: int
) -> CdcParams:
    return CdcParams(min_size, avg_size, max_size, normalization, seed)


def make_params(
    *, min_size: int, avg_size: int, max_size: int, normalization: int = 1, seed: int = 0
) -> CdcParams:
    """Validate parameters once; raises ValueError/TypeError saying what is allowed."""
    for name, value in (
        ("min_size", min_size),
        ("avg_size", avg_size),
        ("max_size", max_size),
        ("normalization", normalization),
        ("seed", seed),
    ):
        _check_int(name, value)
    return _params(int(min_size), int(avg_size), int(max_size), int(normalization), int(seed))


class _Backend(Protocol):
    def cut(self, params: CdcParams, data: memoryview, eof: bool) -> Offsets: ...


class _NativeBackend:
    """Calls the C core once per buffer; it writes every cut into a numpy array."""

    def __init__(self) -> None:
        from chunkah._native import _fastcdc  # type: ignore[attr-defined]

        self._ffi = _fastcdc.ffi
        self._lib = _fastcdc.lib
        self._structs: dict[CdcParams, Any] = {}

    def _struct(self, params: CdcParams) -> Any:
        struct = self._structs.get(params)
        if struct is None:
            ffi = self._ffi
            struct = ffi.new("chunkah_cdc_params *")
            struct.min_size = params.min_size
            struct.avg_size = params.avg_size
            struct.max_size = params.max_size
            struct.mask_s = params.mask_s
            struct.mask_l = params.mask_l
            struct.gear = ffi.cast("const uint64_t *", params.gear.ctypes.data)
            struct.gear_ls = ffi.cast("const uint64_t *", params.gear_ls.ctypes.data)
            # params (hence its arrays) stays alive as the dict key.
            self._structs[params] = struct
        return struct

    def cut(self, params: CdcParams, data: memoryview, eof: bool) -> Offsets:
        n = data.nbytes
        cap = int(n * params.max_chunks_per_byte) + 2
        ends = np.empty(cap, dtype=np.uint64)
        ffi = self._ffi
        count = self._lib.chunkah_cut_points(
            self._struct(params),
            ffi.from_buffer("uint8_t[]", data),
            n,
            1 if eof else 0,
            ffi.cast("uint64_t *", ends.ctypes.data),
            cap,
        )
        # Do not keep a huge, mostly empty array alive behind a small view.
        return ends[:count].copy() if count * 4 < cap else ends[:count]


class _PythonBackend:
    def cut(self, params: CdcParams, data: memoryview, eof: bool) -> Offsets:
        return _cdc_python.cut(params, data, eof)


def _load_backend() -> tuple[str, _Backend]:
    wanted = wanted_backend()
    if wanted == "python":
        return "python", _PythonBackend()
    try:
        return "native", _NativeBackend()
    except ImportError as exc:
        if wanted == "native":
            raise ImportError(
                f"CHUNKAH_BACKEND=native but the C extension chunkah._native._fastcdc "
                f"could not be loaded ({exc}); reinstall with a C compiler available"
            ) from exc
        warnings.warn(
            f"chunkah: C extension not available ({exc}); using the slower Python twin",
            RuntimeWarning,
            stacklevel=2,
        )
        return "python", _PythonBackend()


BACKEND, _backend = _load_backend()


def _as_bytes_view(buf: object) -> memoryview:
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"buf must support the buffer protocol (bytes, bytearray, memoryview, mmap, "
            f"numpy uint8 array), got {type(buf).__name__}"
        ) from None
    if not view.c_contiguous:
        raise TypeError("buf must be a C-contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def cut_points(
    buf: object,
    *,
    min_size: int,
    avg_size: int,
    max_size: int,
    normalization: int = 1,
    seed: int = 0,
) -> Offsets:
    """Return the end offset of every chunk of ``buf`` as a uint64 numpy array.

    The offsets are strictly increasing and the last one is ``len(buf)`` (an empty
    buffer has no chunks).  Every chunk but the last is at least ``min_size`` rounded
    down to even and at most ``max_size`` bytes long.
    """
    params = make_params(
        min_size=min_size,
        avg_size=avg_size,
        max_size=max_size,
        normalization=normalization,
        seed=seed,
    )
    return _backend.cut(params, _as_bytes_view(buf), True)


def _readinto(fileobj: BinaryIO, target: memoryview) -> int:
    readinto = getattr(fileobj, "readinto", None)
    if readinto is not None:
        got = readinto(target)
        return int(got or 0)
    data = fileobj.read(len(target))
    target[: len(data)] = data
    return len(data)


def _stream(
    fileobj: BinaryIO, params: CdcParams, read_size: int
) -> Iterator[tuple[int, memoryview, Offsets]]:
    """Yield (base offset, buffer view, relative ends) for each decided batch of chunks.

    The buffer holds at most read_size + max_size bytes: undecided tail bytes (fewer
    than max_size, whose cut could depend on what follows) are carried over.
    """
    if not hasattr(fileobj, "readinto") and not hasattr(fileobj, "read"):
        raise TypeError(f"fileobj must be a binary file object, got {type(fileobj).__name__}")
    if read_size < 1:
        raise ValueError(f"read_size must be positive, got {read_size}")
    capacity = read_size + params.max_size
    buf = bytearray(capacity)
    view = memoryview(buf)
    filled = 0
    base = 0
    eof = False
    while not eof or filled:
        while not eof and filled < capacity:
            got = _readinto(fileobj, view[filled:])
            if got == 0:
                eof = True
            filled += got
        if filled == 0:
            return
        ends = _backend.cut(params, view[:filled], eof)
        if len(ends):
            yield base, view[:filled], ends
            used = int(ends[-1])
            buf[: filled - used] = buf[used:filled]
            filled -= used
            base += used
        elif eof:  # pragma: no cover - the backend always finishes at eof
            raise AssertionError("chunker made no progress at end of input")


def stream_cut_points(
    fileobj: BinaryIO,
    *,
    min_size: int,
    avg_size: int,
    max_size: int,
    normalization: int = 1,
    seed: int = 0,
    read_size: int = 4 << 20,
) -> Iterator[Offsets]:
    """Yield arrays of absolute chunk end offsets for a binary file object.

    Concatenated, they equal ``cut_points`` of the whole content; memory stays at
    ``read_size + max_size`` bytes whatever the input size.
    """
    params = make_params(
        min_size=min_size,
        avg_size=avg_size,
        max_size=max_size,
        normalization=normalization,
        seed=seed,
    )
    for base, _view, ends in _stream(fileobj, params, read_size):
        yield ends + np.uint64(base)


def iter_chunks(
    fileobj: BinaryIO,
    *,
    min_size: int,
    avg_size: int,
    max_size: int,
    normalization: int = 1,
    seed: int = 0,
    read_size: int = 4 << 20,
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, data)`` for every chunk of a binary file object.

    ``data`` is a view into an internal buffer, valid until the next iteration:
    hash, compress or copy it before asking for the next chunk.
    """
    params = make_params(
        min_size=min_size,
        avg_size=avg_size,
        max_size=max_size,
        normalization=normalization,
        seed=seed,
    )
    for base, view, ends in _stream(fileobj, params, read_size):
        start = 0
        for end in ends.tolist():
            yield base + start, view[start:end]
            start = end
