"""Fused sparse optimizer kernels: reduce each touched row's gradient and update that row in one pass.

The batch's ids are grouped by row beforehand (``_index.group_rows``). Each row is then owned by one thread,
which sums the row's gradient terms into a private buffer in increasing position order
(``_segment.reduce_segment``, the same sum the backward pass produces) and immediately applies the update to
the table row and its optimizer state. No gradient the size of the table, or of the batch's unique rows, is
ever stored; the result is the same bits for any number of threads. The caller validates everything.
"""
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from fastembed._memory cimport prefetch_row_keep_write
from fastembed._openmp cimport omp_get_thread_num
from fastembed._segment cimport Segments, make_segments, reduce_segment
from fastembed._simd cimport fe_hyper, fe_update_row_f32, fe_update_row_f64
from fastembed._types cimport real_t

cdef enum:
    OPT_SGD = 0
    OPT_ADAGRAD = 1
    OPT_ROWWISE_ADAGRAD = 2
    OPT_SPARSE_ADAM = 3
    # Rows updated together: their gradients (UPDATE_BLOCK x D) stay in L1/L2 between the two phases.
    UPDATE_BLOCK = 32


cdef inline void _update_row(const fe_hyper *h, real_t *w, real_t *s1, real_t *s2, real_t *g,
                             Py_ssize_t dim) noexcept nogil:
    """Apply one optimizer update to the row ``w`` from its summed gradient ``g`` (overwritten); the loops
    are in ``_simd``, built for the CPU's vector width."""
    if real_t is float:
        fe_update_row_f32(h, w, s1, s2, g, dim)
    else:
        fe_update_row_f64(h, w, s1, s2, g, dim)


cdef void _update_range(const fe_hyper *h, const Segments *seg, const real_t *grad, const real_t *coef,
                        const int64_t *rows, real_t *table, real_t *s1, real_t *s2, Py_ssize_t state_width,
                        Py_ssize_t skip, Py_ssize_t s_start, Py_ssize_t s_end, real_t *buf) noexcept nogil:
    # Rows are done a block at a time: first the gradients of the block's rows are reduced into ``buf``
    # (random reads of the output gradient, prefetched by reduce_segment), while the rows to update and their
    # state are prefetched; then the block's rows are updated, their lines already in cache.
    cdef Py_ssize_t s, block_start = s_start, block_end, dim = seg.dim
    cdef int64_t r
    while block_start < s_end:
        block_end = min(block_start + UPDATE_BLOCK, s_end)
        for s in range(block_start, block_end):
            r = rows[s]
            prefetch_row_keep_write(table + r * dim, dim * sizeof(real_t))
            if s1 != NULL:
                prefetch_row_keep_write(s1 + r * state_width, state_width * sizeof(real_t))
            if s2 != NULL:
                prefetch_row_keep_write(s2 + r * state_width, state_width * sizeof(real_t))
            if s != skip:
                reduce_segment(seg, grad, coef, s, buf + (s - block_start) * dim)
        for s in range(block_start, block_end):
            if s == skip:
                continue
            r = rows[s]
            _update_row(h, table + r * dim, s1 + r * state_width if s1 != NULL else NULL,
                        s2 + r * state_width if s2 != NULL else NULL, buf + (s - block_start) * dim, dim)
        block_start = block_end


BLOCK_ROWS = UPDATE_BLOCK


def fused_update(int kind, real_t[:, ::1] table, real_t[::1] state1, real_t[::1] state2,
                 const int64_t[::1] rows, const real_t[:, ::1] grad, const int64_t[::1] order,
                 const int64_t[::1] seg_ptr, const int64_t[::1] src, const real_t[::1] coef,
                 const int64_t[:, ::1] argpos, bint by_freq, Py_ssize_t skip, double lr, double momentum,
                 double beta1, double beta2, double eps, double weight_decay, double step_size,
                 real_t[:, ::1] scratch, int n_threads):
    """Update ``table[rows[s]]`` (and its state) from the gradient of segment ``s``, for every s but ``skip``.

    kind: 0 SGD, 1 Adagrad, 2 row-wise Adagrad, 3 SparseAdam. table: (V, D), written in place. state1,
    state2: the flattened state, (V * D,) or (V,) for row-wise Adagrad, or empty when the method has none.
    rows: (U,) the row of each segment. grad, order, seg_ptr, src, coef, argpos, by_freq: as in
    ``_bag.segment_reduce``. step_size: SparseAdam's ``lr * sqrt(1 - b2^t) / (1 - b1^t)``.
    scratch: (n_threads, BLOCK_ROWS * D), one gradient buffer per thread.
    """
    cdef Py_ssize_t n_seg = seg_ptr.shape[0] - 1, dim = table.shape[1], n_chunks, c, width
    cdef Segments seg
    cdef fe_hyper h
    cdef const real_t *co = &coef[0] if coef.shape[0] else NULL
    cdef real_t *s1 = &state1[0] if state1.shape[0] else NULL
    cdef real_t *s2 = &state2[0] if state2.shape[0] else NULL
    if n_seg == 0 or dim == 0:
        return
    width = 1 if kind == OPT_ROWWISE_ADAGRAD else dim
    h.kind, h.lr, h.momentum, h.beta1, h.beta2 = kind, lr, momentum, beta1, beta2
    h.eps, h.weight_decay, h.step_size = eps, weight_decay, step_size
    seg = make_segments(order, seg_ptr, src, argpos, dim, by_freq)
    if n_threads <= 1:
        with nogil:
            _update_range(&h, &seg, &grad[0, 0], co, &rows[0], &table[0, 0], s1, s2, width, skip, 0, n_seg,
                          &scratch[0, 0])
        return
    n_chunks = min(n_seg, 16 * n_threads)
    with nogil:
        for c in prange(n_chunks, schedule='dynamic', num_threads=n_threads):
            _update_range(&h, &seg, &grad[0, 0], co, &rows[0], &table[0, 0], s1, s2, width, skip,
                          (n_seg * c) // n_chunks, (n_seg * (c + 1)) // n_chunks,
                          &scratch[omp_get_thread_num(), 0])
