/* FastCDC-2020 cut-point search: the native core behind chunkah.cdc.
 *
 * The gear tables are passed in by the caller (chunkah/cdc.py owns the one copy
 * and applies the seed), so the C and Python backends cannot drift apart. */
#ifndef CHUNKAH_FASTCDC_H
#define CHUNKAH_FASTCDC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t min_size;
    size_t avg_size;
    size_t max_size;
    uint64_t mask_s;         /* stricter mask, used before avg_size */
    uint64_t mask_l;         /* looser mask, used after avg_size */
    const uint64_t *gear;    /* 256 entries, already XORed with the seed */
    const uint64_t *gear_ls; /* gear[i] << 1 */
} chunkah_cdc_params;

/* Writes the end offset of every chunk of buf[0:len] into ends[0:cap] and returns
 * how many were written.  When eof is 0, stops before the first chunk whose
 * boundary could still depend on bytes after len (fewer than max_size bytes
 * left); the caller feeds those bytes again with more data appended. */
size_t chunkah_cut_points(const chunkah_cdc_params *p, const uint8_t *buf, size_t len,
                          int eof, uint64_t *ends, size_t cap);

#endif
