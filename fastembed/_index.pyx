"""Id kernels: range validation and grouping equal ids (an O(N) parallel LSD radix sort).

Grouping is what makes the sparse gradient exact and deterministic: after a *stable* sort by id, the
positions that share a row are listed in their original order, so every consumer sums them in that
order whatever the number of threads.
"""
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from cython.parallel cimport prange

import numpy as np

from fastembed._types cimport index_t

cdef enum:
    # Below this many ids a single thread sorts faster than a team can be started.
    PARALLEL_MIN_IDS = 32768
    # Widest radix digit: 2**11 counters per chunk stay in L1.
    MAX_DIGIT_BITS = 11


cdef inline Py_ssize_t _chunk_start(Py_ssize_t n, Py_ssize_t n_chunks, Py_ssize_t c) noexcept nogil:
    return (n * c) // n_chunks


cdef bint _any_bad(const index_t *ids, Py_ssize_t start, Py_ssize_t end, int64_t n_rows) noexcept nogil:
    """Whether any id is outside ``[0, n_rows)``, n_rows > 0.

    ``id | (last - id)`` has its top bit set exactly when id < 0 or id > last (in unsigned arithmetic,
    so nothing overflows): an OR over every id that vectorises to two instructions per id, where a
    compare-and-count does not (no unsigned 64-bit vector compare before AVX-512).
    """
    cdef Py_ssize_t i
    cdef uint64_t last = <uint64_t>(n_rows - 1), acc = 0
    cdef uint32_t last32, acc32 = 0
    if index_t is int32_t:
        if n_rows > 0x7FFFFFFF:
            # Every non-negative int32 is a row: only the sign counts.
            for i in range(start, end):
                acc32 |= <uint32_t>ids[i]
        else:
            last32 = <uint32_t>last
            for i in range(start, end):
                acc32 |= <uint32_t>ids[i] | (last32 - <uint32_t>ids[i])
        return (acc32 >> 31) != 0
    for i in range(start, end):
        acc |= <uint64_t>ids[i] | (last - <uint64_t>ids[i])
    return (acc >> 63) != 0


def first_out_of_range(const index_t[::1] ids, int64_t n_rows, int n_threads):
    """Position of the first id outside ``[0, n_rows)``, or -1 when every id is valid.

    ids: (N,) int32/int64, C-contiguous. The common all-valid case is a parallel check; only a failure
    pays for the serial scan that locates the first culprit.
    """
    cdef Py_ssize_t n = ids.shape[0], n_chunks, c, i, bad = 0
    cdef uint64_t limit = <uint64_t>n_rows if n_rows > 0 else 0
    if n == 0:
        return -1
    if n_rows <= 0:
        bad = 1
    elif n_threads <= 1 or n < PARALLEL_MIN_IDS:
        with nogil:
            bad = _any_bad(&ids[0], 0, n, n_rows)
    else:
        n_chunks = n_threads
        with nogil:
            for c in prange(n_chunks, schedule='static', num_threads=n_threads):
                bad += _any_bad(&ids[0], _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1), n_rows)
    if bad == 0:
        return -1
    for i in range(n):
        if (<uint64_t>ids[i]) >= limit:
            return i
    return -1


ctypedef fused key_t:
    # Sort keys are as narrow as the largest id allows: half the memory traffic for ids below 2**32.
    uint32_t
    uint64_t


cdef void _histogram(const key_t *keys, Py_ssize_t start, Py_ssize_t end, int shift,
                     uint64_t mask, int64_t *counts) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        counts[(keys[i] >> shift) & mask] += 1


cdef void _histogram_ids(const index_t *ids, Py_ssize_t start, Py_ssize_t end, int shift,
                         uint64_t mask, int64_t *counts) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        counts[(<uint64_t>ids[i] >> shift) & mask] += 1


cdef void _scatter_ids(const index_t *ids, Py_ssize_t start, Py_ssize_t end, int shift, uint64_t mask,
                       int64_t *next_slot, key_t *keys_out, int64_t *order_out) noexcept nogil:
    """First pass: read the caller's ids directly; a position's order entry is the position itself."""
    cdef Py_ssize_t i
    cdef int64_t slot
    cdef uint64_t digit
    for i in range(start, end):
        digit = (<uint64_t>ids[i] >> shift) & mask
        slot = next_slot[digit]
        next_slot[digit] = slot + 1
        keys_out[slot] = <key_t>ids[i]
        order_out[slot] = i


cdef void _scatter(const key_t *keys, const int64_t *order, Py_ssize_t start, Py_ssize_t end,
                   int shift, uint64_t mask, int64_t *next_slot,
                   key_t *keys_out, int64_t *order_out) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t slot
    cdef uint64_t digit
    for i in range(start, end):
        digit = (keys[i] >> shift) & mask
        slot = next_slot[digit]
        next_slot[digit] = slot + 1
        keys_out[slot] = keys[i]
        order_out[slot] = order[i]


cdef void _copy_ids(const index_t *ids, Py_ssize_t start, Py_ssize_t end,
                    key_t *keys, int64_t *order) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        keys[i] = <key_t>ids[i]
        order[i] = i


