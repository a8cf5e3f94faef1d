"""Bag kernels: pooled lookups (sum, mean, sqrtn, max) over CSR bags, and their gradients.

A bag ``b`` holds the positions ``offsets[b]:offsets[b + 1]`` of a flat id array. The forward pass gives each
bag to one thread (guided schedule: bags may be uneven) and prefetches the rows of the ids a few positions
ahead, across bag boundaries, so that several cache misses are in flight. The backward pass is a segment
reduction over ids grouped by row (``_segment.reduce_segment``): deterministic for any thread count.
All inputs are validated by the caller; these loops trust them.
"""
from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from cython.parallel cimport prange

from fastembed._memory cimport fe_prefetch_row
from fastembed._segment cimport Segments, make_segments, reduce_segment
from fastembed._types cimport index_t, real_t

cdef enum:
    MODE_SUM = 0
    MODE_MEAN = 1
    MODE_SQRTN = 2
    MODE_MAX = 3
    PREFETCH_DISTANCE = 16
    # Below this many bytes of rows read, one thread is faster than starting a team.
    PARALLEL_MIN_BYTES = 1 << 16


cdef inline real_t _bag_scale(int mode, real_t denom) noexcept nogil:
    """The factor applied to a weighted sum: 1, 1/sum(w) or 1/sqrt(sum(w^2)); 0 when the denominator is 0."""
    if mode == MODE_SUM:
        return 1
    if denom == 0:
        return 0
    if mode == MODE_MEAN:
        return 1 / denom
    return 1 / <real_t>sqrt(denom)


cdef void _pool_bag(const real_t *table, const index_t *ids, Py_ssize_t n_ids, int64_t start, int64_t end,
                    const real_t *weights, int mode, int64_t padding, Py_ssize_t dim,
                    real_t *dst, int64_t *argpos) noexcept nogil:
    cdef int64_t k, ahead, row
    cdef Py_ssize_t j, row_bytes = dim * sizeof(real_t)
    cdef real_t w = 1, denom = 0
    cdef const real_t *src
    cdef bint seen = False
    memset(dst, 0, row_bytes)
    if argpos != NULL:
        for j in range(dim):
            argpos[j] = -1
    for k in range(start, end):
        ahead = k + PREFETCH_DISTANCE
        if ahead < n_ids:
            fe_prefetch_row(table + ids[ahead] * dim, row_bytes)
        row = ids[k]
        if row == padding:
            continue
        src = table + row * dim
        if mode == MODE_MAX:
            if not seen:
                memcpy(dst, src, row_bytes)
                if argpos != NULL:
                    for j in range(dim):
                        argpos[j] = k
            elif argpos == NULL:
                for j in range(dim):
                    dst[j] = src[j] if src[j] > dst[j] else dst[j]
            else:
                # Strictly greater: a tie keeps the earlier position, which then gets the gradient.
                for j in range(dim):
                    if src[j] > dst[j]:
                        dst[j] = src[j]
                        argpos[j] = k
            seen = True
            continue
        if weights != NULL:
            w = weights[k]
        for j in range(dim):
            dst[j] += w * src[j]
        denom += w if mode != MODE_SQRTN else w * w
    if mode == MODE_SUM or mode == MODE_MAX:
        return
    if denom == 0:
        memset(dst, 0, row_bytes)
        return
    # Divide rather than multiply by the reciprocal: the mean is then exactly rounded, as in PyTorch.
    if mode == MODE_SQRTN:
        denom = <real_t>sqrt(denom)
    for j in range(dim):
        dst[j] /= denom


def bag_forward(const real_t[:, ::1] table, const index_t[::1] ids, const int64_t[::1] offsets,
                const real_t[::1] weights, int mode, int64_t padding, real_t[:, ::1] out,
                int64_t[:, ::1] argpos, int n_threads):
    """Pool each bag: ``out[b] = pool(table[ids[offsets[b]:offsets[b + 1]]])``.

    table: (V, D); ids: (N,) in ``[0, V)``; offsets: (B + 1,) int64, non-decreasing from 0 to N; weights: (N,)
    per-sample weights or empty; mode: 0 sum, 1 mean, 2 sqrtn, 3 max; padding: an id to skip, or -1;
    out: (B, D). argpos: (B, D) int64 receiving, for max, the position of each column's maximum (-1 for an
    empty bag), or an empty array. Ids equal to ``padding`` are skipped and not counted.
    """
    cdef Py_ssize_t n_bags = out.shape[0], dim = table.shape[1], n_ids = ids.shape[0]
    cdef Py_ssize_t b
    cdef const real_t *w = &weights[0] if weights.shape[0] else NULL
    cdef int64_t *pos = &argpos[0, 0] if argpos.shape[0] and dim else NULL
    if n_bags == 0 or dim == 0:
        return
    if n_ids == 0:
        out[:, :] = 0
        if pos != NULL:
            argpos[:, :] = -1
        return
    if n_threads <= 1 or n_ids * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            for b in range(n_bags):
                _pool_bag(&table[0, 0], &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding, dim,
                          &out[b, 0], pos + b * dim if pos != NULL else NULL)
        return
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _pool_bag(&table[0, 0], &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding, dim,
                      &out[b, 0], pos + b * dim if pos != NULL else NULL)


