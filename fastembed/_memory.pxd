# Compiler hints for the hot loops: software prefetch of rows some iterations ahead.
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FE_PREFETCH_READ(p) __builtin_prefetch((const void *)(p), 0, 0)
    #define FE_PREFETCH_WRITE(p) __builtin_prefetch((const void *)(p), 1, 0)
    #else
    #define FE_PREFETCH_READ(p) ((void)0)
    #define FE_PREFETCH_WRITE(p) ((void)0)
    #endif
    """
    void FE_PREFETCH_READ(const void *p) noexcept nogil
    void FE_PREFETCH_WRITE(const void *p) noexcept nogil