cdef Py_ssize_t _count_heads(const key_t *keys, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i, heads = 0
    for i in range(start, end):
        heads += i == 0 or keys[i] != keys[i - 1]
    return heads


cdef void _write_heads(const key_t *keys, Py_ssize_t start, Py_ssize_t end, Py_ssize_t u,
                       int64_t *rows, int64_t *seg_ptr) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        if i == 0 or keys[i] != keys[i - 1]:
            rows[u] = <int64_t>keys[i]
            seg_ptr[u] = i
            u += 1


cdef bint _prefix_counts(int64_t *counts, Py_ssize_t n_chunks, int64_t radix, Py_ssize_t n) noexcept nogil:
    """Turn per-chunk digit counts into each chunk's first output slot per digit.

    Digit-major, chunk-minor order keeps the scatter stable across chunks. Returns False when one digit
    holds every key: that pass would leave the order unchanged and is skipped.
    """
    cdef Py_ssize_t c
    cdef int64_t d, count, total = 0
    for d in range(radix):
        count = 0
        for c in range(n_chunks):
            count = count + counts[c * radix + d]
        if count == n:
            return False
        if count > 0:
            break
    for d in range(radix):
        for c in range(n_chunks):
            count = counts[c * radix + d]
            counts[c * radix + d] = total
            total = total + count
    return True


cdef object _radix_group(const index_t *ids, Py_ssize_t n, int bits, Py_ssize_t n_chunks,
                         key_t *keys_a, key_t *keys_b, int64_t *order_a, int64_t *order_b):
    """LSD radix sort of ``ids`` into (keys_a, order_a) (buffers swap as passes run), then segment heads."""
    cdef int n_passes = (bits + MAX_DIGIT_BITS - 1) // MAX_DIGIT_BITS
    cdef int digit_bits = (bits + n_passes - 1) // n_passes if n_passes > 0 else 1
    cdef int64_t radix = (<int64_t>1) << digit_bits
    cdef uint64_t mask = <uint64_t>(radix - 1)
    cdef int p, shift
    cdef Py_ssize_t c
    cdef int64_t total, count
    cdef bint sorted_once = False
    cdef int64_t[::1] rows_view, seg_view
    cdef key_t *swap_keys
    cdef int64_t *swap_order
    cdef int64_t *counts = <int64_t *>malloc(max(n_chunks * radix, n_chunks + 1) * sizeof(int64_t))
    if counts == NULL:
        raise MemoryError("fastembed: cannot allocate the radix sort counters")
    try:
        with nogil:
            for p in range(n_passes):
                shift = p * digit_bits
                memset(counts, 0, n_chunks * radix * sizeof(int64_t))
                for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                    if sorted_once:
                        _histogram(keys_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                                   shift, mask, &counts[c * radix])
                    else:
                        _histogram_ids(ids, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                                       shift, mask, &counts[c * radix])
                if not _prefix_counts(counts, n_chunks, radix, n):
                    continue
                for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                    if sorted_once:
                        _scatter(keys_a, order_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                                 shift, mask, &counts[c * radix], keys_b, order_b)
                    else:
                        _scatter_ids(ids, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                                     shift, mask, &counts[c * radix], keys_b, order_b)
                if sorted_once:
                    swap_keys = keys_a; keys_a = keys_b; keys_b = swap_keys
                    swap_order = order_a; order_a = order_b; order_b = swap_order
                else:
                    # The first pass wrote into the b buffers; from now on a and b alternate.
                    keys_a, keys_b = keys_b, keys_a
                    order_a, order_b = order_b, order_a
                    sorted_once = True
            if not sorted_once:
                for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                    _copy_ids(ids, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                              keys_a, order_a)
            for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                counts[c] = _count_heads(keys_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1))
        total = 0
        for c in range(n_chunks):
            count = counts[c]
            counts[c] = total
            total = total + count
        rows = np.empty(total, dtype=np.int64)
        seg_ptr = np.empty(total + 1, dtype=np.int64)
        rows_view, seg_view = rows, seg_ptr
        seg_view[total] = n
        with nogil:
            for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                _write_heads(keys_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                             counts[c], &rows_view[0], &seg_view[0])
    finally:
        free(counts)
    return rows, <size_t>order_a, seg_ptr


def group_rows(const index_t[::1] ids, int64_t max_id, int n_threads):
    """Group equal ids: a stable O(N) radix sort by id, then segment boundaries.

    ids: (N,) int32/int64 in ``[0, max_id]`` (validated by the caller).
    Returns ``(rows, order, seg_ptr)``, all int64: ``rows`` (U,) the sorted unique ids, ``order`` (N,) the
    positions of ``ids`` sorted stably by id, ``seg_ptr`` (U + 1,) so that the positions holding
    ``rows[u]`` are ``order[seg_ptr[u]:seg_ptr[u + 1]]`` in increasing order. Extra memory is O(N),
    independent of the number of table rows; the result is the same for any ``n_threads``.
    """
    cdef Py_ssize_t n = ids.shape[0]
    cdef int bits = 0
    cdef Py_ssize_t n_chunks = n_threads if (n_threads > 1 and n >= PARALLEL_MIN_IDS) else 1
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64)
    while bits < 63 and (max_id >> bits) > 0:
        bits += 1
    orders = [np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)]
    cdef int64_t[::1] order_a = orders[0], order_b = orders[1]
    cdef uint32_t[::1] narrow_a, narrow_b
    cdef uint64_t[::1] wide_a, wide_b
    if bits <= 32:
        narrow_a, narrow_b = np.empty(n, np.uint32), np.empty(n, np.uint32)
        rows, order_address, seg_ptr = _radix_group(&ids[0], n, bits, n_chunks, &narrow_a[0], &narrow_b[0],
                                                    &order_a[0], &order_b[0])
    else:
        wide_a, wide_b = np.empty(n, np.uint64), np.empty(n, np.uint64)
        rows, order_address, seg_ptr = _radix_group(&ids[0], n, bits, n_chunks, &wide_a[0], &wide_b[0],
                                                     &order_a[0], &order_b[0])
    order = orders[0] if order_address == <size_t>&order_a[0] else orders[1]
    return rows, order, seg_ptr
