# Sums of table rows, the inner loop of the bag forward pass, compiled for AVX-512, AVX2 and the baseline
# instruction set, one picked when the module loads (GCC/clang ``target_clones`` on x86-64 Linux).
#
# The portable build targets SSE2 only, where a 64-float accumulator needs 16 registers and a row 16 adds;
# with AVX-512 it is 4 registers and 4 adds (measured: the sum forward of 16,384 bags of 20 rows of a
# 1M x 64 float32 table 1.25x faster than the same loop built for SSE2). Only additions, no multiplications:
# every version adds the same numbers in the same order, so the bits do not depend on the CPU.
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
    #if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
    #if __has_attribute(target_clones)
    #define FE_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #endif
    #endif
    #ifndef FE_ISA_CLONES
    #define FE_ISA_CLONES
    #endif
    #if defined(__GNUC__) || defined(__clang__)
    #define FE_ROW_SUM_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define FE_ROW_SUM_PREFETCH(p) ((void)0)
    #endif

    /* Prefetch, into every cache level, the row of id (its lines are read a few rows later). */
    #define FE_ROW_SUM_PREFETCH_ROW(TABLE, ID)                                                                 \\
        do {                                                                                                   \\
            const char *row_ = (const char *)((TABLE) + (int64_t)(ID) * dim);                                  \\
            int64_t b_;                                                                                        \\
            for (b_ = 0; b_ < row_bytes; b_ += 64) FE_ROW_SUM_PREFETCH(row_ + b_);                             \\
        } while (0)

    /* acc[0:WIDTH] += table[ids[k], j0:j0 + WIDTH] unless ids[k] is the padding id. */
    #define FE_ROW_SUM_ADD(WIDTH)                                                                              \\
        do {                                                                                                   \\
            int64_t row_ = (int64_t)ids[k];                                                                    \\
            if (row_ != padding) {                                                                             \\
                const REAL_ *src_ = table + row_ * dim + j0;                                                   \\
                for (j = 0; j < (WIDTH); j++) acc[j] += src_[j];                                               \\
            }                                                                                                  \\
        } while (0)

    /* The rows of positions start..end-1 summed over columns j0..j0+WIDTH-1 into acc; the positions before
       prefetch_end prefetch the row prefetch_ahead positions on. */
    #define FE_ROW_SUM_PASS(WIDTH)                                                                             \\
        do {                                                                                                   \\
            for (j = 0; j < (WIDTH); j++) acc[j] = 0;                                                          \\
            for (k = start; k < prefetch_end; k++) {                                                           \\
                FE_ROW_SUM_PREFETCH_ROW(table, ids[k + prefetch_ahead]);                                       \\
                FE_ROW_SUM_ADD(WIDTH);                                                                         \\
            }                                                                                                  \\
            for (; k < end; k++) FE_ROW_SUM_ADD(WIDTH);                                                        \\
        } while (0)

    /* dst[0:dim] = the sum of the rows table[ids[k]] for k in [start, end) with ids[k] != padding; returns
       how many rows were summed. Columns go one 256-byte block at a time, accumulated in registers over the
       whole bag (its rows stay in L1 between blocks); a narrower last block is accumulated the same way.
       With prefetch_ahead > 0 the first pass prefetches the row prefetch_ahead positions on (below n_ids),
       crossing into the next bags. */
    #define FE_DEFINE_ROW_SUM(NAME, REAL, INDEX)                                                               \\
    FE_ISA_CLONES static int64_t NAME(const REAL *table, const INDEX *ids, int64_t start, int64_t end,          \\
                                      int64_t n_ids, int64_t padding, int64_t dim, int64_t prefetch_ahead,     \\
                                      REAL *dst) {                                                             \\
        typedef REAL REAL_;                                                                                    \\
        enum { BLOCK = 256 / sizeof(REAL) };                                                                   \\
        REAL acc[BLOCK];                                                                                       \\
        int64_t k, j, j0, count = 0, row_bytes = dim * (int64_t)sizeof(REAL);                                  \\
        int64_t prefetch_end = prefetch_ahead > 0 && n_ids - prefetch_ahead > start ? n_ids - prefetch_ahead   \\
                                                                                    : start;                   \\
        if (prefetch_end > end) prefetch_end = end;                                                            \\
        for (j0 = 0; j0 + BLOCK <= dim; j0 += BLOCK) {                                                         \\
            FE_ROW_SUM_PASS(BLOCK);                                                                            \\
            for (j = 0; j < BLOCK; j++) dst[j0 + j] = acc[j];                                                  \\
            prefetch_end = start;                                                                              \\
        }                                                                                                      \\
        if (j0 < dim) {                                                                                        \\
            FE_ROW_SUM_PASS(dim - j0);                                                                         \\
            for (j = 0; j < dim - j0; j++) dst[j0 + j] = acc[j];                                               \\
        }                                                                                                      \\
        if (padding < 0) return end - start;                                                                   \\
        for (k = start; k < end; k++) count += (int64_t)ids[k] != padding;                                     \\
        return count;                                                                                          \\
    }
    FE_DEFINE_ROW_SUM(fe_row_sum_f32_i32, float, int32_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f32_i64, float, int64_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f64_i32, double, int32_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f64_i64, double, int64_t)
    """
    int64_t fe_row_sum_f32_i32(const float *table, const int32_t *ids, int64_t start, int64_t end, int64_t n_ids,
                               int64_t padding, int64_t dim, int64_t prefetch_ahead, float *dst) noexcept nogil
    int64_t fe_row_sum_f32_i64(const float *table, const int64_t *ids, int64_t start, int64_t end, int64_t n_ids,
                               int64_t padding, int64_t dim, int64_t prefetch_ahead, float *dst) noexcept nogil
    int64_t fe_row_sum_f64_i32(const double *table, const int32_t *ids, int64_t start, int64_t end,
                               int64_t n_ids, int64_t padding, int64_t dim, int64_t prefetch_ahead,
                               double *dst) noexcept nogil
    int64_t fe_row_sum_f64_i64(const double *table, const int64_t *ids, int64_t start, int64_t end,
                               int64_t n_ids, int64_t padding, int64_t dim, int64_t prefetch_ahead,
                               double *dst) noexcept nogil
