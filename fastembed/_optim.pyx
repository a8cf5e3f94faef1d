"""Fused sparse optimizer kernels: reduce each touched row's gradient and update that row in one pass.

The batch's ids are grouped by row beforehand (``_index.group_rows``). Each row is then owned by one thread,
which sums the row's gradient terms into a private buffer in increasing position order
(``_segment.reduce_segment``, the same sum the backward pass produces) and immediately applies the update to
the table row and its optimizer state. No gradient the size of the table, or of the batch's unique rows, is
ever stored; the result is the same bits for any number of threads. The caller validates everything.
"""
from libc.math cimport sqrt
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from fastembed._memory cimport fe_prefetch_row_write
from fastembed._openmp cimport omp_get_thread_num
from fastembed._segment cimport Segments, make_segments, reduce_segment
from fastembed._types cimport real_t

cdef enum:
    OPT_SGD = 0
    OPT_ADAGRAD = 1
    OPT_ROWWISE_ADAGRAD = 2
    OPT_SPARSE_ADAM = 3
    # Rows updated together: their gradients (UPDATE_BLOCK x D) stay in L1/L2 between the two phases.
    UPDATE_BLOCK = 32


cdef struct Hyper:
    int kind
    double lr, momentum, beta1, beta2, eps, weight_decay, step_size


cdef inline real_t _sum_of_squares(const real_t *g, Py_ssize_t dim) noexcept nogil:
    """Sum of ``g[j]^2`` over 8 interleaved partial sums: one serial chain would cost a full add latency
    per column, the partial sums vectorize. A fixed order, so the same bits on every run."""
    cdef real_t part[8]
    cdef Py_ssize_t j = 0, t
    for t in range(8):
        part[t] = 0
    while j + 8 <= dim:
        for t in range(8):
            part[t] += g[j + t] * g[j + t]
        j += 8
    while j < dim:
        part[0] += g[j] * g[j]
        j += 1
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]))


cdef void _update_row(const Hyper *h, real_t *w, real_t *s1, real_t *s2, real_t *g,
                      Py_ssize_t dim) noexcept nogil:
    """Apply one optimizer update to the row ``w`` from its summed gradient ``g`` (overwritten).

    The arithmetic follows ``torch.optim`` operation by operation, so float64 results agree to the last bits.
    """
    cdef Py_ssize_t j
    cdef real_t lr = <real_t>h.lr, eps = <real_t>h.eps, wd = <real_t>h.weight_decay
    cdef real_t mom, mult, one_minus_b1, one_minus_b2, neg_step, m_old, mu, v_old, vu
    if wd != 0:
        for j in range(dim):
            g[j] += wd * w[j]
    if h.kind == OPT_SGD:
        if s1 == NULL:
            for j in range(dim):
                w[j] -= lr * g[j]
        else:
            mom = <real_t>h.momentum
            for j in range(dim):
                s1[j] = mom * s1[j] + g[j]
                w[j] -= lr * s1[j]
    elif h.kind == OPT_ADAGRAD:
        for j in range(dim):
            s1[j] += g[j] * g[j]
            w[j] -= lr * (g[j] / (<real_t>sqrt(s1[j]) + eps))
    elif h.kind == OPT_ROWWISE_ADAGRAD:
        s1[0] += _sum_of_squares(g, dim) / <real_t>dim
        mult = lr / (<real_t>sqrt(s1[0]) + eps)
        for j in range(dim):
            w[j] -= mult * g[j]
    else:
        # torch's SparseAdam: m += (g - m) * (1 - b1); v += (g^2 - v) * (1 - b2); w -= step * m / (sqrt(v) + eps)
        one_minus_b1 = <real_t>(1.0 - h.beta1)
        one_minus_b2 = <real_t>(1.0 - h.beta2)
        neg_step = <real_t>(-h.step_size)
        for j in range(dim):
            m_old = s1[j]
            mu = (g[j] - m_old) * one_minus_b1
            s1[j] = m_old + mu
            v_old = s2[j]
            vu = (g[j] * g[j] - v_old) * one_minus_b2
            s2[j] = v_old + vu
            w[j] += neg_step * ((mu + m_old) / (<real_t>sqrt(vu + v_old) + eps))


cdef void _update_range(const Hyper *h, const Segments *seg, const real_t *grad, const real_t *coef,
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
            fe_prefetch_row_write(table + r * dim, dim * sizeof(real_t))
            if s1 != NULL:
                fe_prefetch_row_write(s1 + r * state_width, state_width * sizeof(real_t))
            if s2 != NULL:
                fe_prefetch_row_write(s2 + r * state_width, state_width * sizeof(real_t))
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
    cdef Hyper h
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
