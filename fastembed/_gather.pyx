"""Forward kernel: ``out[i, :] = table[ids[i], :]``.

The ids are validated by the caller (``first_out_of_range``) before this runs; the loop trusts them.
Rows are read in random order, so the loop prefetches about 1 KiB of rows ahead to keep several cache misses in
flight per core. Short rows get fixed-size copies (a ``memcpy`` call per 12-byte row costs more than the
copy). Non-temporal stores for large outputs were measured slower than plain copies on the machines this
was tuned on, so the output goes through the cache.
"""
from libc.string cimport memcpy
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._memory cimport prefetch_distance, prefetch_row_read, worth_prefetching
from fastembed._types cimport index_t, real_t

cdef inline void _gather_fixed(const char *table, const index_t *ids, char *out, Py_ssize_t row_bytes,
                               Py_ssize_t start, Py_ssize_t end, bint prefetch) noexcept nogil:
    # Inlined once per common row size (see _gather_range): a constant size lets the compiler emit a few
    # register moves instead of a library call per row (a memcpy call per 12-byte row costs more than the copy).
    cdef Py_ssize_t i, ahead
    cdef Py_ssize_t distance = prefetch_distance(row_bytes)
    if not prefetch:
        for i in range(start, end):
            memcpy(out + i * row_bytes, table + ids[i] * row_bytes, row_bytes)
        return
    for i in range(start, end):
        ahead = i + distance
        if ahead < end:
            prefetch_row_read(table + ids[ahead] * row_bytes, row_bytes)
        memcpy(out + i * row_bytes, table + ids[i] * row_bytes, row_bytes)


cdef void _gather_range(const char *table, const index_t *ids, char *out, Py_ssize_t row_bytes,
                        Py_ssize_t start, Py_ssize_t end, bint prefetch) noexcept nogil:
    if row_bytes == 4:
        _gather_fixed(table, ids, out, 4, start, end, prefetch)
    elif row_bytes == 8:
        _gather_fixed(table, ids, out, 8, start, end, prefetch)
    elif row_bytes == 12:
        _gather_fixed(table, ids, out, 12, start, end, prefetch)
    elif row_bytes == 16:
        _gather_fixed(table, ids, out, 16, start, end, prefetch)
    elif row_bytes == 24:
        _gather_fixed(table, ids, out, 24, start, end, prefetch)
    elif row_bytes == 32:
        _gather_fixed(table, ids, out, 32, start, end, prefetch)
    elif row_bytes == 64:
        _gather_fixed(table, ids, out, 64, start, end, prefetch)
    elif row_bytes == 128:
        _gather_fixed(table, ids, out, 128, start, end, prefetch)
    elif row_bytes == 256:
        _gather_fixed(table, ids, out, 256, start, end, prefetch)
    else:
        _gather_fixed(table, ids, out, row_bytes, start, end, prefetch)


