"""CFFI (API mode) build scripts for the C core; setup.py names both in cffi_modules.

- ``ffibuilder``: FastCDC cut points (chunkah/cdc.py).
- ``delta_ffibuilder``: bsdiff's search and encoding 5's sparse diff block
  (chunkah/delta/bsdiff.py, chunkah/delta/sparse.py).
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
_CFLAGS = ["-O3", "-std=c99", "-Wall", "-Wextra"]

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct {
        size_t min_size;
        size_t avg_size;
        size_t max_size;
        uint64_t mask_s;
        uint64_t mask_l;
        const uint64_t *gear;
        const uint64_t *gear_ls;
    } chunkah_cdc_params;

    size_t chunkah_cut_points(const chunkah_cdc_params *p, const uint8_t *buf, size_t len,
                              int eof, uint64_t *ends, size_t cap);
    """
)
ffibuilder.set_source(
    "chunkah._native._fastcdc",
    '#include "fastcdc.h"',
    sources=["chunkah/_native/fastcdc.c"],
    include_dirs=[str(HERE)],
    # -funroll-loops: measured 1.1-1.3x on the cut loop (benchmarks/RESULTS.md)
    extra_compile_args=[*_CFLAGS, "-funroll-loops"],
)

delta_ffibuilder = FFI()
delta_ffibuilder.cdef(
    """
    typedef struct {
        const uint8_t *old;
        int64_t old_size;
        const uint8_t *new_;
        int64_t new_size;
        const int32_t *sa;
        int64_t scan, len, pos, last_scan, last_pos, last_offset;
        int64_t diff_len, extra_len;
    } chunkah_bsdiff;

    size_t chunkah_bsdiff_run(chunkah_bsdiff *s, int64_t *control, size_t cap,
                              uint8_t *diff, uint8_t *extra);
    int chunkah_sparse_expand(const uint8_t *tokens, size_t tokens_len, uint8_t *out,
                              size_t out_len);
    """
)
delta_ffibuilder.set_source(
    "chunkah._native._delta",
    '#include "delta.h"',
    sources=["chunkah/_native/delta.c"],
    include_dirs=[str(HERE)],
    extra_compile_args=_CFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    delta_ffibuilder.compile(verbose=True)
