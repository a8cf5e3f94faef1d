"""Backward kernels: gradients of a gather, summed per row in a fixed order.

``segment_sum_rows`` reduces the rows that ``group_rows`` grouped (one thread per destination row, no
atomics); ``scatter_add_rows`` adds into a dense gradient, each thread owning a contiguous block of
destination rows; ``sum_rows_by_slot`` sums a small table's gradient straight into its compact output,
through a (V,) map from row to output slot, without sorting. All add the contributions to a row in
increasing position order, so the bits are the same for any number of threads, and the same as
``np.add.at``.
"""
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t
from cython.parallel cimport prange

import numpy as np

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._memory cimport (FE_MARK_RELAXED, FE_PREFETCH_KEEP, FE_PREFETCH_KEEP_WRITE, prefetch_distance, prefetch_row_read,
                                prefetch_row_write, worth_prefetching)
from fastembed._types cimport index_t, real_t


cdef inline void _add_row(real_t *dst, const real_t *src, Py_ssize_t dim) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(dim):
        dst[j] += src[j]


cdef void _segment_sum_range(const real_t *grad, const int64_t *order, const int64_t *seg_ptr,
                             real_t *values, Py_ssize_t dim, Py_ssize_t n_ids,
                             Py_ssize_t seg_start, Py_ssize_t seg_end) noexcept nogil:
    cdef Py_ssize_t s, k, j, ahead, first, last
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(row_bytes)
    # Prefetch only rows of a gradient too large for the caches (prefetch_end 0 turns it off).
    cdef Py_ssize_t prefetch_end = seg_ptr[seg_end] if worth_prefetching(n_ids * row_bytes) else 0
    cdef real_t *dst
    cdef const real_t *src
    for s in range(seg_start, seg_end):
        dst = values + s * dim
        first, last = seg_ptr[s], seg_ptr[s + 1]
        for k in range(first, last):
            ahead = k + distance
            if ahead < prefetch_end:
                prefetch_row_read(grad + order[ahead] * dim, row_bytes)
            src = grad + order[k] * dim
            if k == first:
                # 0 + g, not g: the same bits as summing into zeros (-0.0 becomes +0.0), without a memset.
                for j in range(dim):
                    dst[j] = <real_t>0 + src[j]
            else:
                for j in range(dim):
                    dst[j] += src[j]


