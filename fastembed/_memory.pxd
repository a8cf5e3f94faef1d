# Compiler hints for the hot loops: software prefetch of whole rows some iterations ahead.
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FE_PREFETCH_READ(p) __builtin_prefetch((const void *)(p), 0, 0)
    #define FE_PREFETCH_WRITE(p) __builtin_prefetch((const void *)(p), 1, 0)
    #define FE_PREFETCH_KEEP(p) __builtin_prefetch((const void *)(p), 0, 3)
    #define FE_PREFETCH_KEEP_WRITE(p) __builtin_prefetch((const void *)(p), 1, 3)
    #define FE_MARK_RELAXED(p) __atomic_store_n((p), 1, __ATOMIC_RELAXED)
    #else
    #define FE_PREFETCH_READ(p) ((void)0)
    #define FE_PREFETCH_WRITE(p) ((void)0)
    #define FE_PREFETCH_KEEP(p) ((void)0)
    #define FE_PREFETCH_KEEP_WRITE(p) ((void)0)
    #define FE_MARK_RELAXED(p) (*(p) = 1)
    #endif
    """
    void FE_PREFETCH_READ(const void *p) noexcept nogil
    void FE_PREFETCH_WRITE(const void *p) noexcept nogil
    # Into every cache level (T0): rows that a bag or an update reads a few iterations later must not be
    # evicted before use, which the non-temporal hint above allows.
    void FE_PREFETCH_KEEP(const void *p) noexcept nogil
    void FE_PREFETCH_KEEP_WRITE(const void *p) noexcept nogil
    # Store 1 into an int32 that other threads may be setting to 1 at the same time (a plain store on
    # x86 and ARM; atomic only so that the concurrent identical writes are not a data race).
    void FE_MARK_RELAXED(int *p) noexcept nogil

cdef enum:
    CACHE_LINE = 64
    # Bytes of rows kept in flight ahead of the current one (see prefetch_distance).
    PREFETCH_BYTES = 1024
    MIN_PREFETCH_ROWS = 2
    MAX_PREFETCH_ROWS = 16
    # Regions up to this size stay in the core's caches: prefetching their rows only costs instructions
    # (measured 2.3x slower for a 640 KiB table, and 2x faster for a 244 MiB one).
    PREFETCH_MIN_REGION_BYTES = 4 << 20


cdef inline bint worth_prefetching(Py_ssize_t region_bytes) noexcept nogil:
    """Whether rows read at random from a region of this many bytes miss the caches often enough."""
    return region_bytes > PREFETCH_MIN_REGION_BYTES


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


cdef inline void prefetch_row_keep(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    """``prefetch_row_read`` into every cache level (the bag and fused-update loops)."""
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP(<const char *>row + b)
        b += CACHE_LINE


cdef inline void prefetch_row_keep_write(const void *row, Py_ssize_t row_bytes) noexcept nogil:
    cdef Py_ssize_t b = 0
    while b < row_bytes:
        FE_PREFETCH_KEEP_WRITE(<const char *>row + b)
        b += CACHE_LINE
