# Compiler hints used in the hot loops: software prefetch of rows a few iterations ahead.
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FE_PREFETCH_READ(p) __builtin_prefetch((const void *)(p), 0, 0)
    #define FE_PREFETCH_WRITE(p) __builtin_prefetch((const void *)(p), 1, 0)
    #define FE_PREFETCH_KEEP(p) __builtin_prefetch((const void *)(p), 0, 3)
    #define FE_PREFETCH_KEEP_WRITE(p) __builtin_prefetch((const void *)(p), 1, 3)
    #else
    #define FE_PREFETCH_READ(p) ((void)0)
    #define FE_PREFETCH_WRITE(p) ((void)0)
    #define FE_PREFETCH_KEEP(p) ((void)0)
    #define FE_PREFETCH_KEEP_WRITE(p) ((void)0)
    #endif
    """
    void FE_PREFETCH_READ(const void *p) noexcept nogil
    void FE_PREFETCH_WRITE(const void *p) noexcept nogil
    # Into every cache level (T0): rows that a bag or an update reads a few iterations later must not be
    # evicted before use, which the non-temporal hint above allows.
    void FE_PREFETCH_KEEP(const void *p) noexcept nogil
    void FE_PREFETCH_KEEP_WRITE(const void *p) noexcept nogil

cdef enum:
    FE_CACHE_LINE = 64


cdef inline void fe_prefetch_row(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    """Prefetch every cache line of one table row (a row spans several lines when D * itemsize > 64)."""
    cdef const char *p = <const char *>row
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP(p + b)
        b += FE_CACHE_LINE


cdef inline void fe_prefetch_row_write(void *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef char *p = <char *>row
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP_WRITE(p + b)
        b += FE_CACHE_LINE
