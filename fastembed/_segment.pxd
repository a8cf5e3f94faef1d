# Summing the gradient of one table row from the positions that looked it up.
#
# Shared by the bag backward (``_bag.segment_reduce``) and the fused optimizers (``_optim.fused_update``), so
# that a fused step adds exactly the same terms in exactly the same order as backward followed by step: the
# positions of one row, grouped by ``_index.group_rows``, in increasing position order. One thread owns a
# whole row, hence the same bits for any number of threads.
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastembed._memory cimport prefetch_row_keep
from fastembed._simd cimport fe_term_sum_f32, fe_term_sum_f64
from fastembed._types cimport real_t

cdef enum:
    SEGMENT_PREFETCH = 16


cdef struct Segments:
    # Every per-term array is in segment order (term k is the k-th position after sorting by id), so the
    # reduction reads them sequentially; only the gradient rows they point to are random.
    const int64_t *order     # (N,) the position of each term in the batch
    const int64_t *seg_ptr   # (U + 1,): the terms of segment s are seg_ptr[s]:seg_ptr[s + 1]
    const int64_t *src       # (N,) the grad row of each term (its bag); NULL: the term's position
    const int64_t *argpos    # (R, D) the position that won each (bag, column) of a max; NULL: all count
    Py_ssize_t n_ids
    Py_ssize_t dim
    bint by_freq             # divide each row's sum by its number of terms


cdef inline Segments make_segments(const int64_t[::1] order, const int64_t[::1] seg_ptr, const int64_t[::1] src,
                                   const int64_t[:, ::1] argpos, Py_ssize_t dim, bint by_freq) noexcept:
    """Segments over the given arrays; an empty ``src`` or ``argpos`` means "absent"."""
    cdef Segments seg
    seg.order = &order[0] if order.shape[0] else NULL
    seg.seg_ptr = &seg_ptr[0]
    seg.src = &src[0] if src.shape[0] else NULL
    seg.argpos = &argpos[0, 0] if argpos.shape[0] and argpos.shape[1] else NULL
    seg.n_ids = order.shape[0]
    seg.dim = dim
    seg.by_freq = by_freq
    return seg


cdef inline void reduce_segment(const Segments *seg, const real_t *grad, const real_t *coef, Py_ssize_t s,
                                real_t *dst) noexcept nogil:
    """``dst = sum_k c_k * grad[src[k]]`` over the terms k of segment ``s``, in increasing order.

    ``c_k = coef[k]`` (1 when ``coef`` is NULL); with ``argpos`` a column only counts where the term's
    position is that bag's arg-max. With ``by_freq`` the sum is then divided by the segment's length (one
    rounded division per entry, as ``sparse_grad`` does, so that both give the same bits).
    """
    cdef int64_t k, row, ahead, start = seg.seg_ptr[s], end = seg.seg_ptr[s + 1]
    cdef Py_ssize_t j, dim = seg.dim
    cdef real_t c, count
    cdef const real_t *g
    cdef const int64_t *won
    cdef const int64_t *rows = seg.src if seg.src != NULL else seg.order
    if seg.argpos == NULL:
        # Every column counts: the kernel built for the CPU's vector width (``_simd``).
        if real_t is float:
            fe_term_sum_f32(grad, rows, coef, start, end, seg.n_ids, SEGMENT_PREFETCH, dim, dst)
        else:
            fe_term_sum_f64(grad, rows, coef, start, end, seg.n_ids, SEGMENT_PREFETCH, dim, dst)
    else:
        memset(dst, 0, dim * sizeof(real_t))
        for k in range(start, end):
            ahead = k + SEGMENT_PREFETCH
            if ahead < seg.n_ids:
                prefetch_row_keep(grad + rows[ahead] * dim, dim * sizeof(real_t))
            row = rows[k]
            c = 1 if coef == NULL else coef[k]
            g = grad + row * dim
            won = seg.argpos + row * dim
            for j in range(dim):
                if won[j] == seg.order[k]:
                    dst[j] += c * g[j]
    if seg.by_freq and end > start:
        count = <real_t>(end - start)
        for j in range(dim):
            dst[j] /= count
