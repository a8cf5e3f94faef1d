"""Bag kernels: pooled lookups (sum, mean, sqrtn, max) over CSR bags, and their gradients.

A bag ``b`` holds the positions ``offsets[b]:offsets[b + 1]`` of a flat id array. The forward pass gives each
bag to one thread (guided schedule: bags may be uneven) and prefetches the rows of the ids a few positions
ahead, across bag boundaries, so that several cache misses are in flight. The backward pass is a segment
reduction over ids grouped by row (``_segment.reduce_segment``): deterministic for any thread count.
All inputs are validated by the caller; these loops trust them.
"""
from libc.math cimport sqrt
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset
from cython.parallel cimport prange

import numpy as np

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._simd cimport fe_row_sum_f32_i32, fe_row_sum_f32_i64, fe_row_sum_f64_i32, fe_row_sum_f64_i64
from fastembed._memory cimport prefetch_row_keep, worth_prefetching
from fastembed._segment cimport Segments, make_segments, reduce_segment
from fastembed._types cimport index_t, real_t

cdef enum:
    MODE_SUM = 0
    MODE_MEAN = 1
    MODE_SQRTN = 2
    MODE_MAX = 3
    PREFETCH_DISTANCE = 16


cdef inline real_t _bag_scale(int mode, real_t denom) noexcept nogil:
    """The factor applied to a weighted sum: 1, 1/sum(w) or 1/sqrt(sum(w^2)); 0 when the denominator is 0."""
    if mode == MODE_SUM:
        return 1
    if denom == 0:
        return 0
    if mode == MODE_MEAN:
        return 1 / denom
    return 1 / <real_t>sqrt(denom)


cdef inline void _prefetch_ahead(const real_t *table, const index_t *ids, int64_t k, Py_ssize_t n_ids,
                                 Py_ssize_t row_bytes) noexcept nogil:
    """Prefetch the row of the id PREFETCH_DISTANCE positions ahead (bags are contiguous, so this crosses
    into the next bags near the end of one)."""
    cdef int64_t ahead = k + PREFETCH_DISTANCE
    if ahead < n_ids:
        prefetch_row_keep(<const char *>table + ids[ahead] * row_bytes, row_bytes)


cdef inline int64_t _row_sum(const real_t *table, const index_t *ids, int64_t start, int64_t end,
                             Py_ssize_t n_ids, int64_t padding, Py_ssize_t dim, bint prefetch,
                             real_t *dst) noexcept nogil:
    """``dst = sum of table[ids[k]]`` over the bag's non-padding ids (see ``_simd``); returns their count."""
    cdef int64_t ahead = PREFETCH_DISTANCE if prefetch else 0
    if real_t is float:
        if index_t is int32_t:
            return fe_row_sum_f32_i32(table, ids, start, end, n_ids, padding, dim, ahead, dst)
        else:
            return fe_row_sum_f32_i64(table, ids, start, end, n_ids, padding, dim, ahead, dst)
    else:
        if index_t is int32_t:
            return fe_row_sum_f64_i32(table, ids, start, end, n_ids, padding, dim, ahead, dst)
        else:
            return fe_row_sum_f64_i64(table, ids, start, end, n_ids, padding, dim, ahead, dst)


cdef inline real_t _weighted_block(const real_t *table, const index_t *ids, Py_ssize_t n_ids, int64_t start,
                                   int64_t end, const real_t *weights, int mode, int64_t padding, Py_ssize_t dim,
                                   Py_ssize_t j0, bint first, real_t *dst) noexcept nogil:
    """``dst[j0:j0 + BLOCK] = sum_k w_k * table[ids[k], j0:j0 + BLOCK]`` over the bag, BLOCK = 256 bytes.

    The block has a fixed width so that its accumulators live in registers. The first block's pass
    (``first``) prefetches rows ahead, when the table is worth it, and returns the bag's denominator
    (sum of w, or of w^2).
    """
    cdef real_t acc[64]
    cdef Py_ssize_t j, row_bytes = dim * sizeof(real_t)
    cdef int64_t k, row
    cdef real_t w, denom = 0
    cdef const real_t *src
    for j in range(64 if real_t is float else 32):
        acc[j] = 0
    for k in range(start, end):
        if first:
            _prefetch_ahead(table, ids, k, n_ids, row_bytes)
        row = ids[k]
        if row == padding:
            continue
        w = weights[k]
        denom += w if mode != MODE_SQRTN else w * w
        src = table + row * dim + j0
        for j in range(64 if real_t is float else 32):
            acc[j] += w * src[j]
    for j in range(64 if real_t is float else 32):
        dst[j] = acc[j]
    return denom


