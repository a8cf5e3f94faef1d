"""Lookup kernels for low-precision tables: ``out[i, :] = float32(table[ids[i], :])``.

Tables stored as float16, bfloat16, or 8-bit codes with a float32 (scale, bias) pair per row (FBGEMM's
row-wise convention) are read into a float32 output. As in the float gather, rows are prefetched about
1 KiB ahead. The ids are validated by the caller.
"""
from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcpy
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._lowp cimport fe_bf16_row_to_float, fe_float_to_bf16, fe_half_row_to_float, fe_u8_row_to_float
from fastembed._memory cimport prefetch_distance, prefetch_row_read
from fastembed._types cimport index_t

cdef enum:
    STORAGE_F16 = 0
    STORAGE_BF16 = 1
    STORAGE_U8 = 2
    # Raw rows staged per block: small enough to stay in L1 until they are converted.
    STAGE_BYTES = 8192
    MAX_STAGE_ROWS = 256


cdef inline void _convert_row(int storage, const char *row, const float *scale_bias, float *out,
                              Py_ssize_t dim) noexcept nogil:
    """One row into float32; ``scale_bias`` points at the row's (scale, bias) pair for int8 rows."""
    if storage == STORAGE_F16:
        fe_half_row_to_float(<const uint16_t *>row, out, dim)
    elif storage == STORAGE_BF16:
        fe_bf16_row_to_float(<const uint16_t *>row, out, dim)
    else:
        fe_u8_row_to_float(<const uint8_t *>row, scale_bias[0], scale_bias[1], out, dim)


cdef void _gather_range(int storage, const char *table, const float *scale_bias, const index_t *ids,
                        float *out, Py_ssize_t dim, Py_ssize_t row_bytes,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    # Two passes per block: a lean loop that only copies raw rows (so that the core keeps many cache misses
    # in flight, as in the float gather), then the conversion from L1. Converting straight from the table
    # was measured 2-4x slower on large tables: the conversion's instructions fill the out-of-order window
    # and starve it of misses.
    cdef char stage[STAGE_BYTES]
    cdef float stage_scale_bias[2 * MAX_STAGE_ROWS]
    cdef Py_ssize_t i, ahead, first, last, distance = prefetch_distance(row_bytes)
    cdef Py_ssize_t block = min(<Py_ssize_t>(STAGE_BYTES // row_bytes), <Py_ssize_t>MAX_STAGE_ROWS)
    if block == 0:          # rows wider than the stage: convert straight from the table
        for i in range(start, end):
            _convert_row(storage, table + ids[i] * row_bytes, scale_bias + 2 * <Py_ssize_t>ids[i], out + i * dim,
                         dim)
        return
    first = start
    while first < end:
        last = min(first + block, end)
        for i in range(first, last):
            ahead = i + distance
            if ahead < end:
                prefetch_row_read(table + ids[ahead] * row_bytes, row_bytes)
                if storage == STORAGE_U8:
                    prefetch_row_read(scale_bias + 2 * <Py_ssize_t>ids[ahead], 2 * sizeof(float))
            memcpy(stage + (i - first) * row_bytes, table + ids[i] * row_bytes, row_bytes)
            if storage == STORAGE_U8:
                # 2 * ids[i] in Py_ssize_t: in int32 it overflows for ids from 2**30 on.
                stage_scale_bias[2 * (i - first)] = scale_bias[2 * <Py_ssize_t>ids[i]]
                stage_scale_bias[2 * (i - first) + 1] = scale_bias[2 * <Py_ssize_t>ids[i] + 1]
        for i in range(first, last):
            _convert_row(storage, stage + (i - first) * row_bytes, stage_scale_bias + 2 * (i - first),
                         out + i * dim, dim)
        first = last


cdef void _gather(int storage, const char *table, const float *scale_bias, const index_t *ids, float *out,
                  Py_ssize_t n, Py_ssize_t dim, Py_ssize_t itemsize, int n_threads) noexcept nogil:
    cdef Py_ssize_t c, n_chunks, row_bytes = dim * itemsize
    if n_threads <= 1 or n * dim * sizeof(float) < PARALLEL_MIN_BYTES:
        _gather_range(storage, table, scale_bias, ids, out, dim, row_bytes, 0, n)
        return
    n_chunks = n_threads
    for c in prange(n_chunks, schedule='static', num_threads=n_threads):
        _gather_range(storage, table, scale_bias, ids, out, dim, row_bytes,
                      (n * c) // n_chunks, (n * (c + 1)) // n_chunks)


def gather_rows_f16(const uint16_t[:, ::1] table, const index_t[::1] ids, float[:, ::1] out, int n_threads):
    """``out[i] = float32(table[ids[i]])`` for a float16 table given as its bits.

    table: (V, D) uint16 (IEEE binary16 bits); ids: (N,) int32/int64 in ``[0, V)``; out: (N, D) float32.
    """
    if ids.shape[0] == 0 or table.shape[1] == 0:
        return
    with nogil:
        _gather(STORAGE_F16, <const char *>&table[0, 0], NULL, &ids[0], &out[0, 0], ids.shape[0],
                table.shape[1], sizeof(uint16_t), n_threads)


def gather_rows_bf16(const uint16_t[:, ::1] table, const index_t[::1] ids, float[:, ::1] out, int n_threads):
    """``out[i] = float32(table[ids[i]])`` for a bfloat16 table given as its bits (exact: a bit shift).

    table: (V, D) uint16; ids: (N,) int32/int64 in ``[0, V)``; out: (N, D) float32.
    """
    if ids.shape[0] == 0 or table.shape[1] == 0:
        return
    with nogil:
        _gather(STORAGE_BF16, <const char *>&table[0, 0], NULL, &ids[0], &out[0, 0], ids.shape[0],
                table.shape[1], sizeof(uint16_t), n_threads)


def gather_rows_int8(const uint8_t[:, ::1] codes, const float[:, ::1] scale_bias, const index_t[::1] ids,
                     float[:, ::1] out, int n_threads):
    """``out[i, j] = codes[r, j] * scale_bias[r, 0] + scale_bias[r, 1]`` with ``r = ids[i]``.

    codes: (V, D) uint8; scale_bias: (V, 2) float32; ids: (N,) int32/int64 in ``[0, V)``; out: (N, D) float32.
    """
    if ids.shape[0] == 0 or codes.shape[1] == 0:
        return
    with nogil:
        _gather(STORAGE_U8, <const char *>&codes[0, 0], &scale_bias[0, 0], &ids[0], &out[0, 0], ids.shape[0],
                codes.shape[1], sizeof(uint8_t), n_threads)


def float_to_bf16(const float[::1] values, uint16_t[::1] bits, int n_threads):
    """``bits[k]`` = ``values[k]`` rounded to the nearest bfloat16, ties to even (NaN stays NaN).

    values: (N,) float32; bits: (N,) uint16.
    """
    cdef Py_ssize_t n = values.shape[0], k
    if n == 0:
        return
    if n_threads <= 1 or n * sizeof(float) < PARALLEL_MIN_BYTES:
        with nogil:
            for k in range(n):
                bits[k] = fe_float_to_bf16(values[k])
        return
    with nogil:
        for k in prange(n, schedule='static', num_threads=n_threads):
            bits[k] = fe_float_to_bf16(values[k])
