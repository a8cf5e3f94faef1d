"""Peer libraries: importing them lazily, and setting each one's thread count honestly.

- fastembed: ``n_threads=`` on every call.
- numpy: ``np.take`` and ``np.add.at`` are single-threaded whatever the count; BLAS pools are capped with
  threadpoolctl by the runner (nothing here uses BLAS, the cap only keeps idle pools from spinning).
- torch (and FBGEMM, which runs on torch's intra-op pool): ``torch.set_num_threads(n)`` before each build.
- jax: XLA fixes its thread count when it starts, so the runner starts one worker process per thread count
  with ``XLA_FLAGS`` set (``jax_env``). jax runs only where ``FASTEMBED_BENCH_JAX_THREADS`` says it was
  started with the thread count asked for; elsewhere (``--in-process``) it is skipped with a note.
"""
import importlib
import importlib.util
import os

LIBRARIES = ("fastembed", "numpy", "torch", "jax", "fbgemm_gpu")
PEER_LIBRARIES = LIBRARIES[1:]
JAX_THREADS_ENV = "FASTEMBED_BENCH_JAX_THREADS"


class Unavailable(Exception):
    """A peer library cannot run here (the message says why; printed once)."""


ALL_CORES_ENV = "FASTEMBED_BENCH_ALL_CORES"


def usable_cores(all_cores=False):
    """Cores this process may run on; ``all_cores``: those of the parent, in a pinned worker process."""
    if all_cores and os.environ.get(ALL_CORES_ENV):
        return int(os.environ[ALL_CORES_ENV])
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def installed(library):
    """Whether ``library`` can be found, without importing it (cheap: for notes in the parent process)."""
    if library == "fastembed" or library == "numpy":
        return True
    return importlib.util.find_spec(library) is not None


_modules = {}


def _load(library):
    if library in _modules:
        value = _modules[library]
        if isinstance(value, Unavailable):
            raise value
        return value
    try:
        if library == "torch":
            value = importlib.import_module("torch")
        elif library == "jax":
            jax = importlib.import_module("jax")
            value = (jax, importlib.import_module("jax.numpy"))
        elif library == "fbgemm_gpu":
            _load("torch")
            from fbgemm_gpu.split_embedding_configs import EmbOptimType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice,
                SplitTableBatchedEmbeddingBagsCodegen,
            )

            value = dict(TBE=SplitTableBatchedEmbeddingBagsCodegen, ComputeDevice=ComputeDevice,
                         EmbeddingLocation=EmbeddingLocation, PoolingMode=PoolingMode, EmbOptimType=EmbOptimType)
        else:
            value = importlib.import_module(library)
    except ImportError as error:
        value = Unavailable(f"{library} is not installed" if not installed(library)
                            else f"{library} is installed but failed to import: {error}")
    except Exception as error:  # a broken install (ABI mismatch with torch, ...) must not stop the run
        value = Unavailable(f"{library} failed to import: {type(error).__name__}: {error}")
    _modules[library] = value
    if isinstance(value, Unavailable):
        raise value
    return value


def torch():
    return _load("torch")


def jax():
    """``(jax, jax.numpy)``."""
    return _load("jax")


def fbgemm():
    """The FBGEMM classes the ops need, by name."""
    return _load("fbgemm_gpu")


def require(library, n_threads):
    """Make ``library`` ready to run at ``n_threads``, or raise ``Unavailable``."""
    if library in ("fastembed", "numpy"):
        return
    if not installed(library):
        raise Unavailable(f"{library} is not installed: its peers are skipped")
    if library == "jax":
        started = os.environ.get(JAX_THREADS_ENV)
        if started != str(n_threads):
            raise Unavailable("jax skipped: XLA fixes its thread count at start-up, so jax runs only in the "
                              "per-thread-count worker processes (not with --in-process)")
    _load(library)
    if library in ("torch", "fbgemm_gpu"):
        torch().set_num_threads(n_threads)


def threads_note(library, n_threads):
    """How ``library`` was told to use ``n_threads`` (for the JSON)."""
    return {
        "fastembed": f"n_threads={n_threads} on each call",
        "numpy": "single-threaded (np.take and np.add.at have no threads)",
        "torch": f"torch.set_num_threads({n_threads})",
        "fbgemm_gpu": f"torch.set_num_threads({n_threads}) (TBE runs on torch's intra-op pool)",
        "jax": (f"worker process for {n_threads} thread(s), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
                + (f", pinned to {n_threads} core(s)" if n_threads < usable_cores(all_cores=True) else "")),
    }[library]


def jax_env(n_threads, cores=None):
    """Environment for a worker process whose XLA should use ``n_threads``."""
    cores = usable_cores() if cores is None else cores
    env = {JAX_THREADS_ENV: str(n_threads), "JAX_PLATFORMS": "cpu", ALL_CORES_ENV: str(cores)}
    if n_threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    elif n_threads < cores:
        flags = f"intra_op_parallelism_threads={n_threads}"
    else:
        flags = None
    user = os.environ.get("XLA_FLAGS", "").strip()
    if flags:
        env["XLA_FLAGS"] = f"{user} {flags}".strip()
    return env


def versions():
    """Installed versions of fastembed and the peers (None when absent), without importing them."""
    from importlib import metadata

    out = {}
    for key, dists in {
        "fastembed": ("fastembed-kernels",),
        "numpy": ("numpy",),
        "torch": ("torch",),
        "jax": ("jax",),
        "jaxlib": ("jaxlib",),
        "fbgemm_gpu": ("fbgemm-gpu-cpu", "fbgemm-gpu", "fbgemm_gpu"),
        "threadpoolctl": ("threadpoolctl",),
    }.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if out["fastembed"] is None:
        import fastembed

        out["fastembed"] = fastembed.__version__
    return out