cdef void _max_bag(const real_t *table, const index_t *ids, Py_ssize_t n_ids, int64_t start, int64_t end,
                   int64_t padding, Py_ssize_t dim, bint prefetch, real_t *dst, int64_t *argpos) noexcept nogil:
    cdef int64_t k, row
    cdef Py_ssize_t j, row_bytes = dim * sizeof(real_t)
    cdef const real_t *src
    cdef bint seen = False
    memset(dst, 0, row_bytes)
    if argpos != NULL:
        for j in range(dim):
            argpos[j] = -1
    for k in range(start, end):
        if prefetch:
            _prefetch_ahead(table, ids, k, n_ids, row_bytes)
        row = ids[k]
        if row == padding:
            continue
        src = table + row * dim
        if not seen:
            memcpy(dst, src, row_bytes)
            if argpos != NULL:
                for j in range(dim):
                    argpos[j] = k
            seen = True
        elif argpos == NULL:
            for j in range(dim):
                dst[j] = src[j] if src[j] > dst[j] else dst[j]
        else:
            # Strictly greater: a tie keeps the earlier position, which then gets the gradient.
            for j in range(dim):
                if src[j] > dst[j]:
                    dst[j] = src[j]
                    argpos[j] = k


cdef void _pool_bag(const real_t *table, const index_t *ids, Py_ssize_t n_ids, int64_t start, int64_t end,
                    const real_t *weights, int mode, int64_t padding, Py_ssize_t dim, bint prefetch,
                    real_t *dst, int64_t *argpos) noexcept nogil:
    cdef Py_ssize_t block = 64 if real_t is float else 32
    cdef int64_t k, row
    cdef Py_ssize_t j, j0 = 0, tail = dim % block, row_bytes = dim * sizeof(real_t)
    cdef real_t w, denom = 0
    cdef const real_t *src
    if mode == MODE_MAX:
        _max_bag(table, ids, n_ids, start, end, padding, dim, prefetch, dst, argpos)
        return
    if weights == NULL:
        denom = <real_t>_row_sum(table, ids, start, end, n_ids, padding, dim, prefetch, dst)
    else:
        # Columns are summed one 256-byte block at a time over the whole bag: the bag's rows stay in L1
        # between blocks, and the first pass prefetches the rows ahead. A last partial block is summed in place.
        while j0 + block <= dim:
            if j0 == 0:
                denom = _weighted_block(table, ids, n_ids, start, end, weights, mode, padding, dim, j0, prefetch,
                                        dst + j0)
            else:
                _weighted_block(table, ids, n_ids, start, end, weights, mode, padding, dim, j0, False, dst + j0)
            j0 += block
        if tail:
            memset(dst + j0, 0, tail * sizeof(real_t))
            for k in range(start, end):
                if j0 == 0 and prefetch:
                    _prefetch_ahead(table, ids, k, n_ids, row_bytes)
                row = ids[k]
                if row == padding:
                    continue
                w = weights[k]
                if j0 == 0:
                    denom += w if mode != MODE_SQRTN else w * w
                src = table + row * dim + j0
                for j in range(tail):
                    dst[j0 + j] += w * src[j]
    if mode == MODE_SUM:
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
    # A table that fits in the caches gains nothing from prefetching, which then only costs instructions.
    cdef bint prefetch = worth_prefetching(table.shape[0] * dim * sizeof(real_t))
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
                _pool_bag(&table[0, 0], &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding, dim, prefetch,
                          &out[b, 0], pos + b * dim if pos != NULL else NULL)
        return
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _pool_bag(&table[0, 0], &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding, dim, prefetch,
                      &out[b, 0], pos + b * dim if pos != NULL else NULL)


cdef void _bag_of_positions(const index_t *ids, int64_t start, int64_t end, int64_t bag, const real_t *weights,
                            int mode, int64_t padding, int64_t *bag_of, real_t *bag_scale) noexcept nogil:
    cdef int64_t k
    cdef real_t w = 1, denom = 0
    for k in range(start, end):
        bag_of[k] = bag
    if bag_scale == NULL:
        return
    for k in range(start, end):
        if ids[k] == padding:
            continue
        if weights != NULL:
            w = weights[k]
        denom += w if mode != MODE_SQRTN else w * w
    bag_scale[bag] = _bag_scale(mode, denom)