cdef void _bag_terms(const index_t *ids, int64_t start, int64_t end, int64_t bag, const real_t *weights,
                     int mode, int64_t padding, int64_t *src, real_t *coef) noexcept nogil:
    cdef int64_t k
    cdef real_t w = 1, denom = 0, scale
    for k in range(start, end):
        src[k] = bag
    if coef == NULL:
        return
    for k in range(start, end):
        if ids[k] == padding:
            continue
        if weights != NULL:
            w = weights[k]
        denom += w if mode != MODE_SQRTN else w * w
    scale = _bag_scale(mode, denom)
    for k in range(start, end):
        coef[k] = (weights[k] if weights != NULL else 1) * scale


def bag_terms(const index_t[::1] ids, const int64_t[::1] offsets, const real_t[::1] weights, int mode,
              int64_t padding, int64_t[::1] src, real_t[::1] coef, int n_threads):
    """For each position k of bag b: ``src[k] = b`` and ``coef[k] = d out[b] / d table[ids[k]]``.

    The coefficient is ``w_k`` (sum), ``w_k / sum(w)`` (mean) or ``w_k / sqrt(sum(w^2))`` (sqrtn), the sums
    over the bag's non-padding positions, 0 when they are 0. ``coef`` may be empty (not needed: sum without
    weights, or max). Shapes as in ``bag_forward``; src, coef: (N,).
    """
    cdef Py_ssize_t n_bags = offsets.shape[0] - 1, b
    cdef const real_t *w = &weights[0] if weights.shape[0] else NULL
    cdef real_t *c = &coef[0] if coef.shape[0] else NULL
    if ids.shape[0] == 0:
        return
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _bag_terms(&ids[0], offsets[b], offsets[b + 1], b, w, mode, padding, &src[0], c)


cdef void _reduce_range(const Segments *seg, const real_t *grad, const real_t *coef, real_t *values,
                        Py_ssize_t skip, Py_ssize_t s_start, Py_ssize_t s_end) noexcept nogil:
    cdef Py_ssize_t s
    for s in range(s_start, s_end):
        if s == skip:
            continue
        reduce_segment(seg, grad, coef, s, values + (s - (skip >= 0 and s > skip)) * seg.dim)


def segment_reduce(const real_t[:, ::1] grad, const int64_t[::1] order, const int64_t[::1] seg_ptr,
                   const int64_t[::1] src, const real_t[::1] coef, const int64_t[:, ::1] argpos, bint by_freq,
                   Py_ssize_t skip, real_t[:, ::1] values, int n_threads):
    """The gradient of each grouped row: ``values[s] = reduce_segment(s)`` for every segment but ``skip``.

    grad: (R, D) output gradients (R = number of bags, or of positions when ``src`` is empty); order (N,) and
    seg_ptr (U + 1,) from ``group_rows``; src (N,) or empty; coef (N,) or empty; argpos (R, D) or empty;
    skip: a segment to leave out (the padding row) or -1; values: (U, D), or (U - 1, D) with a skip.
    """
    cdef Py_ssize_t n_seg = seg_ptr.shape[0] - 1, dim = grad.shape[1], n_chunks, c
    cdef Segments seg
    cdef const real_t *co = &coef[0] if coef.shape[0] else NULL
    if values.shape[0] == 0 or dim == 0:
        return
    seg = make_segments(order, seg_ptr, src, argpos, dim, by_freq)
    if n_threads <= 1:
        with nogil:
            _reduce_range(&seg, &grad[0, 0], co, &values[0, 0], skip, 0, n_seg)
        return
    # Several chunks per thread, taken dynamically, balance a few very frequent rows.
    n_chunks = min(n_seg, 16 * n_threads)
    with nogil:
        for c in prange(n_chunks, schedule='dynamic', num_threads=n_threads):
            _reduce_range(&seg, &grad[0, 0], co, &values[0, 0], skip,
                          (n_seg * c) // n_chunks, (n_seg * (c + 1)) // n_chunks)
