# Readers of low-precision table rows into float32, shared by every kernel that reads such tables
# (lookup, bags). Conversions are bit manipulation in portable C (baseline x86-64 has no F16C), branch-free
# so that the compiler vectorises the row loops with whatever the target has.
from libc.stdint cimport uint8_t, uint16_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    static inline uint32_t fe_float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
    static inline float fe_bits_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

    /* IEEE binary16 -> binary32, exact for all 65536 inputs: zeros, subnormals, infinities, and NaNs
       with their payload (as numpy converts them). Masks instead of branches, so that loops vectorise. */
    static inline float fe_half_to_float(uint16_t h) {
        uint32_t magnitude = ((uint32_t)h & 0x7fffu) << 13;   /* exponent and mantissa, float positions */
        uint32_t exponent = magnitude & 0x0f800000u;
        uint32_t special = 0u - (uint32_t)(exponent == 0x0f800000u);   /* inf and NaN: all ones */
        uint32_t tiny = 0u - (uint32_t)(exponent == 0);                /* zero and subnormals */
        /* exponent bias 15 -> 127; inf and NaN go on to the all-ones float exponent */
        uint32_t normal = magnitude + (112u << 23) + (special & (112u << 23));
        /* a subnormal is m * 2**-24, exact in float */
        uint32_t subnormal = fe_float_bits((float)(int32_t)(h & 0x3ffu) * 5.9604644775390625e-08f);
        return fe_bits_float((normal & ~tiny) | (subnormal & tiny) | (((uint32_t)h & 0x8000u) << 16));
    }

    static inline float fe_bf16_to_float(uint16_t b) { return fe_bits_float((uint32_t)b << 16); }

    /* binary32 -> bfloat16, rounded to nearest even; NaN stays a (quiet) NaN of the same sign. */
    static inline uint16_t fe_float_to_bf16(float f) {
        uint32_t u = fe_float_bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (uint16_t)(u >> 16);
    }

    /* The conversion is a few dozen SSE2 instructions per 8 halves; where the compiler can make a clone for
       AVX2 and pick it at load time (x86-64 Linux), 8-lane registers do the same work, with the same bits. */
    #if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
    #if __has_attribute(target_clones)
    #define FE_WIDE_CLONES __attribute__((target_clones("avx2", "default")))
    #endif
    #endif
    #ifndef FE_WIDE_CLONES
    #define FE_WIDE_CLONES
    #endif

    FE_WIDE_CLONES static void fe_half_row_to_float(const uint16_t *src, float *dst, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) dst[j] = fe_half_to_float(src[j]);
    }

    static inline void fe_bf16_row_to_float(const uint16_t *src, float *dst, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) dst[j] = fe_bf16_to_float(src[j]);
    }

    /* FBGEMM's 8-bit row-wise convention: value = code * scale + bias. */
    static inline void fe_u8_row_to_float(const uint8_t *src, float scale, float bias, float *dst, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) dst[j] = (float)src[j] * scale + bias;
    }

    /* Bags: acc[j] += w * value[j] for a row of n entries, the value exactly as the converters above give it.
       Called once per row of a bag; the AVX2 clone does a 64-wide row in a handful of 8-lane steps. */
    FE_WIDE_CLONES static void fe_u8_row_axpy(const uint8_t *src, float scale, float bias, float w, float *acc,
                                              Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) acc[j] += w * ((float)src[j] * scale + bias);
    }

    FE_WIDE_CLONES static void fe_bf16_row_axpy(const uint16_t *src, float w, float *acc, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) acc[j] += w * fe_bf16_to_float(src[j]);
    }

    FE_WIDE_CLONES static void fe_half_row_axpy(const uint16_t *src, float w, float *acc, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) acc[j] += w * fe_half_to_float(src[j]);
    }
    """
    float fe_half_to_float(uint16_t h) noexcept nogil
    float fe_bf16_to_float(uint16_t b) noexcept nogil
    uint16_t fe_float_to_bf16(float f) noexcept nogil
    void fe_half_row_to_float(const uint16_t *src, float *dst, Py_ssize_t n) noexcept nogil
    void fe_bf16_row_to_float(const uint16_t *src, float *dst, Py_ssize_t n) noexcept nogil
    void fe_u8_row_to_float(const uint8_t *src, float scale, float bias, float *dst, Py_ssize_t n) noexcept nogil
    void fe_u8_row_axpy(const uint8_t *src, float scale, float bias, float w, float *acc, Py_ssize_t n) noexcept nogil
    void fe_bf16_row_axpy(const uint16_t *src, float w, float *acc, Py_ssize_t n) noexcept nogil
    void fe_half_row_axpy(const uint16_t *src, float w, float *acc, Py_ssize_t n) noexcept nogil
