"""Backward kernels: gradients of a gather, summed per row in a fixed order.

``segment_sum_rows`` reduces the rows that ``group_rows`` grouped (one thread per destination row, no
atomics); ``scatter_add_rows`` adds into a dense gradient, each thread owning a contiguous block of
destination rows. Both add the contributions to a row in increasing position order, so the bits are the
same for any number of threads, and the same as ``np.add.at``.
"""
from libc.stdint cimport int64_t, uint8_t
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._memory cimport prefetch_distance, prefetch_row_read, prefetch_row_write, worth_prefetching
from fastembed._types cimport index_t, real_t

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


cdef void _scatter_add_owned(real_t *dense, const index_t *ids, const real_t *grad, Py_ssize_t dim,
                             Py_ssize_t n_ids, Py_ssize_t n_rows, int64_t row_lo, int64_t row_hi,
                             uint8_t *touched) noexcept nogil:
    cdef Py_ssize_t i, j, ahead
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(row_bytes)
    cdef int64_t row
    cdef real_t *dst
    cdef const real_t *src
    # Prefetch only rows of a dense gradient too large for the caches (prefetch_end 0 turns it off).
    cdef Py_ssize_t prefetch_end = n_ids if worth_prefetching(n_rows * row_bytes) else 0
    for i in range(n_ids):
        ahead = i + distance
        if ahead < prefetch_end and row_lo <= ids[ahead] < row_hi:
            prefetch_row_write(dense + ids[ahead] * dim, row_bytes)
        row = ids[i]
        if row < row_lo or row >= row_hi:
            continue
        if touched != NULL:
            touched[row] = 1
        dst = dense + row * dim
        src = grad + i * dim
        for j in range(dim):
            dst[j] += src[j]


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
    if n_threads <= 1 or n_ids * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            _scatter_add_owned(&dense[0, 0], &ids[0], &grad[0, 0], dim, n_ids, n_rows, 0, n_rows, touched_rows)
        return
    with nogil:
        for t in prange(n_threads, schedule='static', num_threads=n_threads):
            _scatter_add_owned(&dense[0, 0], &ids[0], &grad[0, 0], dim, n_ids, n_rows,
                               (n_rows * t) // n_threads, (n_rows * (t + 1)) // n_threads, touched_rows)