def segment_sum_rows(const real_t[:, ::1] grad, const int64_t[::1] order, const int64_t[::1] seg_ptr,
                     real_t[:, ::1] values, int n_threads):
    """``values[s] = sum(grad[order[k]] for k in range(seg_ptr[s], seg_ptr[s + 1]))``, k ascending.

    grad: (N, D); order: (N,) int64; seg_ptr: (U + 1,) int64; values: (U, D), grad's dtype.
    """
    cdef Py_ssize_t n_seg = values.shape[0], dim = grad.shape[1], n_ids = order.shape[0]
    cdef Py_ssize_t n_chunks, c
    if n_seg == 0 or dim == 0:
        return
    if n_threads <= 1 or n_ids * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            _segment_sum_range(&grad[0, 0], &order[0], &seg_ptr[0], &values[0, 0], dim, n_ids, 0, n_seg)
        return
    # Several chunks per thread so that a few very long segments (skewed ids) are balanced.
    n_chunks = min(n_seg, 16 * n_threads)
    with nogil:
        for c in prange(n_chunks, schedule='dynamic', num_threads=n_threads):
            _segment_sum_range(&grad[0, 0], &order[0], &seg_ptr[0], &values[0, 0], dim, n_ids,
                               (n_seg * c) // n_chunks, (n_seg * (c + 1)) // n_chunks)


cdef enum:
    # Below this many ids one thread marks the touched rows faster than a team starts.
    PARALLEL_MIN_IDS = 32768


cdef inline bint _owners_pay(Py_ssize_t dest_bytes) noexcept nogil:
    """Whether splitting destination rows over threads pays. Each thread scans every id and skips, at a
    mispredicted branch, the rows it does not own: that costs about as much as adding a row that is in
    cache, so only destinations too large for the caches (whose rows miss) gain from more threads."""
    return worth_prefetching(dest_bytes)


cdef inline void _scatter_add_dim(real_t *dense, const index_t *ids, const real_t *grad, Py_ssize_t dim,
                                   Py_ssize_t n_ids, bint prefetch, int64_t row_lo, int64_t row_hi,
                                   uint8_t *touched) noexcept nogil:
    # Inlined once per common width (see _scatter_add_owned): a constant dim turns the row loop into a few
    # vector adds, where a run-time 3 or 16 costs loop set-up and an overlap check per row.
    cdef Py_ssize_t i, ahead
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(row_bytes)
    cdef int64_t row
    cdef Py_ssize_t prefetch_end = n_ids if prefetch else 0
    cdef bint every_row = row_lo == 0 and row_hi == INT64_MAX
    for i in range(n_ids):
        ahead = i + distance
        if ahead < prefetch_end and row_lo <= ids[ahead] < row_hi:
            prefetch_row_write(dense + ids[ahead] * dim, row_bytes)
        row = ids[i]
        if not every_row and (row < row_lo or row >= row_hi):
            continue
        if touched != NULL:
            touched[row] = 1
        _add_row(dense + row * dim, grad + i * dim, dim)


cdef void _scatter_add_owned(real_t *dense, const index_t *ids, const real_t *grad, Py_ssize_t dim,
                             Py_ssize_t n_ids, Py_ssize_t n_rows, int64_t row_lo, int64_t row_hi,
                             uint8_t *touched) noexcept nogil:
    # Prefetch only rows of a dense gradient too large for the caches.
    cdef bint prefetch = worth_prefetching(n_rows * dim * sizeof(real_t))
    if row_lo == 0 and row_hi >= n_rows:
        row_hi = INT64_MAX
    if dim == 1:
        _scatter_add_dim(dense, ids, grad, 1, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 2:
        _scatter_add_dim(dense, ids, grad, 2, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 3:
        _scatter_add_dim(dense, ids, grad, 3, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 4:
        _scatter_add_dim(dense, ids, grad, 4, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 8:
        _scatter_add_dim(dense, ids, grad, 8, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 16:
        _scatter_add_dim(dense, ids, grad, 16, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 32:
        _scatter_add_dim(dense, ids, grad, 32, n_ids, prefetch, row_lo, row_hi, touched)
    elif dim == 64:
        _scatter_add_dim(dense, ids, grad, 64, n_ids, prefetch, row_lo, row_hi, touched)
    else:
        _scatter_add_dim(dense, ids, grad, dim, n_ids, prefetch, row_lo, row_hi, touched)


def scatter_add_rows(real_t[:, ::1] dense, const index_t[::1] ids, const real_t[:, ::1] grad, int n_threads,
                     uint8_t[::1] touched=None):
    """``dense[ids[i]] += grad[i]`` for every i, in increasing i for each row.

    dense: (V, D); ids: (N,) int32/int64 in ``[0, V)``; grad: (N, D), dense's dtype.
    touched: optional (V,) uint8, set to 1 at every row that received a contribution.
    """
    cdef Py_ssize_t n_ids = ids.shape[0], dim = dense.shape[1], n_rows = dense.shape[0], t
    cdef uint8_t *touched_rows = &touched[0] if touched is not None and touched.shape[0] > 0 else NULL
    if n_ids == 0 or dim == 0:
        if touched_rows != NULL:
            for t in range(n_ids):
                touched_rows[ids[t]] = 1
        return
    if n_threads <= 1 or not _owners_pay(n_rows * dim * sizeof(real_t)):
        with nogil:
            _scatter_add_owned(&dense[0, 0], &ids[0], &grad[0, 0], dim, n_ids, n_rows, 0, n_rows, touched_rows)
        return
    with nogil:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _scatter_add_owned(&dense[0, 0], &ids[0], &grad[0, 0], dim, n_ids, n_rows,
                               (n_rows * t) // n_threads, (n_rows * (t + 1)) // n_threads, touched_rows)


cdef inline void _sum_by_slot_dim(real_t *values, const int32_t *slot, const index_t *ids, const real_t *grad,
                                  Py_ssize_t dim, Py_ssize_t n_ids, int32_t slot_lo, int32_t slot_hi,
                                  bint owned_only, bint prefetch) noexcept nogil:
    # Inlined once per common width, like _scatter_add_dim.
    cdef Py_ssize_t i
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(row_bytes)
    cdef Py_ssize_t prefetch_end = n_ids - 2 * distance if prefetch else 0
    cdef int32_t s
    for i in range(n_ids):
        if i < prefetch_end:
            # Two stages: the slot of an id further ahead, then the output row of a nearer one.
            FE_PREFETCH_KEEP(&slot[ids[i + 2 * distance]])
            FE_PREFETCH_KEEP_WRITE(values + slot[ids[i + distance]] * dim)
        s = slot[ids[i]]
        if owned_only and (s < slot_lo or s >= slot_hi):
            continue
        _add_row(values + s * dim, grad + i * dim, dim)


cdef void _sum_by_slot(real_t *values, const int32_t *slot, const index_t *ids, const real_t *grad,
                       Py_ssize_t dim, Py_ssize_t n_ids, int32_t slot_lo, int32_t slot_hi,
                       bint owned_only, bint prefetch) noexcept nogil:
    if dim == 1:
        _sum_by_slot_dim(values, slot, ids, grad, 1, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 2:
        _sum_by_slot_dim(values, slot, ids, grad, 2, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 3:
        _sum_by_slot_dim(values, slot, ids, grad, 3, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 4:
        _sum_by_slot_dim(values, slot, ids, grad, 4, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 8:
        _sum_by_slot_dim(values, slot, ids, grad, 8, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 16:
        _sum_by_slot_dim(values, slot, ids, grad, 16, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 32:
        _sum_by_slot_dim(values, slot, ids, grad, 32, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    elif dim == 64:
        _sum_by_slot_dim(values, slot, ids, grad, 64, n_ids, slot_lo, slot_hi, owned_only, prefetch)
    else:
        _sum_by_slot_dim(values, slot, ids, grad, dim, n_ids, slot_lo, slot_hi, owned_only, prefetch)


cdef void _mark_rows(const index_t *ids, Py_ssize_t start, Py_ssize_t end, int32_t *slot) noexcept nogil:
    """Set ``slot[id] = 1`` for every id (threads may mark the same row at once)."""
    cdef Py_ssize_t i
    for i in range(start, end):
        FE_MARK_RELAXED(<int *>&slot[ids[i]])


cdef Py_ssize_t _count_marked(const int32_t *slot, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t r, marked = 0
    for r in range(start, end):
        marked += slot[r]
    return marked


cdef void _number_rows(int32_t *slot, Py_ssize_t n_rows, int64_t *rows) noexcept nogil:
    """Marked rows get consecutive slots in row order, listed in ``rows`` (which has room for one more)."""
    cdef Py_ssize_t r
    cdef int32_t next_slot = 0, marked
    for r in range(n_rows):
        # Branch-free: whether a row of a large table was touched is a coin toss for the predictor.
        marked = slot[r]
        rows[next_slot] = r
        slot[r] = next_slot
        next_slot += marked


def sum_rows_by_slot(const index_t[::1] ids, const real_t[:, ::1] grad, int64_t n_rows, int n_threads):
    """Sparse gradient through a (V,) row-to-slot map: ``(rows, values)`` as ``group_rows`` then
    ``segment_sum_rows`` give them, without sorting.

    ids: (N,) int32/int64 in ``[0, n_rows)`` (validated by the caller); grad: (N, D) float32/float64.
    n_rows: V, below 2**31; meant for V <= N, where the (V,) int32 map is O(N) memory.
    Returns ``rows`` (U,) int64 sorted unique and ``values`` (U, D) with
    ``values[u] = 0 + sum(grad[i] for i with ids[i] == rows[u])``, i ascending: the same bits for any
    ``n_threads`` (each thread owns a block of output rows and scans every id).
    """
    cdef Py_ssize_t n = ids.shape[0], dim = grad.shape[1], distinct = 0, t
    cdef int32_t[::1] slot = np.zeros(n_rows, dtype=np.int32)
    cdef int64_t[::1] rows_view
    cdef real_t[:, ::1] values_view
    cdef bint prefetch
    cdef int32_t n_slots
    dtype = np.float32 if real_t is float else np.float64
    if n == 0:
        return np.empty(0, np.int64), np.zeros((0, dim), dtype=dtype)
    # Threads marking a small map write the same cache lines: measured 2x slower than one thread on 13 rows.
    cdef bint parallel = n_threads > 1 and n >= PARALLEL_MIN_IDS and n_rows * sizeof(int32_t) >= PARALLEL_MIN_BYTES
    with nogil:
        if parallel:
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                _mark_rows(&ids[0], (n * t) // n_threads, (n * (t + 1)) // n_threads, &slot[0])
            for t in prange(n_threads, schedule='static', num_threads=n_threads):
                distinct += _count_marked(&slot[0], (n_rows * t) // n_threads, (n_rows * (t + 1)) // n_threads)
        else:
            _mark_rows(&ids[0], 0, n, &slot[0])
            distinct = _count_marked(&slot[0], 0, n_rows)
    rows = np.empty(distinct + 1, dtype=np.int64)
    rows_view = rows
    with nogil:
        _number_rows(&slot[0], n_rows, &rows_view[0])
    rows = rows[:distinct]
    # Zeroed: each sum starts from 0 + g, the same bits as segment_sum_rows gives.
    values = np.zeros((distinct, dim), dtype=dtype)
    if dim == 0:
        return rows, values
    values_view = values
    n_slots = <int32_t>distinct
    prefetch = worth_prefetching(distinct * dim * sizeof(real_t))
    if n_threads <= 1 or not _owners_pay(distinct * dim * sizeof(real_t)):
        with nogil:
            _sum_by_slot(&values_view[0, 0], &slot[0], &ids[0], &grad[0, 0], dim, n, 0, n_slots, False, prefetch)
        return rows, values
    with nogil:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _sum_by_slot(&values_view[0, 0], &slot[0], &ids[0], &grad[0, 0], dim, n,
                         <int32_t>((n_slots * <int64_t>t) // n_threads),
                         <int32_t>((n_slots * <int64_t>(t + 1)) // n_threads), True, prefetch)
    return rows, values