def gather_rows(const real_t[:, ::1] table, const index_t[::1] ids, real_t[:, ::1] out, int n_threads):
    """Copy ``table[ids[i]]`` into ``out[i]`` for every i.

    table: (V, D) float32/float64; ids: (N,) int32/int64, all in ``[0, V)``; out: (N, D), table's dtype.
    """
    cdef Py_ssize_t n = ids.shape[0], n_chunks, c
    cdef Py_ssize_t row_bytes = table.shape[1] * sizeof(real_t)
    cdef bint prefetch = worth_prefetching(table.shape[0] * row_bytes)
    if n == 0 or row_bytes == 0:
        return
    if n_threads <= 1 or n * row_bytes < PARALLEL_MIN_BYTES:
        with nogil:
            _gather_range(<const char *>&table[0, 0], &ids[0], <char *>&out[0, 0], row_bytes, 0, n, prefetch)
        return
    n_chunks = n_threads
    with nogil:
        for c in prange(n_chunks, schedule='static', num_threads=n_threads):
            _gather_range(<const char *>&table[0, 0], &ids[0], <char *>&out[0, 0], row_bytes,
                          (n * c) // n_chunks, (n * (c + 1)) // n_chunks, prefetch)


cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint64_t

cnp.import_array()

cdef enum:
    # Batches up to this many output bytes take the single-call fast path (one thread).
    FAST_PATH_MAX_BYTES = 1 << 16


cdef bint _usable_out(object out, int nd, cnp.npy_intp *dims, int type_num):
    """Whether ``out`` is an ndarray of exactly this shape and dtype that the kernel may write."""
    cdef cnp.ndarray arr
    cdef int k
    if type(out) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>out
    if (cnp.PyArray_NDIM(arr) != nd or cnp.PyArray_TYPE(arr) != type_num
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISWRITEABLE(arr)):
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(arr, k) != dims[k]:
            return False
    return True


def gather_small(object table, object ids, object out=None):
    """Fast path of ``fastembed.gather`` for small lookups on one thread, or None when it does not apply.

    Applies to a C-contiguous 2-D float32/float64 ndarray table, ids that are a Python int or a C-contiguous
    int32/int64 ndarray, all in range, at most 64 KiB of output, and ``out`` None or an exactly matching
    writeable C-contiguous array. Anything else (including an out-of-range id, whose precise error the
    general path raises) returns None, and nothing has been written. It exists because the general path's
    validation costs several microseconds, which dominates a lookup of a few rows.
    """
    cdef cnp.ndarray tab, idx
    cdef int table_type, ids_type, nd, k
    cdef Py_ssize_t n_rows, dim, row_bytes, n = 1, i
    cdef cnp.npy_intp dims[33]
    cdef int64_t scalar_id
    cdef const char *ids_data
    if type(table) is not cnp.ndarray:
        return None
    tab = <cnp.ndarray>table
    table_type = cnp.PyArray_TYPE(tab)
    if (cnp.PyArray_NDIM(tab) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(tab)
            or (table_type != cnp.NPY_FLOAT32 and table_type != cnp.NPY_FLOAT64)):
        return None
    n_rows = cnp.PyArray_DIM(tab, 0)
    dim = cnp.PyArray_DIM(tab, 1)
    row_bytes = dim * cnp.PyArray_ITEMSIZE(tab)
    if type(ids) is int:
        # Compared as Python ints first: an int beyond int64 must reach the general path, not overflow here.
        if not 0 <= ids < n_rows:
            return None
        scalar_id = ids
        dims[0] = dim
        if out is None:
            out = cnp.PyArray_EMPTY(1, dims, table_type, 0)
        elif not _usable_out(out, 1, dims, table_type):
            return None
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>out), <const char *>cnp.PyArray_DATA(tab) + scalar_id * row_bytes,
               row_bytes)
        return out
    if type(ids) is not cnp.ndarray:
        return None
    idx = <cnp.ndarray>ids
    ids_type = cnp.PyArray_TYPE(idx)
    nd = cnp.PyArray_NDIM(idx)
    if (not cnp.PyArray_IS_C_CONTIGUOUS(idx) or nd > 32
            or (ids_type != cnp.NPY_INT64 and ids_type != cnp.NPY_INT32)):
        return None
    for k in range(nd):
        dims[k] = cnp.PyArray_DIM(idx, k)
        n *= dims[k]
    if n * row_bytes > FAST_PATH_MAX_BYTES:
        return None
    dims[nd] = dim
    ids_data = <const char *>cnp.PyArray_DATA(idx)
    if ids_type == cnp.NPY_INT64:
        for i in range(n):
            if (<uint64_t>(<const int64_t *>ids_data)[i]) >= <uint64_t>n_rows:
                return None
    else:
        for i in range(n):
            if (<uint64_t>(<const int32_t *>ids_data)[i]) >= <uint64_t>n_rows:
                return None
    if out is None:
        out = cnp.PyArray_EMPTY(nd + 1, dims, table_type, 0)
    elif not _usable_out(out, nd + 1, dims, table_type):
        return None
    if n == 0 or row_bytes == 0:
        return out
    if ids_type == cnp.NPY_INT64:
        _gather_range(<const char *>cnp.PyArray_DATA(tab), <const int64_t *>ids_data,
                      <char *>cnp.PyArray_DATA(<cnp.ndarray>out), row_bytes, 0, n,
                      worth_prefetching(n_rows * row_bytes))
    else:
        _gather_range(<const char *>cnp.PyArray_DATA(tab), <const int32_t *>ids_data,
                      <char *>cnp.PyArray_DATA(<cnp.ndarray>out), row_bytes, 0, n,
                      worth_prefetching(n_rows * row_bytes))
    return out
