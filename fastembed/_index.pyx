"""Id kernels: range validation and grouping equal ids (an O(N) parallel LSD radix sort).

Grouping is what makes the sparse gradient exact and deterministic: after a *stable* sort by id, the
positions that share a row are listed in their original order, so every consumer sums them in that
order whatever the number of threads.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t
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


cdef Py_ssize_t _count_bad(const index_t *ids, Py_ssize_t start, Py_ssize_t end,
                           uint64_t n_rows) noexcept nogil:
    cdef Py_ssize_t i, bad = 0
    for i in range(start, end):
        # One unsigned comparison rejects negatives too.
        bad += (<uint64_t>ids[i]) >= n_rows
    return bad


def first_out_of_range(const index_t[::1] ids, int64_t n_rows, int n_threads):
    """Position of the first id outside ``[0, n_rows)``, or -1 when every id is valid.

    ids: (N,) int32/int64, C-contiguous. The common all-valid case is a parallel count; only a failure
    pays for the serial scan that locates the first culprit.
    """
    cdef Py_ssize_t n = ids.shape[0], n_chunks, c, i, bad = 0
    cdef uint64_t limit = <uint64_t>n_rows if n_rows > 0 else 0
    if n == 0:
        return -1
    if n_threads <= 1 or n < PARALLEL_MIN_IDS:
        with nogil:
            bad = _count_bad(&ids[0], 0, n, limit)
    else:
        n_chunks = n_threads
        with nogil:
            for c in prange(n_chunks, schedule='static', num_threads=n_threads):
                bad += _count_bad(&ids[0], _chunk_start(n, n_chunks, c),
                                  _chunk_start(n, n_chunks, c + 1), limit)
    if bad == 0:
        return -1
    for i in range(n):
        if (<uint64_t>ids[i]) >= limit:
            return i
    return -1


cdef void _load_keys(const index_t *ids, int64_t *keys, int64_t *order,
                     Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        keys[i] = ids[i]
        order[i] = i


cdef void _histogram(const int64_t *keys, Py_ssize_t start, Py_ssize_t end, int shift,
                     int64_t mask, int64_t *counts) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        counts[(keys[i] >> shift) & mask] += 1


cdef void _scatter(const int64_t *keys, const int64_t *order, Py_ssize_t start, Py_ssize_t end,
                   int shift, int64_t mask, int64_t *next_slot,
                   int64_t *keys_out, int64_t *order_out) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t slot
    for i in range(start, end):
        slot = next_slot[(keys[i] >> shift) & mask]
        next_slot[(keys[i] >> shift) & mask] = slot + 1
        keys_out[slot] = keys[i]
        order_out[slot] = order[i]


cdef Py_ssize_t _count_heads(const int64_t *keys, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i, heads = 0
    for i in range(start, end):
        heads += i == 0 or keys[i] != keys[i - 1]
    return heads


cdef void _write_heads(const int64_t *keys, Py_ssize_t start, Py_ssize_t end, Py_ssize_t u,
                       int64_t *rows, int64_t *seg_ptr) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        if i == 0 or keys[i] != keys[i - 1]:
            rows[u] = keys[i]
            seg_ptr[u] = i
            u += 1


def group_rows(const index_t[::1] ids, int64_t max_id, int n_threads):
    """Group equal ids: a stable O(N) radix sort by id, then segment boundaries.

    ids: (N,) int32/int64 in ``[0, max_id]`` (validated by the caller).
    Returns ``(rows, order, seg_ptr)``, all int64: ``rows`` (U,) the sorted unique ids, ``order`` (N,) the
    positions of ``ids`` sorted stably by id, ``seg_ptr`` (U + 1,) so that the positions holding
    ``rows[u]`` are ``order[seg_ptr[u]:seg_ptr[u + 1]]`` in increasing order. Extra memory is O(N),
    independent of the number of table rows; the result is the same for any ``n_threads``.
    """
    cdef Py_ssize_t n = ids.shape[0], n_chunks, c, d, i, u
    cdef int bits = 0, n_passes, digit_bits, p, shift
    cdef int64_t mask, total, count, radix
    cdef int64_t *keys_a
    cdef int64_t *keys_b
    cdef int64_t *order_a
    cdef int64_t *order_b
    cdef int64_t *swap
    cdef int64_t *counts
    cdef bint single_digit

    while bits < 63 and (max_id >> bits) > 0:
        bits += 1
    n_chunks = n_threads if (n_threads > 1 and n >= PARALLEL_MIN_IDS) else 1
    n_passes = (bits + MAX_DIGIT_BITS - 1) // MAX_DIGIT_BITS
    digit_bits = (bits + n_passes - 1) // n_passes if n_passes > 0 else 1
    radix = (<int64_t>1) << digit_bits
    mask = radix - 1

    keys_arr = np.empty(n, dtype=np.int64)
    order_arr = np.empty(n, dtype=np.int64)
    keys_tmp = np.empty(n if n_passes > 0 else 0, dtype=np.int64)
    order_tmp = np.empty(n if n_passes > 0 else 0, dtype=np.int64)
    cdef int64_t[::1] keys_view = keys_arr, order_view = order_arr
    cdef int64_t[::1] keys_tmp_view = keys_tmp, order_tmp_view = order_tmp
    if n == 0:
        return np.empty(0, np.int64), order_arr, np.zeros(1, np.int64)

    counts = <int64_t *>malloc(n_chunks * radix * sizeof(int64_t))
    if counts == NULL:
        raise MemoryError("fastembed: cannot allocate the radix sort counters")
    keys_a, order_a = &keys_view[0], &order_view[0]
    keys_b = &keys_tmp_view[0] if n_passes > 0 else NULL
    order_b = &order_tmp_view[0] if n_passes > 0 else NULL
    try:
        with nogil:
            for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                _load_keys(&ids[0], keys_a, order_a, _chunk_start(n, n_chunks, c),
                           _chunk_start(n, n_chunks, c + 1))
            for p in range(n_passes):
                shift = p * digit_bits
                memset(counts, 0, n_chunks * radix * sizeof(int64_t))
                for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                    _histogram(keys_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                               shift, mask, &counts[c * radix])
                # A digit that every key shares leaves the order as it is: skip the scatter.
                single_digit = False
                for d in range(radix):
                    count = 0
                    for c in range(n_chunks):
                        count = count + counts[c * radix + d]
                    if count == n:
                        single_digit = True
                        break
                    if count > 0:
                        break
                if single_digit:
                    continue
                # Digit-major, chunk-minor prefix sums keep the scatter stable across chunks.
                total = 0
                for d in range(radix):
                    for c in range(n_chunks):
                        count = counts[c * radix + d]
                        counts[c * radix + d] = total
                        total = total + count
                for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                    _scatter(keys_a, order_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                             shift, mask, &counts[c * radix], keys_b, order_b)
                swap = keys_a; keys_a = keys_b; keys_b = swap
                swap = order_a; order_a = order_b; order_b = swap
            for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
                counts[c] = _count_heads(keys_a, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1))
        total = 0
        for c in range(n_chunks):
            count = counts[c]
            counts[c] = total
            total = total + count
        rows_arr = np.empty(total, dtype=np.int64)
        seg_arr = np.empty(total + 1, dtype=np.int64)
        _fill_heads(keys_a, n, n_chunks, counts, rows_arr, seg_arr)
        seg_arr[total] = n
    finally:
        free(counts)
    sorted_order = order_arr if order_a == &order_view[0] else order_tmp
    return rows_arr, sorted_order, seg_arr


cdef void _fill_heads(const int64_t *keys, Py_ssize_t n, Py_ssize_t n_chunks, const int64_t *first_head,
                      int64_t[::1] rows, int64_t[::1] seg_ptr):
    cdef Py_ssize_t c
    if rows.shape[0] == 0:
        return
    with nogil:
        for c in prange(n_chunks, schedule='static', num_threads=n_chunks):
            _write_heads(keys, _chunk_start(n, n_chunks, c), _chunk_start(n, n_chunks, c + 1),
                         first_head[c], &rows[0], &seg_ptr[0])
