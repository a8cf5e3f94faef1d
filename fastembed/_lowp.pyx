"""Lookup and bag kernels for low-precision tables: ``out[i, :] = float32(table[ids[i], :])``, and bags of such
rows pooled in float32.

Tables stored as float16, bfloat16, or 8-bit codes with a float32 (scale, bias) pair per row (FBGEMM's
row-wise convention) are read into a float32 output. As in the float gather, rows are prefetched about
1 KiB ahead. The ids are validated by the caller.
"""
from libc.math cimport sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.string cimport memcpy, memset
from cython.parallel cimport prange

from fastembed._openmp cimport PARALLEL_MIN_BYTES
from fastembed._lowp cimport (fe_bf16_row_axpy, fe_bf16_row_to_float, fe_float_to_bf16, fe_half_row_axpy,
                             fe_half_row_to_float, fe_u8_row_axpy, fe_u8_row_to_float)
from fastembed._memory cimport prefetch_distance, prefetch_row_keep, prefetch_row_read, worth_prefetching
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


# ---- pooled bags over low-precision tables ---------------------------------------------------------------------
cdef enum:
    # fastembed.bags' mode codes (the float kernels in _bag.pyx use the same ones)
    BAG_SUM = 0
    BAG_MEAN = 1
    BAG_SQRTN = 2
    BAG_MAX = 3
    # float32 columns converted per pass of max pooling over the staged rows of a bag
    BAG_BLOCK = 64


cdef inline void _add_row(int storage, const char *row, const float *scale_bias, float w, float *dst,
                          Py_ssize_t dim) noexcept nogil:
    """``dst[0:dim] += w * float32(row)``, through the converters' wide clones."""
    if storage == STORAGE_BF16:
        fe_bf16_row_axpy(<const uint16_t *>row, w, dst, dim)
    elif storage == STORAGE_F16:
        fe_half_row_axpy(<const uint16_t *>row, w, dst, dim)
    else:
        fe_u8_row_axpy(<const uint8_t *>row, scale_bias[0], scale_bias[1], w, dst, dim)


cdef inline void _pool_rows(int storage, const char *rows, const float *scale_bias, const float *weights,
                            Py_ssize_t n_rows, int mode, bint first_rows, Py_ssize_t dim, Py_ssize_t row_bytes,
                            Py_ssize_t itemsize, float *dst) noexcept nogil:
    """Pool ``n_rows`` raw rows (``rows``, one every ``row_bytes``) into ``dst`` (D,), in order: sums row by
    row, max BAG_BLOCK columns at a time; ``first_rows``: the bag's first rows (max starts from the first)."""
    cdef float converted[BAG_BLOCK]
    cdef Py_ssize_t r, j, j0 = 0, width
    if mode != BAG_MAX:
        # Whole rows, in order: dst already holds the sums of the bag's earlier rows.
        for r in range(n_rows):
            _add_row(storage, rows + r * row_bytes, scale_bias + 2 * r, weights[r], dst, dim)
        return
    while j0 < dim:
        width = min(<Py_ssize_t>BAG_BLOCK, dim - j0)
        for r in range(n_rows):
            _convert_row(storage, rows + r * row_bytes + j0 * itemsize, scale_bias + 2 * r, converted, width)
            if first_rows and r == 0:
                memcpy(dst + j0, converted, width * sizeof(float))
            else:
                for j in range(width):
                    dst[j0 + j] = converted[j] if converted[j] > dst[j0 + j] else dst[j0 + j]
        j0 += width


