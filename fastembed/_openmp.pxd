# The only door to OpenMP: every kernel cimports from here, never from `openmp` directly, so that a
# compiler without OpenMP still builds (prange then runs serially and these stubs answer for one thread).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTEMBED_OPENMP 1
    #else
    #define FASTEMBED_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_num_procs(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint FASTEMBED_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil
    int omp_get_thread_num() noexcept nogil


cdef enum:
    # Below this many bytes of work every kernel runs on one thread, whatever team size it was given:
    # starting a team costs more than the work.
    PARALLEL_MIN_BYTES = 1 << 16
