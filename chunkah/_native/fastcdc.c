#include "fastcdc.h"


/* Length of the chunk that starts at src, as FastCDC-2020 (fastcdc-rs v2020,
 * pyfastcdc 0.3) defines it: the hash restarts at zero at min_size rounded down
 * to even, advances two bytes a step, and a match at position i cuts before i. */
static size_t cut_one(const chunkah_cdc_params *p, const uint8_t *src, size_t remaining)
{
    if (remaining <= p->min_size)
        return remaining;
    size_t center = p->avg_size;
    if (remaining > p->max_size)
        remaining = p->max_size;
    else if (remaining < center)
        center = remaining;

    const uint64_t *gear = p->gear, *gear_ls = p->gear_ls;
    const uint64_t mask_s = p->mask_s, mask_l = p->mask_l;
    const uint64_t mask_s_ls = mask_s << 1, mask_l_ls = mask_l << 1;
    uint64_t hash = 0;
    size_t pos = (p->min_size / 2) * 2;
    const size_t mid = (center / 2) * 2, end = (remaining / 2) * 2;

    for (; pos < mid; pos += 2) {
        hash = (hash << 2) + gear_ls[src[pos]];
        if (!(hash & mask_s_ls))
            return pos;
        hash += gear[src[pos + 1]];
        if (!(hash & mask_s))
            return pos + 1;
    }
    for (; pos < end; pos += 2) {
        hash = (hash << 2) + gear_ls[src[pos]];
        if (!(hash & mask_l_ls))
            return pos;
        hash += gear[src[pos + 1]];
        if (!(hash & mask_l))
            return pos + 1;
    }
    return remaining;
}

size_t chunkah_cut_points(const chunkah_cdc_params *p, const uint8_t *buf, size_t len,
                          int eof, uint64_t *ends, size_t cap)
{
    size_t start = 0, n = 0;
    while (start < len && n < cap) {
        size_t remaining = len - start;
        if (!eof && remaining < p->max_size)
            break;
        start += cut_one(p, buf + start, remaining);
        ends[n++] = start;
    }
    return n;
}
