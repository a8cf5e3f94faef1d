"""Forward kernel: ``out[i, :] = table[ids[i], :]``.

The ids are validated by the caller (``first_out_of_range``) before this runs; the loop trusts them.
Rows are fetched in random order, so the loop prefetches the row ``PREFETCH_DISTANCE`` ids ahead to keep
several cache misses in flight per core.
"""
from libc.string cimport memcpy
from cython.parallel cimport prange

from fastembed._memory cimport FE_PREFETCH_READ
from fastembed._types cimport index_t, real_t

cdef enum:
    PREFETCH_DISTANCE = 12
    CACHE_LINE = 64
    # Rows up to this many bytes are copied element by element (a memcpy call per short row costs more).
    SMALL_ROW_BYTES = 64
    # Below this many output bytes one thread is faster than starting a team.
    PARALLEL_MIN_BYTES = 1 << 16


cdef inline void _prefetch_row(const char *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_READ(row + b)
        b += CACHE_LINE


cdef void _gather_range(const real_t *table, const index_t *ids, real_t *out, Py_ssize_t dim,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i, j, ahead
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t)
    cdef const real_t *src
    cdef real_t *dst
    for i in range(start, end):
        ahead = i + PREFETCH_DISTANCE
        if ahead < end:
            _prefetch_row(<const char *>(table + ids[ahead] * dim), row_bytes)
        src = table + ids[i] * dim
        dst = out + i * dim
        if row_bytes <= SMALL_ROW_BYTES:
            for j in range(dim):
                dst[j] = src[j]
        else:
            memcpy(dst, src, row_bytes)


def gather_rows(const real_t[:, ::1] table, const index_t[::1] ids, real_t[:, ::1] out, int n_threads):
    """Copy ``table[ids[i]]`` into ``out[i]`` for every i.

    table: (V, D) float32/float64; ids: (N,) int32/int64, all in ``[0, V)``; out: (N, D), table's dtype.
    """
    cdef Py_ssize_t n = ids.shape[0], dim = table.shape[1], n_chunks, c
    if n == 0 or dim == 0:
        return
    if n_threads <= 1 or n * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            _gather_range(&table[0, 0], &ids[0], &out[0, 0], dim, 0, n)
        return
    n_chunks = n_threads
    with nogil:
        for c in prange(n_chunks, schedule='static', num_threads=n_threads):
            _gather_range(&table[0, 0], &ids[0], &out[0, 0], dim, (n * c) // n_chunks, (n * (c + 1)) // n_chunks)
