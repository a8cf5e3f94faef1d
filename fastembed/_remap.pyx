"""Kernels for the ``out_of_range=`` policies: a gather that maps out-of-range ids as it reads, and a remapped
copy of the ids for the backward pass.

They run only after ``first_out_of_range`` found an id outside ``[0, n_rows)`` and the policy is not "raise":
the all-valid case stays on the plain kernels and copies nothing. Each id is mapped on its own by integer logic,
so the result is the same for any thread count and on every platform.
"""
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._memory cimport prefetch_distance, prefetch_row_read
from fastembed._types cimport index_t, real_t

cdef enum:
    POLICY_CLIP = 1
    POLICY_ZERO = 2
    POLICY_ROW = 3

# The policy codes, for ``fastembed._out_of_range``.
CLIP = POLICY_CLIP
ZERO = POLICY_ZERO
ROW = POLICY_ROW


cdef inline int64_t _mapped(int64_t id, int64_t n_rows, int policy, int64_t row) noexcept nogil:
    # A valid id reads itself; otherwise the policy's row, or n_rows (one past the table) for "no row".
    if <uint64_t>id < <uint64_t>n_rows:
        return id
    if policy == POLICY_CLIP:
        return 0 if id < 0 else n_rows - 1
    if policy == POLICY_ROW:
        return row
    return n_rows


cdef void _gather_mapped_range(const real_t *table, const index_t *ids, real_t *out, Py_ssize_t dim,
                               int64_t n_rows, int policy, int64_t row,
                               Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i, ahead
    cdef int64_t src
    cdef Py_ssize_t row_bytes = dim * sizeof(real_t), distance = prefetch_distance(row_bytes)
    for i in range(start, end):
        ahead = i + distance
        if ahead < end:
            src = _mapped(ids[ahead], n_rows, policy, row)
            if src < n_rows:
                prefetch_row_read(table + src * dim, row_bytes)
        src = _mapped(ids[i], n_rows, policy, row)
        if src < n_rows:
            memcpy(out + i * dim, table + src * dim, row_bytes)
        else:
            memset(out + i * dim, 0, row_bytes)


def gather_rows_mapped(const real_t[:, ::1] table, const index_t[::1] ids, real_t[:, ::1] out, int policy,
                       int64_t row, int n_threads):
    """``out[i] = table[map(ids[i])]``, a zero row where the policy maps an id to no row.

    table: (V, D) float32/float64 (V may be 0 under "zero"); ids: (N,) int32/int64, any values; out: (N, D),
    table's dtype. policy: ``CLIP``, ``ZERO`` or ``ROW``; row: the row ``ROW`` reads, in ``[0, V)``.
    """
    cdef Py_ssize_t n = ids.shape[0], dim = table.shape[1], c
    cdef int64_t n_rows = table.shape[0]
    # A table without rows has no element to point at; under "zero" nothing is read from it.
    cdef const real_t *base = &table[0, 0] if n_rows > 0 else NULL
    if n == 0 or dim == 0:
        return
    if n_threads <= 1 or n * dim * sizeof(real_t) < PARALLEL_MIN_BYTES:
        with nogil:
            _gather_mapped_range(base, &ids[0], &out[0, 0], dim, n_rows, policy, row, 0, n)
        return
    with nogil:
        for c in prange(n_threads, schedule='static', num_threads=n_threads):
            _gather_mapped_range(base, &ids[0], &out[0, 0], dim, n_rows, policy, row,
                                 (n * c) // n_threads, (n * (c + 1)) // n_threads)


cdef void _remap_range(const index_t *ids, index_t *out, int64_t n_rows, int policy, int64_t row,
                       Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        out[i] = <index_t>_mapped(ids[i], n_rows, policy, row)


def remap_ids(const index_t[::1] ids, int64_t n_rows, int policy, int64_t row, index_t[::1] out, int n_threads):
    """``out[i]``: the row ``ids[i]`` reads under the policy, ``n_rows`` where it reads none ("zero").

    ids, out: (N,) of one dtype, which the caller makes wide enough to hold ``n_rows``.
    """
    cdef Py_ssize_t n = ids.shape[0], c
    if n == 0:
        return
    if n_threads <= 1 or n * sizeof(index_t) < PARALLEL_MIN_BYTES:
        with nogil:
            _remap_range(&ids[0], &out[0], n_rows, policy, row, 0, n)
        return
    with nogil:
        for c in prange(n_threads, schedule='static', num_threads=n_threads):
            _remap_range(&ids[0], &out[0], n_rows, policy, row, (n * c) // n_threads, (n * (c + 1)) // n_threads)
