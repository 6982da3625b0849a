/* Delta-encoding kernels: bsdiff's match search over a given suffix array, and the
 * sparse diff block of encoding 5 (docs/delta.md section 3). Pure-Python twins:
 * _search_python in chunkah/delta/bsdiff.py, expand_python in chunkah/delta/sparse.py. */
#ifndef CHUNKAH_DELTA_H
#define CHUNKAH_DELTA_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *old;
    int64_t old_size;
    const uint8_t *new_;
    int64_t new_size;
    /* old_size + 1 entries: sa[0] == old_size (the empty suffix), then the suffix
     * array of old. */
    const int32_t *sa;
    /* loop state, zero before the first call */
    int64_t scan, len, pos, last_scan, last_pos, last_offset;
    int64_t diff_len, extra_len;
} chunkah_bsdiff;

/* Runs bsdiff's search until `cap` control triples (add, copy, seek) are written to
 * `control` (3 * cap int64) or new is covered; diff and extra bytes go to
 * diff[s->diff_len...] and extra[s->extra_len...], each buffer new_size bytes.
 * Returns the triples written; done when it returns fewer than cap. */
size_t chunkah_bsdiff_run(chunkah_bsdiff *s, int64_t *control, size_t cap, uint8_t *diff,
                          uint8_t *extra);

/* Expands encoding 5's token stream into out (out_len bytes, zeroed by the caller).
 * Returns 0, or a negative CHUNKAH_SPARSE_* error. */
int chunkah_sparse_expand(const uint8_t *tokens, size_t tokens_len, uint8_t *out,
                          size_t out_len);

#define CHUNKAH_SPARSE_TRUNCATED (-1)
#define CHUNKAH_SPARSE_OVERRUN (-2)
#define CHUNKAH_SPARSE_ZERO_LITERAL (-3)
#define CHUNKAH_SPARSE_BAD_VARINT (-4)

#endif