cdef void _pool_bag_lowp(int storage, const char *table, const float *scale_bias, const index_t *ids,
                         Py_ssize_t n_ids, int64_t start, int64_t end, const float *weights, int mode,
                         int64_t padding, Py_ssize_t dim, Py_ssize_t itemsize, bint prefetch,
                         float *dst) noexcept nogil:
    """``dst = pool(float32(table[ids[start:end]]))``, accumulated in float32 in position order.

    As in the gather, a lean pass copies a block of the bag's raw rows (and their scale and bias) into a stage
    that stays in L1, prefetching rows ahead, then the conversion and the sums run from the stage: converting
    straight from the table keeps too few cache misses in flight.
    """
    cdef char stage[STAGE_BYTES]
    cdef float stage_scale_bias[2 * MAX_STAGE_ROWS]
    cdef float stage_weights[MAX_STAGE_ROWS]
    cdef Py_ssize_t row_bytes = dim * itemsize, distance = prefetch_distance(dim * itemsize), m, j
    cdef Py_ssize_t block = min(<Py_ssize_t>(STAGE_BYTES // row_bytes), <Py_ssize_t>MAX_STAGE_ROWS)
    cdef int64_t k, k0 = start, k1, row, ahead
    cdef float w = 1, denom = 0
    cdef bint seen = False
    memset(dst, 0, dim * sizeof(float))
    if block == 0:      # rows wider than the stage: one row at a time, straight from the table
        block = 1
    while k0 < end:
        k1 = min(k0 + block, end)
        m = 0
        for k in range(k0, k1):
            if prefetch:
                ahead = k + distance
                if ahead < n_ids:
                    prefetch_row_keep(table + ids[ahead] * row_bytes, row_bytes)
                    if storage == STORAGE_U8:
                        prefetch_row_keep(scale_bias + 2 * <Py_ssize_t>ids[ahead], 2 * sizeof(float))
            row = ids[k]
            if row == padding:
                continue
            if weights != NULL:
                w = weights[k]
            denom += w if mode != BAG_SQRTN else w * w
            stage_weights[m] = w
            if row_bytes <= STAGE_BYTES:
                memcpy(stage + m * row_bytes, table + row * row_bytes, row_bytes)
            if storage == STORAGE_U8:
                stage_scale_bias[2 * m] = scale_bias[2 * row]
                stage_scale_bias[2 * m + 1] = scale_bias[2 * row + 1]
            m += 1
        if m:
            if row_bytes <= STAGE_BYTES:
                _pool_rows(storage, stage, stage_scale_bias, stage_weights, m, mode, not seen, dim, row_bytes,
                           itemsize, dst)
            else:
                _pool_rows(storage, table + row * row_bytes, stage_scale_bias, stage_weights, 1, mode, not seen,
                           dim, row_bytes, itemsize, dst)
            seen = True
        k0 = k1
    if mode == BAG_SUM or mode == BAG_MAX:
        return
    if denom == 0:
        memset(dst, 0, dim * sizeof(float))
        return
    # Divide, as the float bags do: the mean is then exactly rounded.
    if mode == BAG_SQRTN:
        denom = <float>sqrt(denom)
    for j in range(dim):
        dst[j] /= denom


def bag_forward_lowp(int storage, const uint8_t[:, ::1] raw, const float[:, ::1] scale_bias,
                     const index_t[::1] ids, const int64_t[::1] offsets, const float[::1] weights, int mode,
                     int64_t padding, float[:, ::1] out, int n_threads):
    """Pool each bag of a low-precision table into float32: ``out[b] = pool(float32(table[bag b]))``.

    storage: 0 float16, 1 bfloat16, 2 int8 row-wise; raw: the table's bytes, (V, D * itemsize) uint8;
    scale_bias: (V, 2) float32 for int8, else empty. ids, offsets, weights (float32 or empty), mode, padding:
    as in ``_bag.bag_forward`` (max mode without arg-max). out: (B, D) float32.
    """
    cdef Py_ssize_t n_bags = out.shape[0], dim = out.shape[1], n_ids = ids.shape[0], b
    cdef Py_ssize_t itemsize = raw.shape[1] // dim if dim else 1
    cdef const float *w = &weights[0] if weights.shape[0] else NULL
    cdef const float *sb = &scale_bias[0, 0] if scale_bias.shape[0] else NULL
    cdef const char *table
    cdef bint prefetch = worth_prefetching(raw.shape[0] * raw.shape[1])
    if n_bags == 0 or dim == 0:
        return
    if n_ids == 0:
        out[:, :] = 0
        return
    table = <const char *>&raw[0, 0]
    if n_threads <= 1 or n_ids * dim * sizeof(float) < PARALLEL_MIN_BYTES:
        with nogil:
            for b in range(n_bags):
                _pool_bag_lowp(storage, table, sb, &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding,
                               dim, itemsize, prefetch, &out[b, 0])
        return
    with nogil:
        for b in prange(n_bags, schedule='guided', num_threads=n_threads):
            _pool_bag_lowp(storage, table, sb, &ids[0], n_ids, offsets[b], offsets[b + 1], w, mode, padding,
                           dim, itemsize, prefetch, &out[b, 0])
