# Compiler hints for the hot loops: software prefetch of whole rows some iterations ahead.
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
    CACHE_LINE = 64
    # Bytes of rows kept in flight ahead of the current one (see prefetch_distance).
    PREFETCH_BYTES = 1024
    MIN_PREFETCH_ROWS = 2
    MAX_PREFETCH_ROWS = 16


cdef inline Py_ssize_t prefetch_distance(Py_ssize_t row_bytes) noexcept nogil:
    """How many rows ahead to prefetch: about PREFETCH_BYTES, clamped to a sane number of rows."""
    cdef Py_ssize_t distance = PREFETCH_BYTES // row_bytes if row_bytes > 0 else MAX_PREFETCH_ROWS
    return min(max(distance, MIN_PREFETCH_ROWS), MAX_PREFETCH_ROWS)


cdef inline void prefetch_row_read(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_READ(<const char *>row + b)
        b += CACHE_LINE


cdef inline void prefetch_row_write(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_WRITE(<const char *>row + b)
        b += CACHE_LINE


cdef inline void fe_prefetch_row(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    """Prefetch every cache line of one table row into every cache level (T0)."""
    cdef const char *p = <const char *>row
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP(p + b)
        b += CACHE_LINE


cdef inline void fe_prefetch_row_write(void *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef char *p = <char *>row
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP_WRITE(p + b)
        b += CACHE_LINE
