"""What the compiled extension was built with."""
from fastembed._openmp cimport FASTEMBED_OPENMP, omp_get_max_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (multi-threaded)."""
    return bool(FASTEMBED_OPENMP)


def openmp_max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return omp_get_max_threads()
