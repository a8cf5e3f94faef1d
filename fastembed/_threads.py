"""Thread-count policy shared by every kernel call.

``n_threads=None`` means "the default": all usable cores (or what ``set_num_threads`` chose), cut to one
thread below 1 MiB of work: on a shared machine a team that waits for a descheduled member costs far more
than small work gains from a second core. An explicit ``k > 0`` is honoured down to the kernels' own floor
of 64 KiB, so tests of small arrays really run multi-threaded. The count is passed to each kernel as a
plain int; ``omp_set_num_threads`` is never called because it is process-wide.
"""
import os
import threading

from fastembed._build_info import openmp_enabled, openmp_max_threads

# Below this many bytes touched, the default is one thread.
_PARALLEL_MIN_BYTES = 1 << 20
# OpenMP aborts the process when it cannot create a team's threads (n_threads=100000 crashed the interpreter),
# so counts beyond any sensible oversubscription are refused up front.
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))

_lock = threading.Lock()
_default_threads = None


def _usable_cores():
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    # OMP_NUM_THREADS, when set, caps the default like it does for every OpenMP program.
    if os.environ.get("OMP_NUM_THREADS"):
        cores = min(cores, openmp_max_threads())
    return max(1, cores)


def _check_count(n_threads, name="n_threads"):
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int,)) and not hasattr(n_threads, "__index__"):
        raise TypeError(f"{name} must be a positive int or None, got {n_threads!r}")
    n_threads = int(n_threads.__index__())
    if n_threads <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {n_threads}")
    if n_threads > MAX_THREADS:
        raise ValueError(f"{name} must be at most {MAX_THREADS} (4 per core, at least 256), got {n_threads}")
    return n_threads


def set_num_threads(n_threads):
    """Set the default thread count for every fastembed call; ``None`` restores "all cores"."""
    global _default_threads
    value = None if n_threads is None else _check_count(n_threads)
    with _lock:
        _default_threads = value


def get_num_threads():
    """The thread count a call with ``n_threads=None`` uses for large work (1 without OpenMP)."""
    if not openmp_enabled():
        return 1
    return _default_threads if _default_threads is not None else _usable_cores()


def resolve_threads(n_threads, work_bytes=None):
    """The thread count one kernel call runs with.

    n_threads: None (the default, cut to 1 below 1 MiB of work) or a positive int (exact).
    work_bytes: roughly how many bytes the call touches; None means "large".
    """
    if n_threads is None:
        if work_bytes is not None and work_bytes < _PARALLEL_MIN_BYTES:
            return 1
        return get_num_threads()
    n_threads = _check_count(n_threads)
    return n_threads if openmp_enabled() else 1
