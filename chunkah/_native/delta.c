/* bsdiff's search (Colin Percival's algorithm, as PyPI bsdiff4 runs it) over a suffix
 * array built elsewhere (divsufsort: 4 bytes per old byte against qsufsort's 16), written
 * resumably so Python can collect control triples in bounded batches; and the
 * token-stream expander of encoding 5. */
#include "delta.h"

#include <string.h>

static int64_t match_len(const uint8_t *a, int64_t a_len, const uint8_t *b, int64_t b_len)
{
    int64_t n = a_len < b_len ? a_len : b_len;
    int64_t i = 0;
    /* 8 bytes at a time: matched regions run to kilobytes */
    while (i + 8 <= n) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return i + (__builtin_ctzll(x ^ y) >> 3); /* little-endian: lowest byte first */
        i += 8;
    }
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* Longest match of `want` among old's suffixes: binary search of the suffix array,
 * then the better of the two neighbours (bsdiff's rule, ties to the upper one).
 * Suffixes between two that share k bytes with `want` share them too, so each probe
 * starts comparing at the smaller of the two bounds' common prefixes: the same
 * decisions as comparing from byte 0, without re-reading long matches. */
static int64_t longest_match(const chunkah_bsdiff *s, const uint8_t *want, int64_t want_len,
                             int64_t *pos)
{
    int64_t lo = 0, hi = s->old_size;
    /* sa[0] is the empty suffix: its common prefix is 0; hi's is not known yet */
    int64_t lo_common = 0, hi_common = 0;
    int hi_known = 0;
    while (hi - lo >= 2) {
        int64_t mid = lo + (hi - lo) / 2;
        int64_t at = s->sa[mid];
        int64_t n = s->old_size - at < want_len ? s->old_size - at : want_len;
        int64_t k = lo_common < hi_common ? lo_common : hi_common;
        if (k > n)
            k = n;
        k += match_len(s->old + at + k, n - k, want + k, n - k);
        if (k < n && s->old[at + k] < want[k]) {
            lo = mid;
            lo_common = k;
        } else {
            hi = mid;
            hi_common = k;
            hi_known = 1;
        }
    }
    int64_t lo_at = s->sa[lo], hi_at = s->sa[hi];
    int64_t x = lo_common;
    int64_t y = hi_known ? hi_common
                         : match_len(s->old + hi_at, s->old_size - hi_at, want, want_len);
    if (x > y) {
        *pos = lo_at;
        return x;
    }
    *pos = hi_at;
    return y;
}

static int same_at(const chunkah_bsdiff *s, int64_t old_at, int64_t new_at)
{
    return old_at < s->old_size && s->old[old_at] == s->new_[new_at];
}

size_t chunkah_bsdiff_run(chunkah_bsdiff *s, int64_t *control, size_t cap, uint8_t *diff,
                          uint8_t *extra)
{
    const uint8_t *old = s->old, *new_ = s->new_;
    const int64_t old_size = s->old_size, new_size = s->new_size;
    size_t written = 0;

    while (written < cap && s->scan < new_size) {
        /* Advance until a match beats simply continuing the previous alignment
         * by more than 8 bytes (or equals it exactly). */
        int64_t old_score = 0;
        int64_t scored = s->scan += s->len;
        for (; s->scan < new_size; s->scan++) {
            s->len = longest_match(s, new_ + s->scan, new_size - s->scan, &s->pos);
            for (; scored < s->scan + s->len; scored++)
                if (same_at(s, scored + s->last_offset, scored))
                    old_score++;
            if ((s->len == old_score && s->len != 0) || s->len > old_score + 8)
                break;
            if (same_at(s, s->scan + s->last_offset, s->scan))
                old_score--;
        }
        if (s->len == old_score && s->scan != new_size)
            continue;

        /* Extend the previous match forwards and this one backwards while at least
         * half the bytes agree, then split any overlap where it scores best. */
        int64_t last_scan = s->last_scan, last_pos = s->last_pos, scan = s->scan, pos = s->pos;
        int64_t agree = 0, best = 0, fwd = 0;
        for (int64_t i = 0; last_scan + i < scan && last_pos + i < old_size;) {
            if (old[last_pos + i] == new_[last_scan + i])
                agree++;
            i++;
            if (agree * 2 - i > best * 2 - fwd) {
                best = agree;
                fwd = i;
            }
        }
        int64_t back = 0;
        if (scan < new_size) {
            agree = 0;
            best = 0;
            for (int64_t i = 1; scan >= last_scan + i && pos >= i; i++) {
                if (old[pos - i] == new_[scan - i])
                    agree++;
                if (agree * 2 - i > best * 2 - back) {
                    best = agree;
                    back = i;
                }
            }
        }
        if (last_scan + fwd > scan - back) {
            int64_t overlap = (last_scan + fwd) - (scan - back);
            int64_t score = 0, best_score = 0, cut = 0;
            for (int64_t i = 0; i < overlap; i++) {
                if (new_[last_scan + fwd - overlap + i] == old[last_pos + fwd - overlap + i])
                    score++;
                if (new_[scan - back + i] == old[pos - back + i])
                    score--;
                if (score > best_score) {
                    best_score = score;
                    cut = i + 1;
                }
            }
            fwd += cut - overlap;
            back -= cut;
        }

        uint8_t *d = diff + s->diff_len;
        for (int64_t i = 0; i < fwd; i++)
            d[i] = (uint8_t)(new_[last_scan + i] - old[last_pos + i]);
        int64_t extra_n = (scan - back) - (last_scan + fwd);
        memcpy(extra + s->extra_len, new_ + last_scan + fwd, (size_t)extra_n);
        s->diff_len += fwd;
        s->extra_len += extra_n;

        control[3 * written] = fwd;
        control[3 * written + 1] = extra_n;
        control[3 * written + 2] = (pos - back) - (last_pos + fwd);
        written++;

        s->last_scan = scan - back;
        s->last_pos = pos - back;
        s->last_offset = pos - scan;
    }
    return written;
}

int chunkah_sparse_expand(const uint8_t *tokens, size_t tokens_len, uint8_t *out,
                          size_t out_len)
{
    size_t i = 0, at = 0;
    while (i < tokens_len) {
        uint64_t gap = tokens[i++];
        if (gap == 255) {
            uint64_t more = 0;
            int shift = 0;
            for (;;) {
                if (i >= tokens_len)
                    return CHUNKAH_SPARSE_TRUNCATED;
                uint8_t b = tokens[i++];
                if (shift == 63 && b > 1)
                    return CHUNKAH_SPARSE_BAD_VARINT;
                more |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80))
                    break;
                shift += 7;
                if (shift > 63)
                    return CHUNKAH_SPARSE_BAD_VARINT;
            }
            if (more > UINT64_MAX - 255)
                return CHUNKAH_SPARSE_BAD_VARINT;
            gap += more;
        }
        if (i >= tokens_len)
            return CHUNKAH_SPARSE_TRUNCATED;
        if (at >= out_len || gap >= out_len - at)
            return CHUNKAH_SPARSE_OVERRUN;
        at += gap;
        uint8_t literal = tokens[i++];
        if (literal == 0)
            return CHUNKAH_SPARSE_ZERO_LITERAL;
        out[at++] = literal;
    }
    return 0;
}
