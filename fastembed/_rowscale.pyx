"""Per-row rescaling kernels: the max_norm rule (in place on a table, on gathered output, and its exact
gradient) and the division of summed gradients by their id counts (``scale_grad_by_freq``).

Every kernel works on whole rows, one thread per row, with a fixed order inside a row: the bits are the
same for any thread count.
"""
from libc.math cimport fabs, pow
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._memory cimport prefetch_distance, prefetch_row_read
from fastembed._rowscale cimport (NORM_INF, NORM_L1, NORM_L2, norm_kind, renorm_scale, row_norm,
                                  scale_row)
from fastembed._types cimport real_t

cdef enum:
    OP_RENORM = 0
    OP_CLIP = 1
    OP_CLIP_BACKWARD = 2
    OP_DIVIDE = 3


cdef void _renorm_range(real_t *table, const int64_t *rows, Py_ssize_t dim, double max_norm, int kind,
                        double p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t u, ahead, row_bytes = dim * sizeof(real_t), distance = prefetch_distance(dim * sizeof(real_t))
    cdef real_t *row
    cdef double norm
    for u in range(start, end):
        ahead = u + distance
        if ahead < end:
            prefetch_row_read(table + rows[ahead] * dim, row_bytes)
        row = table + rows[u] * dim
        norm = row_norm(row, dim, kind, p)
        if norm > max_norm:
            scale_row(row, dim, renorm_scale(norm, max_norm))


cdef void _clip_range(real_t *out, Py_ssize_t dim, double max_norm, int kind, double p,
                      Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    cdef double norm
    for i in range(start, end):
        norm = row_norm(out + i * dim, dim, kind, p)
        if norm > max_norm:
            scale_row(out + i * dim, dim, renorm_scale(norm, max_norm))


cdef inline double _norm_partial(double x, double norm, int kind, double p) noexcept nogil:
    """d norm / d x for one entry x of a row of norm ``norm`` (not for the inf norm)."""
    cdef double sign = 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)
    if kind == NORM_L2:
        return x / norm
    if kind == NORM_L1:
        return sign
    if x == 0.0:
        return 0.0
    return sign * pow(fabs(x) / norm, p - 1.0)


cdef void _clip_backward_range(const real_t *table, const int64_t *rows, real_t *values, Py_ssize_t dim,
                               double max_norm, int kind, double p, Py_ssize_t start,
                               Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t u, j, arg_max, ahead
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(dim * sizeof(real_t))
    cdef const real_t *x
    cdef real_t *g
    cdef double norm, scale, dot, coupling
    for u in range(start, end):
        ahead = u + distance
        if ahead < end:
            prefetch_row_read(table + rows[ahead] * dim, row_bytes)
        x = table + rows[u] * dim
        g = values + u * dim
        norm = row_norm(x, dim, kind, p)
        if not norm > max_norm:
            continue          # the row passes through unclipped: its gradient is the identity
        # y = x * s(x) with s = max_norm / (norm + 1e-7), so
        # dL/dx = s g - max_norm / (norm + 1e-7)**2 * (g . x) * d norm / dx.
        scale = max_norm / (norm + 1e-7)
        dot = 0.0
        for j in range(dim):
            dot += <double>g[j] * <double>x[j]
        coupling = scale / (norm + 1e-7) * dot
        if kind == NORM_INF:
            arg_max = 0
            for j in range(dim):
                if fabs(<double>x[j]) == norm:
                    arg_max = j
                    break
            for j in range(dim):
                g[j] = <real_t>(scale * <double>g[j])
            g[arg_max] = <real_t>(<double>g[arg_max] - coupling * (1.0 if x[arg_max] > 0 else -1.0))
        else:
            for j in range(dim):
                g[j] = <real_t>(scale * <double>g[j] - coupling * _norm_partial(<double>x[j], norm, kind, p))


cdef void _divide_range(real_t *values, const int64_t *seg_ptr, Py_ssize_t dim, Py_ssize_t start,
                        Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t s, j
    cdef real_t count
    for s in range(start, end):
        count = <real_t>(seg_ptr[s + 1] - seg_ptr[s])
        for j in range(dim):
            values[s * dim + j] = values[s * dim + j] / count


cdef void _range(int op, real_t *target, const real_t *table, const int64_t *index, Py_ssize_t dim,
                 double max_norm, int kind, double p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    if op == OP_RENORM:
        _renorm_range(target, index, dim, max_norm, kind, p, start, end)
    elif op == OP_CLIP:
        _clip_range(target, dim, max_norm, kind, p, start, end)
    elif op == OP_CLIP_BACKWARD:
        _clip_backward_range(table, index, target, dim, max_norm, kind, p, start, end)
    else:
        _divide_range(target, index, dim, start, end)


cdef void _run(int op, real_t *target, const real_t *table, const int64_t *index, Py_ssize_t n,
               Py_ssize_t dim, double max_norm, double p, int n_threads) noexcept nogil:
    """Apply ``op`` to rows ``[0, n)``: serially for small work, else in one contiguous chunk per thread."""
    cdef int kind = norm_kind(p)
    cdef Py_ssize_t c
    if n == 0 or dim == 0:
        return
    if n_threads <= 1 or n * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        _range(op, target, table, index, dim, max_norm, kind, p, 0, n)
        return
    for c in prange(n_threads, schedule='static', num_threads=n_threads):
        _range(op, target, table, index, dim, max_norm, kind, p, (n * c) // n_threads, (n * (c + 1)) // n_threads)


def renorm_rows(real_t[:, ::1] table, const int64_t[::1] rows, double max_norm, double p, int n_threads):
    """In place: ``table[r] *= max_norm / (norm + 1e-7)`` for each r in ``rows`` whose p-norm exceeds max_norm.

    table: (V, D) float32/float64; rows: (U,) int64, unique and in ``[0, V)`` (a repeated row would be
    rescaled by two threads at once); max_norm > 0; p > 0 or inf.
    """
    if rows.shape[0] and table.shape[1]:
        with nogil:
            _run(OP_RENORM, &table[0, 0], &table[0, 0], &rows[0], rows.shape[0], table.shape[1], max_norm, p,
                 n_threads)


def clip_rows(real_t[:, ::1] out, double max_norm, double p, int n_threads):
    """In place on gathered rows: each row of ``out`` (N, D) rescaled exactly as ``renorm_rows`` would
    rescale the table row it was copied from."""
    if out.shape[0] and out.shape[1]:
        with nogil:
            _run(OP_CLIP, &out[0, 0], &out[0, 0], NULL, out.shape[0], out.shape[1], max_norm, p, n_threads)


def clip_rows_backward(const real_t[:, ::1] table, const int64_t[::1] rows, real_t[:, ::1] values,
                       double max_norm, double p, int n_threads):
    """In place: turn ``values[u]``, the summed gradient of the clipped output rows of ``table[rows[u]]``,
    into the gradient of the table row itself (the exact derivative of the clip, not straight-through).

    table: (V, D); rows: (U,) int64 in ``[0, V)``; values: (U, D), table's dtype. At the inf norm the
    derivative goes to the first entry of largest magnitude.
    """
    if rows.shape[0] and table.shape[1]:
        with nogil:
            _run(OP_CLIP_BACKWARD, &values[0, 0], &table[0, 0], &rows[0], rows.shape[0], table.shape[1],
                 max_norm, p, n_threads)


def divide_by_counts(real_t[:, ::1] values, const int64_t[::1] seg_ptr, int n_threads):
    """In place: ``values[s] /= seg_ptr[s + 1] - seg_ptr[s]`` (one correctly rounded division per entry).

    values: (U, D); seg_ptr: (U + 1,) int64, the segment boundaries from ``group_rows``.
    """
    if values.shape[0] and values.shape[1]:
        with nogil:
            _run(OP_DIVIDE, &values[0, 0], &values[0, 0], &seg_ptr[0], values.shape[0], values.shape[1], 0.0,
                 2.0, n_threads)
