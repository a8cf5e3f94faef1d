# The innermost row loops (the bag forward's row sum, the backward's weighted sum of gradient rows, the
# optimizers' row update), compiled for AVX-512, AVX2 and the baseline instruction set, one picked when the
# module loads (GCC/clang ``target_clones``, an ifunc, on x86-64 glibc Linux; elsewhere the baseline only).
#
# The portable build targets SSE2 only, where a 64-float accumulator needs 16 registers and a row 16 adds;
# with AVX-512 it is 4 registers and 4 adds (measured: the sum forward of 16,384 bags of 20 rows of a
# 1M x 64 float32 table 1.1-1.25x faster than the same loop built for SSE2; it is bound by memory). FMA
# contraction is off in every version and the loops are element-wise: every version rounds the same
# operations in the same order, so the bits do not depend on the CPU.
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
    /* GCC's avx512f target brings FMA, whose single rounding of a*b+c would change the bits: contraction
       is turned off in every clone (GCC: an attribute; clang: a pragma at the top of each body). */
    #if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__has_attribute)
    #if __has_attribute(target_clones)
    #if defined(__clang__)
    #define FE_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FE_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
    #endif
    #endif
    #endif
    #if defined(__clang__)
    #define FE_NO_FP_CONTRACT _Pragma("clang fp contract(off)")
    #else
    #define FE_NO_FP_CONTRACT
    #endif
    #ifndef FE_ISA_CLONES
    #define FE_ISA_CLONES
    #endif
    #include <math.h>
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
    /* dst[0:dim] = sum_k c_k * grad[rows[k]] over the terms k in [start, end), in increasing k, c_k = coef[k]
       (1 when coef is NULL; multiplying by 1 is exact). The terms before prefetch_end prefetch the gradient
       row prefetch_ahead terms on. */
    #define FE_TERM_SUM_ADD(WIDTH)                                                                             \\
        do {                                                                                                   \\
            const REAL_ *src_ = grad + rows[k] * dim + j0;                                                     \\
            REAL_ c_ = coef != NULL ? coef[k] : (REAL_)1;                                                      \\
            for (j = 0; j < (WIDTH); j++) acc[j] += c_ * src_[j];                                              \\
        } while (0)
    #define FE_TERM_SUM_PASS(WIDTH)                                                                            \\
        do {                                                                                                   \\
            for (j = 0; j < (WIDTH); j++) acc[j] = 0;                                                          \\
            for (k = start; k < prefetch_end; k++) {                                                           \\
                FE_ROW_SUM_PREFETCH_ROW(grad, rows[k + prefetch_ahead]);                                       \\
                FE_TERM_SUM_ADD(WIDTH);                                                                        \\
            }                                                                                                  \\
            for (; k < end; k++) FE_TERM_SUM_ADD(WIDTH);                                                       \\
            for (j = 0; j < (WIDTH); j++) dst[j0 + j] = acc[j];                                                \\
        } while (0)
    #define FE_DEFINE_TERM_SUM(NAME, REAL)                                                                     \\
    FE_ISA_CLONES static void NAME(const REAL *grad, const int64_t *rows, const REAL *coef, int64_t start,     \\
                                   int64_t end, int64_t n_terms, int64_t prefetch_ahead, int64_t dim,          \\
                                   REAL *dst) {                                                                \\
        FE_NO_FP_CONTRACT                                                                                      \\
        typedef REAL REAL_;                                                                                    \\
        enum { BLOCK = 256 / sizeof(REAL) };                                                                   \\
        REAL acc[BLOCK];                                                                                       \\
        int64_t k, j, j0, row_bytes = dim * (int64_t)sizeof(REAL);                                             \\
        int64_t prefetch_end = n_terms - prefetch_ahead > start ? n_terms - prefetch_ahead : start;            \\
        if (prefetch_end > end) prefetch_end = end;                                                            \\
        for (j0 = 0; j0 + BLOCK <= dim; j0 += BLOCK) {                                                         \\
            FE_TERM_SUM_PASS(BLOCK);                                                                           \\
            prefetch_end = start;                                                                              \\
        }                                                                                                      \\
        if (j0 < dim) FE_TERM_SUM_PASS(dim - j0);                                                              \\
    }

    /* The optimizers' hyper-parameters, as fastembed.optim passes them. */
    typedef struct {
        int kind;  /* 0 SGD, 1 Adagrad, 2 row-wise Adagrad, 3 SparseAdam */
        double lr, momentum, beta1, beta2, eps, weight_decay, step_size;
    } fe_hyper;

    /* One optimizer update of the row w (and its state s1, s2) from its summed gradient g (overwritten).
       The arithmetic follows torch.optim operation by operation, so float64 results agree to the last bits.
       The row-wise sum of squares runs over 8 interleaved partial sums in a fixed order: one serial chain
       would cost a full add latency per column, the partial sums vectorize. */
    #define FE_DEFINE_UPDATE_ROW(NAME, REAL, SQRT)                                                             \\
    FE_ISA_CLONES static void NAME(const fe_hyper *h, REAL *w, REAL *s1, REAL *s2, REAL *g, int64_t dim) {    \\
        FE_NO_FP_CONTRACT                                                                                      \\
        int64_t j, t;                                                                                          \\
        REAL lr = (REAL)h->lr, eps = (REAL)h->eps, wd = (REAL)h->weight_decay;                                 \\
        if (wd != 0)                                                                                           \\
            for (j = 0; j < dim; j++) g[j] += wd * w[j];                                                       \\
        if (h->kind == 0 && s1 == NULL) {                                                                      \\
            for (j = 0; j < dim; j++) w[j] -= lr * g[j];                                                       \\
        } else if (h->kind == 0) {                                                                             \\
            REAL mom = (REAL)h->momentum;                                                                      \\
            for (j = 0; j < dim; j++) {                                                                        \\
                s1[j] = mom * s1[j] + g[j];                                                                    \\
                w[j] -= lr * s1[j];                                                                            \\
            }                                                                                                  \\
        } else if (h->kind == 1) {                                                                             \\
            for (j = 0; j < dim; j++) {                                                                        \\
                s1[j] += g[j] * g[j];                                                                          \\
                w[j] -= lr * (g[j] / (SQRT(s1[j]) + eps));                                                     \\
            }                                                                                                  \\
        } else if (h->kind == 2) {                                                                             \\
            REAL part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, mult;                                                     \\
            for (j = 0; j + 8 <= dim; j += 8)                                                                  \\
                for (t = 0; t < 8; t++) part[t] += g[j + t] * g[j + t];                                        \\
            for (; j < dim; j++) part[0] += g[j] * g[j];                                                       \\
            s1[0] += (((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])))\\
                     / (REAL)dim;                                                                              \\
            mult = lr / (SQRT(s1[0]) + eps);                                                                   \\
            for (j = 0; j < dim; j++) w[j] -= mult * g[j];                                                     \\
        } else {                                                                                               \\
            /* torch's SparseAdam: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= step m / (sqrt(v) + eps) */ \\
            REAL one_minus_b1 = (REAL)(1.0 - h->beta1), one_minus_b2 = (REAL)(1.0 - h->beta2);                 \\
            REAL neg_step = (REAL)(-h->step_size);                                                             \\
            for (j = 0; j < dim; j++) {                                                                        \\
                REAL m_old = s1[j], mu = (g[j] - m_old) * one_minus_b1;                                        \\
                REAL v_old = s2[j], vu = (g[j] * g[j] - v_old) * one_minus_b2;                                 \\
                s1[j] = m_old + mu;                                                                            \\
                s2[j] = v_old + vu;                                                                            \\
                w[j] += neg_step * ((mu + m_old) / (SQRT(vu + v_old) + eps));                                  \\
            }                                                                                                  \\
        }                                                                                                      \\
    }
    FE_DEFINE_ROW_SUM(fe_row_sum_f32_i32, float, int32_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f32_i64, float, int64_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f64_i32, double, int32_t)
    FE_DEFINE_ROW_SUM(fe_row_sum_f64_i64, double, int64_t)
    FE_DEFINE_TERM_SUM(fe_term_sum_f32, float)
    FE_DEFINE_TERM_SUM(fe_term_sum_f64, double)
    FE_DEFINE_UPDATE_ROW(fe_update_row_f32, float, sqrtf)
    FE_DEFINE_UPDATE_ROW(fe_update_row_f64, double, sqrt)
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

    void fe_term_sum_f32(const float *grad, const int64_t *rows, const float *coef, int64_t start, int64_t end,
                         int64_t n_terms, int64_t prefetch_ahead, int64_t dim, float *dst) noexcept nogil
    void fe_term_sum_f64(const double *grad, const int64_t *rows, const double *coef, int64_t start, int64_t end,
                         int64_t n_terms, int64_t prefetch_ahead, int64_t dim, double *dst) noexcept nogil

    ctypedef struct fe_hyper:
        int kind
        double lr, momentum, beta1, beta2, eps, weight_decay, step_size

    void fe_update_row_f32(const fe_hyper *h, float *w, float *s1, float *s2, float *g, int64_t dim) noexcept nogil
    void fe_update_row_f64(const fe_hyper *h, double *w, double *s1, double *s2, double *g,
                           int64_t dim) noexcept nogil