cdef void _terms_range(const int64_t *order, const int64_t *bag_of, const real_t *weights, const real_t *bag_scale,
                       int64_t *term_src, real_t *term_coef, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t k
    cdef int64_t pos, bag
    for k in range(start, end):
        pos = order[k]
        bag = bag_of[pos]
        term_src[k] = bag
        if term_coef != NULL:
            term_coef[k] = (weights[pos] if weights != NULL else 1) * bag_scale[bag]


def bag_terms(const index_t[::1] ids, const int64_t[::1] offsets, const real_t[::1] weights, int mode,
              int64_t padding, const int64_t[::1] order, int64_t[::1] term_src, real_t[::1] term_coef,
              int n_threads):
    """The terms of the bag gradient in segment order: for the k-th position ``p = order[k]`` of bag b,
    ``term_src[k] = b`` and ``term_coef[k] = d out[b] / d table[ids[p]]``.

    The coefficient is ``w_p`` (sum), ``w_p / sum(w)`` (mean) or ``w_p / sqrt(sum(w^2))`` (sqrtn), the sums
    over the bag's non-padding positions, 0 when they are 0. ``term_coef`` may be empty (not needed: sum
    without weights, or max). ids, offsets, weights, mode, padding as in ``bag_forward``; order: (N,) from
    ``group_rows``; term_src, term_coef: (N,).
    """
    cdef Py_ssize_t n_bags = offsets.shape[0] - 1, n_ids = ids.shape[0], b, c, n_chunks
    cdef const real_t *w = &weights[0] if weights.shape[0] else NULL
    cdef real_t *coef = &term_coef[0] if term_coef.shape[0] else NULL
    if n_ids == 0:
        return
    bag_of_arr = np.empty(n_ids, np.int64)
    scale_arr = np.empty(n_bags if coef != NULL else 0, np.float32 if real_t is float else np.float64)
    cdef int64_t[::1] bag_of = bag_of_arr
    cdef real_t[::1] scale_view = scale_arr
    cdef real_t *scale = &scale_view[0] if coef != NULL else NULL
    n_chunks = max(1, min(n_ids // 4096, 8 * n_threads))
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _bag_of_positions(&ids[0], offsets[b], offsets[b + 1], b, w, mode, padding, &bag_of[0], scale)
        # Random reads, but independent: many are in flight at once.
        for c in prange(n_chunks, schedule='static', num_threads=n_threads):
            _terms_range(&order[0], &bag_of[0], w, scale, &term_src[0], coef,
                         (n_ids * c) // n_chunks, (n_ids * (c + 1)) // n_chunks)


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
    seg_ptr (U + 1,) from ``group_rows``; src (N,) the grad row of each term in segment order, or empty;
    coef (N,) each term's factor in segment order, or empty; argpos (R, D) or empty;
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


# ---- the gradient with respect to per-sample weights -----------------------------------------------------------
cdef void _bag_dots(const real_t *table, const index_t *ids, int64_t start, int64_t end, int64_t padding,
                    const real_t *grad, Py_ssize_t dim, real_t *dots) noexcept nogil:
    cdef int64_t k
    cdef Py_ssize_t j
    cdef const real_t *src
    cdef real_t acc
    for k in range(start, end):
        if ids[k] == padding:
            dots[k] = 0
            continue
        src = table + ids[k] * dim
        acc = 0
        for j in range(dim):
            acc = acc + grad[j] * src[j]
        dots[k] = acc


def position_dots(const real_t[:, ::1] table, const index_t[::1] ids, const int64_t[::1] offsets,
                  const real_t[:, ::1] grad, int64_t padding, real_t[::1] dots, int n_threads):
    """``dots[k] = grad[b] . table[ids[k]]`` for each position k of bag b (0 where ``ids[k] == padding``):
    the derivative of a sum bag's output, dotted with its gradient, with respect to the k-th weight.

    table: (V, D); ids: (N,) in ``[0, V)``; offsets: (B + 1,) from 0 to N; grad: (B, D); dots: (N,). Each
    dot is summed in column order: the same bits for any thread count.
    """
    cdef Py_ssize_t n_bags = offsets.shape[0] - 1, dim = table.shape[1], n_ids = ids.shape[0], b
    if n_ids == 0:
        return
    if dim == 0:
        dots[:] = 0
        return
    if n_threads <= 1 or n_ids * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            for b in range(n_bags):
                _bag_dots(&table[0, 0], &ids[0], offsets[b], offsets[b + 1], padding, &grad[b, 0], dim, &dots[0])
        return
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _bag_dots(&table[0, 0], &ids[0], offsets[b], offsets[b + 1], padding, &grad[b, 0], dim, &dots[0])
